#!/usr/bin/env python3
"""Loom's action proxy for Python functions: the OpenWhisk action proxy contract.

HTTP/1.1 on 0.0.0.0:$PORT (default 8080), keep-alive, a thread per connection,
so that several /run calls can be in flight on one instance. Requests carry a
Content-Length body (chunked ones get 411); "Expect: 100-continue" is
answered. The server is a small one on socketserver: http.server's imports
(email, http.client, ssl...) took about 50 ms of a runtime's start, which is
on the path of a cold call that found no stem cell free.

POST /init {"value": {"name", "main", "code", "binary", "env"}}
    Loads the action, once. code is Python source, or with binary true the
    base64 of a bundle (tar.gz or zip, at most 64 MiB unpacked, no absolute
    paths, no "..", no link that leads out) whose entry point is __main__.py,
    else main.py. It is unpacked in $LOOM_ACTION_DIR (else a new directory
    under $TMPDIR), which becomes the working directory and the head of
    sys.path. main names the function (default "main"); env entries become
    environment variables before the code loads.
    200 {"ok": true}; 403 once /init has been tried; 502 {"error"} when the
    code does not load; 400 when the body is not an /init request.
POST /run {"value": {params}, "activation_id", "action_name", "namespace",
           "deadline" (epoch ms), ...}
    Calls main(value) in a thread of its own. 200 with the dict it returns
    (any other value as {"body": value}); 502 {"error": "Type: message"} when
    it raises or is still running at the deadline (the thread cannot be
    stopped: it goes on in the background); 403 {"error": "not initialized"}
    before a successful /init. Every other top-level string or number K of
    the body is __OW_K (upper case) in os.environ as the calling thread reads
    it; the process environment, which child processes inherit, holds the
    latest call's values.
GET /health
    200 once listening.

SIGTERM and SIGINT end the proxy at once: the platform stops an instance only
when no call uses it any more, or when a call ran past its deadline. As PID 1
of a container the proxy would otherwise ignore them.

Lines the function writes to sys.stdout and sys.stderr during a call go to the
proxy's stdout and stderr prefixed with "<activation_id> " (threads the
function starts itself, child processes and sys.stdout.buffer write without
the prefix). The proxy's own messages carry no id.
"""

import collections.abc
import importlib.util
import io
import json
import os
import posixpath
import signal
import stat
import sys
import threading
import time
import socketserver

# Imported when first needed, not at start-up: a stem cell's start is on the
# path of a cold call that found none free, and these (with what they import)
# would add tens of milliseconds to it. A proxy idle for a second loads them
# in the background, so that a bundle's /init on a waiting stem cell does not.
LATER_MODULES = ("base64", "tarfile", "traceback", "zipfile")
LATER_AFTER_S = 1.0

MAX_BODY = 128 << 20
MAX_UNPACKED = 64 << 20

# The call the current thread runs: .id (activation id) and .env (__OW_* values).
_call = threading.local()


class CallEnviron(collections.abc.MutableMapping):
    """os.environ as the calling thread sees it: its call's values over the process's."""

    def __init__(self, base):
        self._base = base

    def _own(self):
        return getattr(_call, "env", None) or {}

    def __getitem__(self, key):
        own = self._own()
        return own[key] if key in own else self._base[key]

    def __setitem__(self, key, value):
        self._base[key] = value

    def __delitem__(self, key):
        del self._base[key]

    def __iter__(self):
        return iter({**self._base, **self._own()})

    def __len__(self):
        return len({**self._base, **self._own()})

    def copy(self):
        return dict(self)


class CallOutput(io.TextIOBase):
    """sys.stdout or sys.stderr: a call's complete lines go out prefixed with its id."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()
        self._partial = {}  # thread ident -> unfinished line

    def writable(self):
        return True

    def fileno(self):
        return self._stream.fileno()

    @property
    def encoding(self):
        return self._stream.encoding

    @property
    def buffer(self):
        # bytes written here go out as they are, without the id
        return self._stream.buffer

    def _emit(self, text):
        with self._lock:
            self._stream.write(text)
            self._stream.flush()

    def write(self, text):
        aid = getattr(_call, "id", None)
        if aid is None:
            self._emit(text)
            return len(text)
        key = threading.get_ident()
        *lines, rest = (self._partial.pop(key, "") + text).split("\n")
        if rest:
            self._partial[key] = rest
        if lines:
            self._emit("".join(f"{aid} {line}\n" for line in lines))
        return len(text)

    def end_call(self):
        """Writes out the calling thread's unfinished line, if any."""
        rest = self._partial.pop(threading.get_ident(), None)
        if rest:
            self._emit(f"{_call.id} {rest}\n")


def log(message):
    print(f"proxy: {message}", file=sys.__stderr__, flush=True)


class BundleError(Exception):
    pass


def clean_name(name):
    """A bundle entry's path relative to the action directory; None for the top itself."""
    if name.startswith("/"):
        raise BundleError(f"entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"entry {name!r} has '..' in its path")
    return "/".join(parts) or None


def tar_entries(data):
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            if m.isdir():
                kind = "dir"
            elif m.isreg():
                kind = "file"
            elif m.issym():
                kind = "symlink"
            elif m.islnk():
                kind = "hardlink"
            else:
                raise BundleError(f"entry {m.name!r} is not a file, directory or link")
            yield m.name, kind, m.mode, m.linkname, lambda m=m: tar.extractfile(m)


def zip_entries(data):
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            mode = info.external_attr >> 16
            if info.is_dir():
                kind, target = "dir", ""
            elif stat.S_ISLNK(mode):
                if info.file_size > 4096:
                    raise BundleError(f"entry {info.filename!r}: link target too long")
                kind, target = "symlink", z.read(info).decode()
            else:
                kind, target = "file", ""
            yield info.filename, kind, mode, target, lambda info=info: z.open(info)


def unpack(data, root):
    """Unpacks a tar.gz or zip bundle into root, refusing entries that would land outside."""
    if data[:2] == b"\x1f\x8b":
        entries = tar_entries(data)
    elif data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        entries = zip_entries(data)
    else:
        raise BundleError("the bundle is neither a tar.gz nor a zip")
    total = 0
    links = []
    for name, kind, mode, target, open_data in entries:
        rel = clean_name(name)
        if rel is None:
            continue
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if os.path.islink(os.path.join(root, *parts[:i])):
                raise BundleError(f"entry {name!r} lies under a link")
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path) and not (kind == "dir" and os.path.isdir(path)):
            if os.path.isdir(path) and not os.path.islink(path):
                raise BundleError(f"entry {name!r} replaces a directory")
            os.unlink(path)
        if kind == "dir":
            os.makedirs(path, exist_ok=True)
        elif kind == "file":
            with open_data() as src, open(path, "xb") as dst:
                while chunk := src.read(1 << 16):
                    total += len(chunk)
                    if total > MAX_UNPACKED:
                        raise BundleError(f"the bundle unpacks to more than {MAX_UNPACKED >> 20} MiB")
                    dst.write(chunk)
            os.chmod(path, 0o755 if mode & 0o111 else 0o644)
        elif kind == "symlink":
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise BundleError(f"link {name!r} -> {target!r} leads out of the action")
            os.symlink(target, path)
            links.append((name, target, path))
        else:
            source = os.path.join(root, clean_name(target) or ".")
            if not stat.S_ISREG(os.lstat(source).st_mode):
                raise BundleError(f"hard link {name!r} -> {target!r} is not to a file")
            os.link(source, path)
    # A link can pass through other links: check where each one really ends.
    top = os.path.realpath(root)
    for name, target, path in links:
        try:
            real = os.path.realpath(path, strict=True)
        except OSError:
            continue  # dangling: the lexical check above is all there is to check
        if real != top and not real.startswith(top + os.sep):
            raise BundleError(f"link {name!r} -> {target!r} leads out of the action")


class Action:
    def __init__(self):
        self.lock = threading.Lock()
        self.tried = False
        self.main = None

    def init(self, value):
        if not isinstance(value, dict) or not isinstance(value.get("code"), str):
            return 400, {"error": "the body needs value.code, a string"}
        with self.lock:
            if self.tried:
                return 403, {"error": "cannot initialize the action more than once"}
            self.tried = True
            try:
                self.main = load(value)
            except BaseException as e:
                log(f"init failed: {describe(e)}")
                return 502, {"error": describe(e)}
        return 200, {"ok": True}

    def run(self, msg):
        fn = self.main
        if fn is None:
            return 403, {"error": "not initialized"}
        aid = msg.get("activation_id") or None
        env = {
            f"__OW_{k.upper()}": str(v)
            for k, v in msg.items()
            if k != "value" and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        }
        os.environ.update(env)  # for child processes: the latest call's values
        outcome = {}

        def call():
            _call.id, _call.env = aid, env
            try:
                outcome["result"] = fn(msg.get("value", {}))
            except BaseException as e:
                outcome["error"] = e
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.end_call()
                sys.stderr.end_call()

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(seconds_left(msg.get("deadline")))
        if worker.is_alive():
            return 502, {"error": "the action did not finish before its deadline"}
        if "error" in outcome:
            return 502, {"error": describe(outcome["error"])}
        result = outcome["result"]
        return 200, result if isinstance(result, dict) else {"body": result}


def describe(e):
    return f"{type(e).__name__}: {e}"


def seconds_left(deadline):
    try:
        return min(max(0.0, float(deadline) / 1000 - time.time()), threading.TIMEOUT_MAX)
    except (TypeError, ValueError):
        return None


def action_dir():
    """A new directory of the proxy's own under $TMPDIR (what tempfile.mkdtemp makes)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    while True:
        path = os.path.join(base, "action-" + os.urandom(8).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def load_later_modules():
    time.sleep(LATER_AFTER_S)
    for name in LATER_MODULES:
        importlib.import_module(name)


def load(value):
    for k, v in (value.get("env") or {}).items():
        os.environ[k] = v if isinstance(v, str) else json.dumps(v)
    root = os.environ.get("LOOM_ACTION_DIR")
    if root:
        os.makedirs(root, mode=0o700, exist_ok=True)
    else:
        root = action_dir()
    if value.get("binary"):
        import base64

        try:
            data = base64.b64decode(value["code"], validate=True)
        except ValueError:
            raise BundleError("the code is not base64") from None
        unpack(data, root)
        entry = next((f for f in ("__main__.py", "main.py") if os.path.isfile(os.path.join(root, f))), None)
        if entry is None:
            raise BundleError("the bundle has neither __main__.py nor main.py")
    else:
        entry = "main.py"
        with open(os.path.join(root, entry), "w", encoding="utf-8") as f:
            f.write(value["code"])
    os.chdir(root)
    sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location("__action__", os.path.join(root, entry))
    module = importlib.util.module_from_spec(spec)
    sys.modules["__action__"] = module
    spec.loader.exec_module(module)
    name = value.get("main") or "main"
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LookupError(f"the action has no function named {name!r}")
    return fn


MAX_LINE = 65536  # a request or header line, as http.client's limit
MAX_HEADERS = 100
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 502: "Bad Gateway",
           505: "HTTP Version Not Supported"}


class Handler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True
    action = Action()

    def handle(self):
        while self.handle_one():
            pass

    def handle_one(self):
        """One request; True when the connection stays open for another."""
        self.keep = False
        line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        parts = line.decode("latin-1").split()
        if len(line) > MAX_LINE or len(parts) != 3:
            return self.answer(400, {"error": "not an HTTP request line"})
        method, self.path, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            return self.answer(505, {"error": f"{version} is not served"})
        self.headers = {}
        while True:
            h = self.rfile.readline(MAX_LINE + 1)
            if not h:
                return False
            if h in (b"\r\n", b"\n"):
                break
            if len(h) > MAX_LINE or len(self.headers) >= MAX_HEADERS:
                return self.answer(431, {"error": "the request's headers are too large"})
            name, sep, value = h.decode("latin-1").partition(":")
            if not sep or not name.strip():
                return self.answer(400, {"error": "a header line without a name"})
            self.headers[name.strip().lower()] = value.strip()
        conn = self.headers.get("connection", "").lower()
        self.keep = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        if method == "GET":
            self.do_GET()
        elif method == "POST":
            self.do_POST()
        else:
            self.keep = False
            self.answer(405, {"error": f"method {method} is not served"})
        return self.keep

    def answer(self, status, obj):
        """Sends status with obj as JSON; returns whether the connection stays open."""
        data = json.dumps(obj).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
            "Server: loom-python-proxy\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n"
            + ("" if self.keep else "Connection: close\r\n")
            + "\r\n"
        )
        self.wfile.write(head.encode("latin-1") + data)
        return self.keep

    def do_GET(self):
        if self.path == "/health":
            self.answer(200, {"ok": True})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        if self.path not in ("/init", "/run"):
            self.keep = False  # its body is not read
            self.answer(404, {"error": "not found"})
            return
        if "chunked" in self.headers.get("transfer-encoding", ""):
            self.keep = False
            self.answer(411, {"error": "a Content-Length is required"})
            return
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.keep = False
            self.answer(400, {"error": "the Content-Length is not a number"})
            return
        if length > MAX_BODY:
            self.keep = False
            self.answer(413, {"error": "the body is too large"})
            return
        if self.headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            msg = json.loads(self.rfile.read(length))
        except ValueError as e:
            self.answer(400, {"error": f"the body is not JSON: {e}"})
            return
        if not isinstance(msg, dict):
            self.answer(400, {"error": "the body is not a JSON object"})
        elif self.path == "/init":
            self.answer(*self.action.init(msg.get("value")))
        else:
            status, obj = self.action.run(msg)
            try:
                self.answer(status, obj)
            except (TypeError, ValueError) as e:
                self.answer(502, {"error": f"the result is not JSON: {describe(e)}"})


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def _stop(signum, _frame):
    log(f"stopping on {signal.Signals(signum).name}")
    sys.__stderr__.flush()
    os._exit(0)


def main():
    os.environ = CallEnviron(os.environ)
    sys.stdout = CallOutput(sys.stdout)
    sys.stderr = CallOutput(sys.stderr)
    port = int(os.environ.get("PORT") or 8080)
    server = Server(("0.0.0.0", port), Handler)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    log(f"listening on 0.0.0.0:{port}")
    threading.Thread(target=load_later_modules, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
