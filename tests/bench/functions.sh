#!/usr/bin/env bash
# Functions' figures, on platforms of their own (python-3.11 and nodejs-18
# runtimes, the scheduler's default pool of one stem cell per runtime and
# node), each through the activator, request in to response out (curl's
# time_total, or wrk's latency):
#   - cold call with a stem cell free: a Python hello world's first call
#     (the stem cell claimed, its code loaded, the call run); before each,
#     the bench waits until a free stem cell is running, so that this
#     measures the claim and not the refill
#   - cold call with no stem cell (a second platform whose pools are empty,
#     LOOM_SCHEDULER_STEM_CELLS=0: the call asks the scheduler for one), next
#     to a bare `runc run` of the same image's python3 printing hello (rootfs
#     unpacked once, host network: runc create, start, exit and delete)
#   - warm call: wrk, one connection, against the function through the
#     activator and against the same instance's /run directly with a body of
#     the same parameters; and the throughput with 16 connections against
#     the function (concurrency 16, one vCPU) and against an app that answers
#     the same body from the same runtime image (Python's ThreadingHTTPServer,
#     as the proxy uses; one vCPU)
#   - each runtime's idle stem cell: the RSS of its container's processes
#   - 20 cold calls at once: until all answered, and until each runtime's
#     pool has its free stem cell running again (the 20 instances keep their
#     room until their scale-down delay: the node has two cores)
# Failed calls are counted apart, never mixed into the times. Prints tables;
# never fails on a time.
#   tests/bench/functions.sh [COLD_SAMPLES]      (default 30)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${LOOM_BUILD:-build}
case "$build" in /*) bin=$build/bin ;; *) bin=$repo/$build/bin ;; esac
samples=${1:-30}
export PATH=$bin:$PATH
# shellcheck source=tools/lib/runtimes.sh
. "$repo/tools/lib/runtimes.sh"

now_ms() { date +%s%3N; }
# pct P < numbers: the P-th percentile (nearest rank)
pct() { sort -n | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
	i = int((p / 100) * NR + 0.999); if (i < 1) i = 1; print v[i] }'; }
sql() { psql "$LOOM_PG_DSN" -XAtc "$1"; }

work=$(mktemp -d /tmp/loom-bench-fn.XXXXXX)
platform_home=""
down() {
	[ -z "$platform_home" ] || LOOM_HOME=$platform_home "$repo/tools/loom-dev" down >/dev/null 2>&1 || true
	platform_home=""
}
cleanup() {
	down
	runc --root "$work/runc" delete -f bench-bare >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# up NAME [VAR=VALUE...]: a platform of its own
up() {
	local name=$1 n=$(($$ % 1000))
	shift
	export LOOM_HOME=$work/$name
	mkdir -p "$LOOM_HOME"
	export LOOM_NODE_NAME=bfn$$$name LOOM_AGENT_BRIDGE=lf$n${name:0:1}
	export LOOM_AGENT_CGROUP_PARENT=loom-bfn$$$name
	export LOOM_AGENT_SUBNET=10.$((94 + n / 250)).$((n % 250)).0/24
	export XDG_CONFIG_HOME=$LOOM_HOME/config LOOM_BUILD=$build
	export LOOM_DEV_RUNTIMES=python-3.11,nodejs-18
	env "$@" "$repo/tools/loom-dev" up >"$work/up-$name.out" 2>&1 || {
		cat "$work/up-$name.out" >&2
		exit 1
	}
	platform_home=$LOOM_HOME
	eval "$("$repo/tools/loom-dev" env)"
}

printf 'def main(args):\n    return {"greeting": "Hello " + args.get("name", "world")}\n' >"$work/hello.py"
fn_opts=(--runtime python-3.11 --inline-code "$work/hello.py" --cpu 0.125 --memory 0.5G)

free_stems() {
	sql "SELECT count(*) FROM instances WHERE kind = 'function' AND runtime = '$1'
		AND claimed_at IS NULL AND desired = 'run' AND state = 'running'"
}
wait_stem() { # RUNTIME SECONDS
	local deadline=$(($(now_ms) + $2 * 1000))
	until [ "$(free_stems "$1")" -ge 1 ]; do
		[ "$(now_ms)" -lt $deadline ] || return 1
		sleep 0.05
	done
}
# timed_call URL: "STATUS SECONDS" of one GET
timed_call() { curl -s -o /dev/null -m 60 -w '%{http_code} %{time_total}\n' "$1" || echo "000 0"; }
ms_of() { awk '{ printf "%.2f\n", $2 * 1000 }'; }

# --- platform 1: pools of one stem cell ----------------------------------------

up pool
wait_stem python-3.11 300 || {
	echo "no python stem cell ran within 300 s" >&2
	exit 1
}

# cold with a stem cell free
: >"$work/cold"
cold_failed=0 no_stem=0
for i in $(seq 1 "$samples"); do
	if ! wait_stem python-3.11 60; then
		no_stem=$((no_stem + 1))
		continue
	fi
	loom fn create "c$i" "${fn_opts[@]}" >/dev/null
	r=$(timed_call "$LOOM_ACTIVATOR_URL/fns/default/c$i?name=x")
	if [ "${r%% *}" = 200 ]; then ms_of <<<"$r" >>"$work/cold"; else cold_failed=$((cold_failed + 1)); fi
	# its instance goes, so that the node has room for the next
	loom fn delete "c$i" >/dev/null
done

# warm: the function through the activator, its instance's /run directly
# a whole vCPU, as the app below: the runtime's own speed is not what this compares
loom fn create hello --runtime python-3.11 --inline-code "$work/hello.py" --cpu 1 --memory 4G \
	--concurrency 16 >/dev/null
curl -sf -o /dev/null "$LOOM_ACTIVATOR_URL/fns/default/hello?name=x"
addr=$(sql "SELECT i.address FROM instances i JOIN functions f ON f.id = i.function_id
	WHERE f.name = 'hello' AND i.state = 'running' LIMIT 1")
# what the activator sends /run for GET ?name=x, give or take the headers
cat >"$work/run.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"value":{"name":"x","__ow_method":"get","__ow_path":"","__ow_headers":{"host":"$addr","user-agent":"wrk"}},"activation_id":"bench","action_name":"/default/hello","namespace":"default","deadline":99999999999999}'
EOF
# wrk_lat ARGS...: "p50_ms p99_ms requests/s non2xx errors"
wrk_run() {
	wrk --latency "$@" 2>&1 | awk '
		/^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
		/Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $5 }
		/Socket errors/ { e = $4 $6 $8 $10 }
		function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
		END { printf "%.3f %.3f %d %d %s\n", ms(p50), ms(p99), rps, bad + 0, (e == "" ? "0" : e) }'
}
warm_fn=$(wrk_run -t1 -c1 -d5s "$LOOM_ACTIVATOR_URL/fns/default/hello?name=x")
warm_direct=$(wrk_run -t1 -c1 -d5s -s "$work/run.lua" "http://$addr/run")

# throughput: the function, then (its instance gone) an app with the same body
body=$(curl -s "$LOOM_ACTIVATOR_URL/fns/default/hello?name=x")
tp_fn=$(wrk_run -t2 -c16 -d10s "$LOOM_ACTIVATOR_URL/fns/default/hello?name=x")
loom fn delete hello >/dev/null
# the app: the same runtime image's Python, its http.server answering the body
cat >"$work/app.py" <<'EOF'
import http.server, os
B = os.environ["BODY"].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(B)))
        self.end_headers()
        self.wfile.write(B)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
EOF
loom app create site --image "$(runtime_ref python-3.11 "$LOOM_REGISTRY")" \
	--command /usr/bin/python3 --arg -c --arg "$(cat "$work/app.py")" --env "BODY=$body" \
	--port 8080 --min-scale 1 --cpu 1 --memory 4G >/dev/null
app_url=$(loom app get site -o json | jq -r .url)
for _ in $(seq 1 300); do
	[ "$(curl -s "${app_url}hello")" = "$body" ] && break
	sleep 0.2
done
tp_app=$(wrk_run -t2 -c16 -d10s "${app_url}hello")

# idle stem cells' memory: every process of the container's cgroup
rss_of() { # RUNTIME: kB
	local id pid
	id=$(sql "SELECT id FROM instances WHERE kind = 'function' AND runtime = '$1'
		AND claimed_at IS NULL AND state = 'running' LIMIT 1")
	[ -n "$id" ] || {
		echo -
		return
	}
	pid=$(runc --root "$LOOM_HOME/agent/runc" state "$id" | jq -r .pid)
	# the container's processes: its pid namespace's
	local ns kb=0 p
	ns=$(readlink "/proc/$pid/ns/pid")
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
		kb=$((kb + $(awk '/^VmRSS/ { print $2 }' "$p/status" 2>/dev/null || echo 0)))
	done
	echo "$kb"
}
wait_stem nodejs-18 120 || true
rss_py=$(rss_of python-3.11)
rss_node=$(rss_of nodejs-18)

# a burst: 20 cold calls at once, then the pools refilled
loom app delete site >/dev/null
for i in $(seq 1 20); do loom fn create "b$i" "${fn_opts[@]}" >/dev/null; done
wait_stem python-3.11 60 || true
t0=$(now_ms)
for i in $(seq 1 20); do
	curl -s -o /dev/null -m 60 -w '%{http_code}\n' "$LOOM_ACTIVATOR_URL/fns/default/b$i" >"$work/burst.$i" &
done
wait
burst_ms=$(($(now_ms) - t0))
burst_failed=$(cat "$work"/burst.* | grep -vc '^200$' || true)
refill_ms=-
if wait_stem python-3.11 120 && wait_stem nodejs-18 120; then refill_ms=$(($(now_ms) - t0 - burst_ms)); fi
stem_waits=$(curl -s "http://$LOOM_ACTIVATOR_ADDR/metrics" |
	awk '/^loom_activator_function_stem_waits_total/ { print $2 }')
down

# --- platform 2: no pools, every stem cell on demand ---------------------------

up nopool LOOM_SCHEDULER_STEM_CELLS=0
: >"$work/cold0"
cold0_failed=0
n0=$(((samples + 2) / 3))
stem_free0=0
for i in $(seq 1 "$n0"); do
	loom fn create "z$i" "${fn_opts[@]}" >/dev/null
	# a stem cell started for an earlier call and still free (the scheduler
	# stops such surplus after a minute) would make this a warm claim: the
	# bench waits for it to go, and counts the sample apart if it does not
	for _ in $(seq 1 100); do
		[ "$(free_stems python-3.11)" != 0 ] || break
		sleep 1
	done
	if [ "$(free_stems python-3.11)" != 0 ]; then
		stem_free0=$((stem_free0 + 1))
		loom fn delete "z$i" >/dev/null
		continue
	fi
	r=$(timed_call "$LOOM_ACTIVATOR_URL/fns/default/z$i?name=x")
	if [ "${r%% *}" = 200 ]; then ms_of <<<"$r" >>"$work/cold0"; else cold0_failed=$((cold0_failed + 1)); fi
	loom fn delete "z$i" >/dev/null
	sleep 1
done
down

# the baseline: the same image's python3 printing hello under bare runc
layout=$(runtime_cached python-3.11)
blob() { echo "$layout/blobs/sha256/${1#sha256:}"; }
manifest=$(blob "$(jq -r '.manifests[0].digest' "$layout/index.json")")
bundle=$work/bare
mkdir -p "$bundle/rootfs"
for layer in $(jq -r '.layers[].digest' "$manifest"); do
	tar -xzf "$(blob "$layer")" -C "$bundle/rootfs"
done
(cd "$bundle" && runc spec)
jq --arg cg "loom-bfn-bare-$$" '.process.args = ["/usr/bin/python3", "-c", "print(\"hello\")"]
	| .process.terminal = false | .root.readonly = true
	| .linux.namespaces |= map(select(.type != "network")) | .linux.cgroupsPath = $cg' \
	"$bundle/config.json" >"$bundle/c.json" && mv "$bundle/c.json" "$bundle/config.json"
: >"$work/bare.ms"
for _ in $(seq 1 "$n0"); do
	t0=$(date +%s%N)
	runc --root "$work/runc" run -b "$bundle" bench-bare >/dev/null 2>&1 </dev/null
	echo "$((($(date +%s%N) - t0) / 10000))" | awk '{ printf "%.2f\n", $1 / 100 }' >>"$work/bare.ms"
done

# --- the tables ---------------------------------------------------------------------

f() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
read -r wf50 wf99 _ wfbad wferr <<<"$warm_fn"
read -r wd50 wd99 _ wdbad wderr <<<"$warm_direct"
read -r _ _ tfrps tfbad tferr <<<"$tp_fn"
read -r _ _ tarps tabad taerr <<<"$tp_app"
c50=$(pct 50 <"$work/cold") c99=$(pct 99 <"$work/cold")
z50=$(pct 50 <"$work/cold0") z99=$(pct 99 <"$work/cold0")
b50=$(pct 50 <"$work/bare.ms") b99=$(pct 99 <"$work/bare.ms")

echo
echo "functions ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)); ms unless said"
printf '%-62s %9s %9s %8s %s\n' "" p50 p99 ratio "failed / samples"
printf '%-62s %9s %9s %8s %s\n' "cold call, a stem cell free (curl, through the activator)" "$c50" "$c99" "" \
	"$cold_failed / $(wc -l <"$work/cold") ok ($no_stem skipped: no stem within 60 s)"
printf '%-62s %9s %9s %8s %s\n' "cold call, no stem cell (started on demand)" "$z50" "$z99" "$(f "$z50" "$b50")" \
	"$cold0_failed / $(wc -l <"$work/cold0") ok ($stem_free0 skipped: a stem cell was free)"
printf '%-62s %9s %9s %8s %s\n' "  baseline: runc run python3 -c print (create to deleted)" "$b50" "$b99" "1.00x" \
	"$(wc -l <"$work/bare.ms") runs"
printf '%-62s %9s %9s %8s %s\n' "warm call through the activator (wrk, 1 connection)" "$wf50" "$wf99" "" \
	"non-2xx $wfbad, socket errors $wferr"
printf '%-62s %9s %9s %8s %s\n' "  baseline: the instance's /run directly" "$wd50" "$wd99" "" \
	"non-2xx $wdbad, socket errors $wderr"
printf '%-62s %9s\n' "  added by the activator (p50)" "$(awk -v a="$wf50" -v b="$wd50" 'BEGIN { printf "%.3f", a - b }')"
printf '%-62s %9s %9s %8s %s\n' "throughput, function, 16 connections (requests/s)" "$tfrps" "" "$(f "$tfrps" "$tarps")" \
	"non-2xx $tfbad, socket errors $tferr"
printf '%-62s %9s %9s %8s %s\n' "  baseline: an app, same image and server, same body (requests/s)" "$tarps" "" "1.00x" \
	"non-2xx $tabad, socket errors $taerr"
printf '%-62s %9s\n' "idle stem cell RSS, python-3.11 (kB, all its processes)" "$rss_py"
printf '%-62s %9s\n' "idle stem cell RSS, nodejs-18 (kB, all its processes)" "$rss_node"
printf '%-62s %9s %s\n' "20 cold calls at once: all answered" "$burst_ms" "($burst_failed failed; calls that waited for a stem: ${stem_waits:-?})"
printf '%-62s %9s\n' "  then until both pools have a free stem cell running" "$refill_ms"
