#!/usr/bin/env python3
"""Test helper for the usage and scheduler tests: UsageSamples into
JetStream, NATS subscriptions, a CloudEvents endpoint, and instance reports
sent by hand. No dependencies; the NATS URL comes from LOOM_NATS_URL.

  usage_helper.py publish FILE          publish the samples of FILE (JSON lines, one
                                        UsageSample each, field names as in usage.proto)
                                        to loom.usage.<node> with Nats-Msg-Id
                                        "<instance_id>:<seq>" and wait for each
                                        JetStream ack; prints "<id> stored|duplicate"
  usage_helper.py sub SUBJ SECONDS      prints one line per message: subject, then the
                                        strings of a UsageCommitted ("ids=a,b refused=c")
  usage_helper.py flood N NODE PROJECT  publish N samples of 100 instances as fast as
                                        JetStream takes them (pipelined); prints samples/s
  usage_helper.py receiver PORT LOG FAIL   a CloudEvents batch endpoint (POST /events):
                                        the first FAIL requests get a 500; every accepted
                                        event is appended to LOG as one JSON line
  usage_helper.py reports FILE          the InstanceReports of FILE (JSON lines, one
                                        InstanceReport each) as one request on
                                        loom.instance.reports; prints each report's Ack,
                                        in order: "ok" or "refused: <error>"
"""
import json, os, socket, sys, threading, time
from urllib.parse import urlparse


def nats():
    u = urlparse(os.environ["LOOM_NATS_URL"].split(",")[0])
    s = socket.create_connection((u.hostname, u.port or 4222))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
    return s, f


def read_msg(s, f):
    """Returns (subject, payload) of the next MSG/HMSG (headers dropped)."""
    while True:
        line = f.readline()
        if not line:
            return None, None
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"MSG"):
            parts = line.split()
            n = int(parts[-1])
            return parts[1].decode(), f.read(n + 2)[:n]
        elif line.startswith(b"HMSG"):
            parts = line.split()
            hl, tl = int(parts[-2]), int(parts[-1])
            data = f.read(tl + 2)[:tl]
            return parts[1].decode(), data[hl:]


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


FIELDS = {  # name: (number, kind)
    "instance_id": (1, "s"), "node": (2, "s"), "project": (3, "s"), "seq": (4, "v"),
    "ts_unix_ms": (5, "v"), "interval_ms": (6, "v"), "cpu_usage_ns": (7, "v"),
    "memory_bytes": (8, "v"), "memory_peak_bytes": (9, "v"), "cpu_millis_alloc": (10, "v"),
    "memory_bytes_alloc": (11, "v"), "gpus": (12, "v"), "start_unix_ms": (13, "v"),
    "cpu_ns": (14, "v"), "final": (15, "v"), "kind": (16, "s"), "resource": (17, "s"),
    "gpu_model": (18, "s"), "ephemeral_bytes_alloc": (19, "v"),
}


REPORT_FIELDS = {  # InstanceReport
    "instance_id": (1, "s"), "node": (2, "s"), "state": (3, "v"), "exit_code": (4, "v"),
    "reason": (5, "s"), "seq": (10, "v"),
}
STATES = {"running": 3, "succeeded": 4, "failed": 5, "stopped": 6}


def encode(sample, fields=FIELDS):
    out = b""
    for name, value in sample.items():
        num, kind = fields[name]
        if kind == "s":  # {"hex": ...}: bytes as they are, valid UTF-8 or not
            v = bytes.fromhex(value["hex"]) if isinstance(value, dict) else value.encode()
            out += varint(num << 3 | 2) + varint(len(v)) + v
        else:
            out += varint(num << 3) + varint(int(value))
    return out


def read_varint(data, i):
    """The varint at data[i]: (value, the index after it)."""
    v, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, i


def decode_strings(data):
    """The repeated string fields of a message: {field number: [strings]}."""
    out, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt != 2:
            return out
        n, i = read_varint(data, i)
        out.setdefault(num, []).append(data[i:i + n].decode())
        i += n
    return out


def publish(path):
    s, f = nats()
    inbox = "_INBOX.usage_helper.%d" % os.getpid()
    s.sendall(("SUB %s 1\r\n" % inbox).encode())
    for line in open(path):
        if not line.strip():
            continue
        sample = json.loads(line)
        payload = encode(sample)
        msgid = "%s:%d" % (sample["instance_id"], int(sample["seq"]))
        hdr = ("NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % msgid).encode()
        subj = "loom.usage." + sample["node"]
        s.sendall(("HPUB %s %s %d %d\r\n" % (subj, inbox, len(hdr), len(hdr) + len(payload))).encode()
                  + hdr + payload + b"\r\n")
        _, ack = read_msg(s, f)
        reply = json.loads(ack)
        if "error" in reply:
            print("%s error %s" % (msgid, reply["error"]))
            sys.exit(1)
        print("%s %s" % (msgid, "duplicate" if reply.get("duplicate") else "stored"))
    s.close()


def fields_of(data):
    """A message's fields: [(number, varint or bytes)]."""
    out, i = [], 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
        elif wt == 2:
            n, i = read_varint(data, i)
            v, i = data[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wt)
        out.append((num, v))
    return out


def reports(path):
    batch = b""
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            r["state"] = STATES[r["state"]]
            m = encode(r, REPORT_FIELDS)
            batch += varint(1 << 3 | 2) + varint(len(m)) + m
    s, f = nats()
    inbox = "_INBOX.reports_helper.%d" % os.getpid()
    s.sendall(("SUB %s 1\r\nPUB loom.instance.reports %s %d\r\n" % (inbox, inbox, len(batch)))
              .encode() + batch + b"\r\n")
    _, reply = read_msg(s, f)
    for num, ack in fields_of(reply):
        if num != 1:
            continue
        a = dict(fields_of(ack))
        print("ok" if a.get(1) else "refused: " + a.get(2, b"").decode())
    s.close()


def flood(n, node, project):
    import uuid
    s, f = nats()
    inbox = "_INBOX.usage_flood.%d" % os.getpid()
    s.sendall(("SUB %s 1\r\n" % inbox).encode())
    ids = [str(uuid.uuid4()) for _ in range(100)]
    base = int(time.time() * 1000) - n
    t0 = time.time()
    window, sent, acked, out = 2000, 0, 0, []
    while acked < n:
        while sent < n and sent - acked < window:
            inst, seq = ids[sent % 100], base + sent
            payload = encode({"instance_id": inst, "node": node, "project": project, "seq": seq,
                              "ts_unix_ms": seq, "start_unix_ms": seq - 5000, "interval_ms": 5000,
                              "cpu_ns": 1000000, "cpu_usage_ns": 1000000 * (sent + 1),
                              "cpu_millis_alloc": 1000, "memory_bytes_alloc": 1 << 30,
                              "kind": "job", "resource": "bench"})
            hdr = ("NATS/1.0\r\nNats-Msg-Id: %s:%d\r\n\r\n" % (inst, seq)).encode()
            out.append(("HPUB loom.usage.%s %s %d %d\r\n" % (node, inbox, len(hdr), len(hdr) + len(payload))).encode()
                       + hdr + payload + b"\r\n")
            sent += 1
            if len(out) >= 200:
                s.sendall(b"".join(out))
                out = []
        if out:
            s.sendall(b"".join(out))
            out = []
        _, ack = read_msg(s, f)
        if b'"error"' in ack:
            sys.exit("publish failed: %s" % ack.decode())
        acked += 1
    dt = time.time() - t0
    print("%d %.3f %.0f" % (n, dt, n / dt))


def sub(subj, seconds):
    s, f = nats()
    s.sendall(("SUB %s 1\r\nPING\r\n" % subj).encode())
    f.readline()  # PONG: the subscription is in place
    print("subscribed", flush=True)
    s.settimeout(float(seconds))
    try:
        while True:
            subject, data = read_msg(s, f)
            if subject is None:
                break
            strs = decode_strings(data)
            print("%s ids=%s refused=%s" % (subject, ",".join(strs.get(1, [])),
                                            ",".join(strs.get(2, []))), flush=True)
    except (socket.timeout, OSError):
        pass


def receiver(port, log, fail):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    state = {"left_to_fail": int(fail), "requests": 0}
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            with lock:
                state["requests"] += 1
                failing = state["left_to_fail"] > 0
                if failing:
                    state["left_to_fail"] -= 1
            ok = (self.path == "/events" and
                  self.headers.get("Content-Type") == "application/cloudevents-batch+json")
            if failing or not ok:
                self.send_response(500 if ok else 415)
                self.end_headers()
                self.wfile.write(b"not now")
                return
            events = json.loads(body)
            with lock, open(log, "a") as out:
                for e in events:
                    out.write(json.dumps(e, sort_keys=True) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(port)), H).serve_forever()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "publish":
        publish(sys.argv[2])
    elif cmd == "sub":
        sub(sys.argv[2], sys.argv[3])
    elif cmd == "flood":
        flood(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif cmd == "receiver":
        receiver(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "reports":
        reports(sys.argv[2])
    else:
        sys.exit("unknown command " + cmd)
