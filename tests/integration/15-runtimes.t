#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Function runtimes on this machine, no platform: each action proxy (Python,
# Node.js, and the shell one built with ASan and UBSan) answers the OpenWhisk
# /init and /run contract; loads tar.gz and zip bundles and refuses those that
# would unpack outside its directory; passes /init's env; prefixes printed
# lines with their call's activation id, also with two calls at once; awaits
# Node's async main; takes a shell script's last line as its result and
# kills what it leaves running.
# shellcheck disable=SC2016 # the functions' code is in single quotes on purpose
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

python=/usr/bin/python3
command -v "$python" >/dev/null || python=$(command -v python3) || skip_all "needs python3"
node=$(command -v node) || skip_all "needs node (tools/install-deps)"
# shellcheck source=tools/lib/runtimes.sh
. "$repo/tools/lib/runtimes.sh"

tmp=$(mktemp -d /tmp/loom-runtimes.XXXXXX)
proxy_pids=()
stop_proxies() {
	local p
	for p in "${proxy_pids[@]}"; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	proxy_pids=()
}
trap 'stop_proxies; rm -rf "$tmp"' EXIT

# proxy_start NAME CMD...: a proxy on a free port with an action directory of
# its own ($dir/action).
proxy_n=0
proxy_start() {
	local name=$1 p
	shift
	free_port p
	port=$p
	proxy_n=$((proxy_n + 1))
	dir=$tmp/$name.$proxy_n
	mkdir -p "$dir"
	LOOM_ACTION_DIR=$dir/action PORT=$port "$@" >"$dir/out" 2>"$dir/err" &
	proxy_pid=$!
	proxy_pids+=("$proxy_pid")
	wait_for 20 curl -sf -o /dev/null "http://127.0.0.1:$port/health" ||
		diag "$name did not answer /health: $(cat "$dir/err")"
}

# shell_stop: SIGTERM to the shell proxy under ASan and UBSan; it must end
# with status 0 and no sanitizer report.
shell_stop() {
	kill "$proxy_pid"
	wait "$proxy_pid"
	is "$?" 0 "shell: the proxy ends on SIGTERM with status 0"
	unlike "$(cat "$dir/err")" 'AddressSanitizer|LeakSanitizer|runtime error' "shell: no ASan or UBSan report"
	proxy_pids=()
}

# post PATH BODY: sets http_status and http_body (a bundle is too long for an argument).
post() {
	printf '%s' "$2" >"$tmp/body"
	get -H 'Content-Type: application/json' --data-binary "@$tmp/body" "http://127.0.0.1:$port$1"
}
init_code() { # CODE [ENV_JSON]
	local env=${2:-'{}'}
	post /init "$(jq -n --arg code "$1" --argjson env "$env" \
		'{value: {name: "hello", main: "main", code: $code, binary: false, env: $env}}')"
}
init_bundle() { # BASE64
	printf '%s' "$1" >"$tmp/code"
	post /init "$(jq -n --rawfile code "$tmp/code" '{value: {name: "b", main: "main", code: $code, binary: true}}')"
}
run() { # VALUE_JSON [ACTIVATION_ID [DEADLINE_MS]]
	post /run "$(jq -n --argjson v "$1" --arg id "${2:-}" --arg dl "${3:-}" \
		'{value: $v, activation_id: $id, action_name: "/default/hello", namespace: "default"}
		 + (if $dl == "" then {} else {deadline: $dl} end)')"
}
answer() { echo "$http_status $http_body"; }
# gone PIDFILE: the process whose pid the file holds has ended.
gone() { [ -s "$1" ] && ! kill -0 "$(cat "$1")" 2>/dev/null; }

# bundle tgz|zip SPEC: base64 of a bundle; SPEC is a JSON list of
# [name, "file", content, mode] / [name, "dir"] / [name, "symlink", target] /
# [name, "zeros", size].
bundle() {
	"$python" - "$1" "$2" <<'EOF'
import base64, io, json, stat, sys, tarfile, zipfile
fmt, spec = sys.argv[1], json.loads(sys.argv[2])
class Zeros(io.RawIOBase):
    def __init__(self, n): self.n = n
    def readable(self): return True
    def readinto(self, b):
        k = min(len(b), self.n); b[:k] = bytes(k); self.n -= k; return k
buf = io.BytesIO()
if fmt == "tgz":
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as t:
        for e in spec:
            ti = tarfile.TarInfo(e[0])
            if e[1] == "file":
                data = e[2].encode(); ti.size = len(data); ti.mode = e[3] if len(e) > 3 else 0o644
                t.addfile(ti, io.BytesIO(data))
            elif e[1] == "zeros":
                ti.size = e[2]; t.addfile(ti, io.BufferedReader(Zeros(e[2])))
            elif e[1] == "dir":
                ti.type = tarfile.DIRTYPE; ti.mode = 0o755; t.addfile(ti)
            else:
                ti.type = tarfile.SYMTYPE; ti.linkname = e[2]; t.addfile(ti)
else:
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for e in spec:
            zi = zipfile.ZipInfo(e[0]); zi.create_system = 3; zi.compress_type = zipfile.ZIP_DEFLATED
            kind = stat.S_IFLNK | 0o777 if e[1] == "symlink" else stat.S_IFREG | (e[3] if len(e) > 3 else 0o644)
            zi.external_attr = kind << 16
            z.writestr(zi, e[2])
sys.stdout.write(base64.b64encode(buf.getvalue()).decode())
EOF
}

# The refusals every proxy makes, each on a fresh proxy (a refused /init is final).
check_refusals() { # NAME CMD...
	local name=$1 b what
	shift
	local -a cases=(
		'tgz|[["../x", "file", "x"]]|\.\..{0,2} in its path|a tar.gz entry with ..'
		'zip|[["../x", "file", "x"]]|\.\..{0,2} in its path|a zip entry with ..'
		'tgz|[["/x", "file", "x"]]|absolute path|a tar.gz entry with an absolute path'
		'tgz|[["l", "symlink", "../../etc"]]|leads out of the action|a link out of the bundle'
		'zip|[["y", "symlink", "."], ["l", "symlink", "y/.."]]|leads out of the action|a link out through another link'
		'tgz|[["sub", "dir"], ["d", "symlink", "sub"], ["d/f", "file", "x"]]|lies under a link|an entry under a link'
		'tgz|big|more than 64 MiB|a bundle of 65 MiB unpacked'
		'tgz|not a bundle|neither a tar.gz nor a zip|something else'
	)
	for c in "${cases[@]}"; do
		IFS='|' read -r fmt spec want what <<<"$c"
		case $spec in
		"not a bundle") b=$(printf 'hello' | base64) ;;
		big) b=$(cat "$tmp/big.b64") ;;
		*) b=$(bundle "$fmt" "$spec") ;;
		esac
		proxy_start "$name-refused" "$@"
		init_bundle "$b"
		like "$(answer)" "^502 .*$want" "$name: $what is refused"
		stop_proxies
	done
	ok "$name: nothing was written outside the action directories" \
		test -z "$(find "$tmp" -maxdepth 2 -path "$tmp/$name-refused.*/x")"
}

# check_concurrent NAME: two calls at once, each waiting for the other to start.
check_concurrent() {
	local name=$1 a
	# the first call with curl itself: get's files are for the second
	jq -n '{value: {call: "A", other: "B"}, activation_id: "act-A"}' >"$tmp/call-A.json"
	curl -s -m 20 -o "$tmp/call-A.body" -w '%{http_code}' -H 'Content-Type: application/json' \
		--data-binary "@$tmp/call-A.json" "http://127.0.0.1:$port/run" >"$tmp/call-A.status" &
	a=$!
	run '{"call": "B", "other": "A"}' act-B
	wait "$a"
	like "$(cat "$tmp/call-A.status") $(cat "$tmp/call-A.body")" \
		'^200 .*"call": ?"A".*"id": ?"act-A".*"waited": ?true' \
		"$name: a call runs while another waits for it, with its own __OW_ACTIVATION_ID"
	like "$(answer)" '^200 .*"call": ?"B".*"id": ?"act-B".*"waited": ?true' \
		"$name: ... and the other likewise"
	unlike "$(grep -h 'call=' "$dir/out" "$dir/err" | grep -vE '^act-A .*call=A|^act-B .*call=B')" . \
		"$name: each printed line carries its own call's id"
	is "$(grep -c 'call=' "$dir/out" "$dir/err" | awk -F: '{ s += $2 } END { print s }')" 8 \
		"$name: all the lines of both calls are there"
}

# --- Python ------------------------------------------------------------------

# one bundle of 65 MiB (unpacked) for every proxy to refuse
bundle tgz '[["big", "zeros", 68157440]]' >"$tmp/big.b64"

proxy_start python "$python" "$repo/tools/runtimes/python/proxy.py"
run '{"name": "Ada"}' act-0
is "$(answer)" '403 {"error": "not initialized"}' "python: /run before /init is 403"
init_code 'def main(args):
    return {"greeting": "Hello " + args.get("name", "stranger")}'
is "$(answer)" '200 {"ok": true}' "python: /init of an OpenWhisk hello"
run '{"name": "Ada"}' act-1
is "$(answer)" '200 {"greeting": "Hello Ada"}' "python: /run returns the dict"
init_code 'def main(args): return {}'
is "$(answer)" '403 {"error": "cannot initialize the action more than once"}' "python: a second /init is 403"
stop_proxies

proxy_start python "$python" "$repo/tools/runtimes/python/proxy.py"
init_code 'import os, sys, time
def main(args):
    if args.get("boom"):
        raise ValueError("bad input")
    if args.get("list"):
        return [1, 2]
    if "call" in args:
        print("call=%s starts" % args["call"])
        print("call=%s to stderr" % args["call"], file=sys.stderr)
        open(args["call"], "w").close()
        waited = False
        for _ in range(500):
            if os.path.exists(args["other"]):
                waited = True
                break
            time.sleep(0.01)
        print("call=%s ends, partial line" % args["call"], end="")
        print(" done", file=sys.stderr, end="")
        print("call=%s done" % args["call"], file=sys.stderr)
        return {"call": args["call"], "id": os.environ["__OW_ACTIVATION_ID"], "waited": waited}
    return {"foo": os.environ.get("FOO"), "ns": os.getenv("__OW_NAMESPACE"), "deadline": os.getenv("__OW_DEADLINE")}' \
	'{"FOO": "bar"}'
is "$(answer)" '200 {"ok": true}' "python: /init with env"
run '{}' act-2 1999999999999
is "$(answer)" '200 {"foo": "bar", "ns": "default", "deadline": "1999999999999"}' \
	"python: /init's env and the call's __OW_* variables are visible"
run '{"boom": true}' act-3
is "$(answer)" '502 {"error": "ValueError: bad input"}' "python: an exception is 502 with its type and message"
like "$(grep '^act-3 ' "$dir/err")" 'act-3 ValueError: bad input' "python: its traceback is logged with the id"
run '{"list": true}' act-4
is "$(answer)" '200 {"body": [1, 2]}' "python: a list is wrapped in body"
check_concurrent python
unlike "$(cat "$dir/err")" 'proxy: .*act-' "python: the proxy's own messages carry no id"
stop_proxies

proxy_start python "$python" "$repo/tools/runtimes/python/proxy.py"
init_bundle "$(bundle tgz '[["main.py", "file", "from helper import greet\ndef main(args):\n    return {\"greeting\": greet(args.get(\"name\"))}\n"],
	["helper.py", "file", "def greet(name):\n    return \"Hello \" + (name or \"stranger\")\n"]]')"
is "$(answer)" '200 {"ok": true}' "python: /init of a tar.gz bundle"
run '{"name": "tar"}' act-5
is "$(answer)" '200 {"greeting": "Hello tar"}' "python: main.py imports its helper module"
stop_proxies
proxy_start python "$python" "$repo/tools/runtimes/python/proxy.py"
init_bundle "$(bundle zip '[["__main__.py", "file", "import helper\ndef main(args):\n    return {\"zip\": helper.VALUE}\n"],
	["helper.py", "file", "VALUE = 42\n"]]')"
is "$(answer)" '200 {"ok": true}' "python: /init of a zip bundle"
run '{}' act-6
is "$(answer)" '200 {"zip": 42}' "python: __main__.py is the entry point"
stop_proxies
proxy_start python "$python" "$repo/tools/runtimes/python/proxy.py"
init_code 'def main(args) return 1'
like "$(answer)" '^502 \{"error": "SyntaxError: ' "python: code that does not load is 502 with the error"
stop_proxies
check_refusals python "$python" "$repo/tools/runtimes/python/proxy.py"

# --- Node.js -----------------------------------------------------------------

proxy_start nodejs "$node" "$repo/tools/runtimes/nodejs/proxy.js"
run '{"name": "Ada"}' act-0
is "$(answer)" '403 {"error":"not initialized"}' "nodejs: /run before /init is 403"
init_code 'function main(params) {
  return { greeting: "Hello " + (params.name || "stranger") };
}'
is "$(answer)" '200 {"ok":true}' "nodejs: /init of a plain top-level function main"
run '{"name": "Ada"}' act-1
is "$(answer)" '200 {"greeting":"Hello Ada"}' "nodejs: /run returns the object"
init_code 'function main() { return {}; }'
is "$(answer)" '403 {"error":"cannot initialize the action more than once"}' "nodejs: a second /init is 403"
stop_proxies

proxy_start nodejs "$node" "$repo/tools/runtimes/nodejs/proxy.js"
init_code 'const fs = require("fs");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
exports.main = async function (args) {
  if (args.boom) throw new TypeError("bad input");
  if (args.reject) return Promise.reject(new Error("rejected"));
  if (args.list) return [1, 2];
  if (args.late) await sleep(5000);
  if (args.call) {
    console.log(`call=${args.call} starts`);
    console.error(`call=${args.call} to stderr`);
    fs.writeFileSync(args.call, "");
    let waited = false;
    for (let i = 0; i < 500 && !waited; i++) {
      await sleep(10);
      waited = fs.existsSync(args.other);
    }
    process.stdout.write(`call=${args.call} ends, partial line`);
    process.stderr.write(" done");
    console.error(`call=${args.call} done`);
    return { call: args.call, id: process.env.__OW_ACTIVATION_ID, waited };
  }
  await sleep(50);
  return { foo: process.env.FOO, ns: process.env.__OW_NAMESPACE, deadline: process.env.__OW_DEADLINE };
};' '{"FOO": "bar"}'
is "$(answer)" '200 {"ok":true}' "nodejs: /init with env"
run '{}' act-2 1999999999999
is "$(answer)" '200 {"foo":"bar","ns":"default","deadline":"1999999999999"}' \
	"nodejs: an async main is awaited; /init's env and the call's __OW_* variables are visible"
run '{"boom": true}' act-3
is "$(answer)" '502 {"error":"TypeError: bad input"}' "nodejs: a throw is 502 with its type and message"
run '{"reject": true}' act-4
is "$(answer)" '502 {"error":"Error: rejected"}' "nodejs: a rejection is 502"
like "$(grep '^act-4 ' "$dir/err")" 'act-4 Error: rejected' "nodejs: its stack is logged with the id"
run '{"list": true}' act-5
is "$(answer)" '200 {"body":[1,2]}' "nodejs: an array is wrapped in body"
run '{"late": true}' act-6 "$(($(now_ms) + 300))"
is "$(answer)" '502 {"error":"the action did not finish before its deadline"}' \
	"nodejs: a main still pending at the deadline is 502"
check_concurrent nodejs
stop_proxies

proxy_start nodejs "$node" "$repo/tools/runtimes/nodejs/proxy.js"
init_bundle "$(bundle tgz '[["package.json", "file", "{\"main\": \"lib/entry.js\"}"],
	["lib/entry.js", "file", "const { greet } = require(\"./helper\");\nexports.main = (a) => ({ greeting: greet(a.name) });\n"],
	["lib/helper.js", "file", "exports.greet = (n) => \"Hello \" + (n || \"stranger\");\n"]]')"
is "$(answer)" '200 {"ok":true}' "nodejs: /init of a tar.gz bundle"
run '{"name": "tar"}' act-7
is "$(answer)" '200 {"greeting":"Hello tar"}' "nodejs: package.json's main requires its helper"
stop_proxies
proxy_start nodejs "$node" "$repo/tools/runtimes/nodejs/proxy.js"
init_bundle "$(bundle zip '[["index.js", "file", "module.exports.main = async () => ({ zip: require(\"./helper\").value });\n"],
	["helper.js", "file", "exports.value = 42;\n"]]')"
is "$(answer)" '200 {"ok":true}' "nodejs: /init of a zip bundle"
run '{}' act-8
is "$(answer)" '200 {"zip":42}' "nodejs: index.js is the entry point"
stop_proxies
check_refusals nodejs "$node" "$repo/tools/runtimes/nodejs/proxy.js"

# --- shell -------------------------------------------------------------------

san=$tmp/shell-proxy-san
ok "shell: the proxy passes clang-format" clang-format --dry-run --Werror \
	"$repo"/tools/runtimes/shell/*.[ch]
ok "shell: the proxy builds with Loom's warnings, ASan and UBSan" runtime_build_proxy shell "$san" \
	-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

proxy_start shell "$san"
run '{"name": "Ada"}' act-0
is "$(answer)" '403 {"error":"not initialized"}' "shell: /run before /init is 403"
init_code 'echo "greeting someone"
name=$(echo "$1" | sed -n "s/.*\"name\": *\"\([^\"]*\)\".*/\1/p")
echo "{\"greeting\": \"Hello ${name:-stranger}\"}"'
is "$(answer)" '200 {"ok":true}' "shell: /init of a script"
run '{"name": "Ada"}' act-1
is "$(answer)" '200 {"greeting": "Hello Ada"}' "shell: the last line of stdout is the result"
is "$(grep -c '^act-1 greeting someone$' "$dir/out")" 1 "shell: the earlier lines are logged with the id"
init_code 'echo {}'
is "$(answer)" '403 {"error":"cannot initialize the action more than once"}' "shell: a second /init is 403"
shell_stop

proxy_start shell "$san"
init_code 'case "$1" in
*boom*) echo "about to fail" >&2; exit 3 ;;
*plain*) echo "not json"; echo "at all"; exit 0 ;;
*list*) echo "[1, 2]"; exit 0 ;;
*late*) sleep 30 & echo $! >late.pid; wait; exit 0 ;;
*leave*) sleep 30 & echo $! >left.pid; echo "{\"left\": true}"; exit 0 ;;
*call*)
	call=$(echo "$1" | sed -n "s/.*\"call\":\"\([AB]\)\".*/\1/p")
	other=$(echo "$1" | sed -n "s/.*\"other\":\"\([AB]\)\".*/\1/p")
	echo "call=$call starts"
	echo "call=$call to stderr" >&2
	touch "$call"
	waited=false
	i=0
	while [ $i -lt 500 ]; do
		if [ -e "$other" ]; then waited=true; break; fi
		sleep 0.01
		i=$((i + 1))
	done
	printf "call=%s ends, partial line\n" "$call"
	printf " done" >&2
	echo "call=$call done" >&2
	echo "{\"call\": \"$call\", \"id\": \"$__OW_ACTIVATION_ID\", \"waited\": $waited}"
	exit 0 ;;
esac
echo "{\"foo\": \"$FOO\", \"ns\": \"$__OW_NAMESPACE\", \"deadline\": \"$__OW_DEADLINE\"}"' '{"FOO": "bar"}'
is "$(answer)" '200 {"ok":true}' "shell: /init with env"
run '{}' act-2 1999999999999
is "$(answer)" '200 {"foo": "bar", "ns": "default", "deadline": "1999999999999"}' \
	"shell: /init's env and the call's __OW_* variables are in the script's environment"
run '{"boom": true}' act-3
is "$(answer)" '502 {"error":"the action exited with status 3"}' "shell: a script that exits non-zero is 502"
is "$(grep -c '^act-3 about to fail$' "$dir/err")" 1 "shell: its stderr is logged with the id"
run '{"plain": true}' act-4
is "$(answer)" '200 {"output":"not json\nat all\n"}' "shell: a last line that is not JSON gives all of stdout"
run '{"list": true}' act-5
is "$(answer)" '200 {"body":[1,2]}' "shell: a JSON value that is not an object is wrapped in body"
start=$(now_ms)
run '{"late": true}' act-6 "$(($(now_ms) + 1500))"
is "$(answer)" '502 {"error":"the action did not finish before its deadline"}' "shell: a script past its deadline is 502"
ok "shell: ... answered within 5 s" test $(($(now_ms) - start)) -lt 5000
ok "shell: ... and its background process is killed" wait_for 5 gone "$dir/action/late.pid"
start=$(now_ms)
run '{"leave": true}' act-7
is "$(answer)" '200 {"left": true}' "shell: a script that leaves a process holding its stdout"
ok "shell: ... is answered when it ends, not when that process does" test $(($(now_ms) - start)) -lt 5000
ok "shell: ... and that process is killed" wait_for 5 gone "$dir/action/left.pid"
check_concurrent shell
shell_stop

proxy_start shell "$san"
init_bundle "$(bundle tgz '[["exec", "file", "#!/bin/sh\n. ./lib.sh\ngreet\n", 493], ["lib.sh", "file", "greet() { echo \"{\\\"from\\\": \\\"tar\\\"}\"; }\n"]]')"
is "$(answer)" '200 {"ok":true}' "shell: /init of a tar.gz bundle"
run '{}' act-8
is "$(answer)" '200 {"from": "tar"}' "shell: exec sources its helper"
stop_proxies
proxy_start shell "$san"
init_bundle "$(bundle zip '[["main.sh", "file", "echo \"{\\\"from\\\": \\\"zip\\\"}\"\n"]]')"
is "$(answer)" '200 {"ok":true}' "shell: /init of a zip bundle"
run '{}' act-9
is "$(answer)" '200 {"from": "zip"}' "shell: main.sh is the entry point"
stop_proxies
check_refusals shell "$san"
unlike "$(cat "$tmp"/shell*/err)" 'AddressSanitizer|LeakSanitizer|runtime error' \
	"shell: no ASan or UBSan report in any run"

stop_proxies
rm -rf "$tmp"
trap - EXIT
finish
