#!/usr/bin/env bash
# Action proxy figures, each proxy run on this machine (no container, no
# platform), printed as a table; never fails on time:
#   start     exec to the first 200 on /health
#   idle RSS  VmRSS once listening
#   init+run  a hello world's /init and its first /run (one keep-alive client)
#   run       /run of the same, BENCH_RUNS times (default 500) on one
#             keep-alive connection: p50 and p99
#   RSS       VmRSS after those runs
# The shell proxy is the static one the image gets.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/../integration/lib.sh"
# shellcheck source=tools/lib/runtimes.sh
. "$repo/tools/lib/runtimes.sh"

runs=${BENCH_RUNS:-500}
tmp=$(mktemp -d /tmp/loom-bench-runtimes.XXXXXX)
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
runtime_build_proxy shell "$tmp/shell-proxy" || die "could not build the shell proxy"

declare -A cmd=(
	[python]="/usr/bin/python3 $repo/tools/runtimes/python/proxy.py"
	[nodejs]="node $repo/tools/runtimes/nodejs/proxy.js"
	[shell]="$tmp/shell-proxy"
)
declare -A code=(
	[python]='def main(args):
    return {"greeting": "Hello " + args.get("name", "stranger")}'
	[nodejs]='function main(params) {
  return { greeting: "Hello " + (params.name || "stranger") };
}'
	[shell]='echo "{\"greeting\": \"Hello\"}"'
)

listen_port=""
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# The client: /init and a first /run, then RUNS runs, on one connection;
# prints "init+run_ms p50_ms p99_ms".
client() {
	python3 - "$1" "$2" "$3" <<'EOF'
import http.client, json, sys, time
port, runs, code = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port)
def post(path, body):
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status == 200, (path, r.status, data)
t = time.perf_counter()
post("/init", {"value": {"name": "hello", "main": "main", "code": code}})
post("/run", {"value": {"name": "Ada"}, "activation_id": "bench"})
first = (time.perf_counter() - t) * 1000
lat = []
for i in range(runs):
    t = time.perf_counter()
    post("/run", {"value": {"name": "Ada"}, "activation_id": "bench-%d" % i})
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print("%.1f %.2f %.2f" % (first, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]))
EOF
}

printf '%-8s %9s %10s %12s %9s %9s %10s\n' proxy "start ms" "idle RSS" "init+run ms" "run p50" "run p99" "RSS after"
for name in python nodejs shell; do
	free_port listen_port
	p=$listen_port
	start=$(now_ms)
	# shellcheck disable=SC2086 # the command is words
	LOOM_ACTION_DIR=$tmp/$name PORT=$p ${cmd[$name]} >/dev/null 2>"$tmp/$name.err" &
	pid=$!
	until curl -sf -o /dev/null "http://127.0.0.1:$p/health"; do
		[ $(($(now_ms) - start)) -lt 30000 ] || die "$name did not start: $(cat "$tmp/$name.err")"
		sleep 0.005
	done
	started=$(($(now_ms) - start))
	idle=$(rss_kib "$pid")
	read -r first p50 p99 < <(client "$p" "$runs" "${code[$name]}")
	printf '%-8s %9s %7s KiB %12s %9s %9s %6s KiB\n' "$name" "$started" "$idle" "$first" "$p50" "$p99" "$(rss_kib "$pid")"
	kill "$pid"
	wait "$pid" 2>/dev/null
	pid=""
done
