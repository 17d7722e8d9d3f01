#!/usr/bin/env python3
"""Test helper for 50-edge-services.t: a tiny NATS client (core protocol over
a socket), an echo HTTP upstream, and a UsageSample encoder. No dependencies.

  edge_helper.py upstream PORT                 echo server (JSON of what it got)
  edge_helper.py pub SUBJ [DATA]               publish
  edge_helper.py sub SUBJ SECONDS              print "subject len printable-payload" lines
  edge_helper.py request SUBJ                  request, print the reply printable
  edge_helper.py usage INSTANCE SEQ[:MSGID]... publish UsageSamples (Nats-Msg-Id), or 'garbage'
The NATS port comes from EDGE_NATS_PORT."""
import json, os, socket, sys, threading, time


def nats():
    s = socket.create_connection(("127.0.0.1", int(os.environ["EDGE_NATS_PORT"])))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')
    return s, f


def printable(b):
    return "".join(chr(c) if 32 <= c < 127 else "." for c in b)


def read_msg(s, f):
    while True:
        line = f.readline()
        if not line:
            return None
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"MSG"):
            parts = line.split()
            n = int(parts[-1])
            return parts[1].decode(), f.read(n + 2)[:n]


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def sample(inst, seq):
    def fs(num, v):
        v = v.encode()
        return varint(num << 3 | 2) + varint(len(v)) + v

    def fv(num, v):
        return varint(num << 3) + varint(v)

    return (fs(1, inst) + fs(2, "n1") + fs(3, "p") + fv(4, seq) + fv(5, 1795839932123 + seq * 1000)
            + fv(6, 1000) + fv(7, 5000000 * seq) + fv(8, 1 << 20) + fv(9, 2 << 20) + fv(10, 500)
            + fv(11, 512 << 20))


def upstream(port):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    lock, cur, mx = threading.Lock(), [0], [0]

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def any(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
            with lock:
                cur[0] += 1
                mx[0] = max(mx[0], cur[0])
            if self.path.startswith("/sleep/"):
                time.sleep(int(self.path.split("/")[2].split("?")[0]) / 1000)
            with lock:
                cur[0] -= 1
            status = int(self.path.split("/")[2].split("?")[0]) if self.path.startswith("/status/") else 200
            out = json.dumps({"method": self.command, "path": self.path, "body": body,
                              "port": self.server.server_port, "max_conc": mx[0],
                              "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Upstream", "yes")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = any

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()


def main():
    cmd = sys.argv[1]
    if cmd == "upstream":
        return upstream(int(sys.argv[2]))
    s, f = nats()
    if cmd == "pub":
        data = sys.argv[3].encode() if len(sys.argv) > 3 else b""
        s.sendall(b"PUB %s %d\r\n%s\r\n" % (sys.argv[2].encode(), len(data), data))
    elif cmd == "sub":
        s.sendall(b"SUB %s 1\r\nPING\r\n" % sys.argv[2].encode())
        f.readline()  # PONG: subscribed
        print("subscribed", flush=True)
        timer = threading.Timer(float(sys.argv[3]), lambda: s.shutdown(socket.SHUT_RDWR))
        timer.daemon = True
        timer.start()
        while True:
            try:
                m = read_msg(s, f)
            except OSError:
                break
            if m is None:
                break
            print(m[0], len(m[1]), printable(m[1]), flush=True)
        return
    elif cmd == "request":
        s.sendall(b"SUB _INBOX.edge 1\r\nPUB %s _INBOX.edge 0\r\n\r\n" % sys.argv[2].encode())
        s.settimeout(5)
        try:
            m = read_msg(s, f)
        except OSError:
            m = None
        print(printable(m[1]) if m else "no reply")
        return
    elif cmd == "usage":
        inst = sys.argv[2]
        for arg in sys.argv[3:]:
            if arg == "garbage":
                data, msgid = b"\xff\xff\xff garbage", "garbage"
            else:
                seq, _, tag = arg.partition(":")
                data, msgid = sample(inst, int(seq)), "%s:%s%s" % (inst, seq, tag)
            hdr = ("NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % msgid).encode()
            s.sendall(b"HPUB loom.usage.n1 %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(data), hdr, data))
    s.sendall(b"PING\r\n")
    s.settimeout(5)
    while not f.readline().startswith(b"PONG"):
        pass


main()
