#!/usr/bin/env bash
# The logs' figures, on a platform of its own:
#   - shipping: a logshipper of its own ships INSTANCES container.log files of
#     LINES CRI lines each (made beforehand) into PostgreSQL: lines/s and MB/s
#     until every line is stored (one node's logshipper, COPY per round)
#   - follow latency: an app writes a line every 50 ms; a follower of
#     `GET .../logs?follow=true` (server-sent events) takes the time from the
#     line's timestamp (the shim stamps it when it reads the container's pipe)
#     to its arrival: p50, p99, max
# Prints a table; never fails on a time.
#   tests/bench/logs.sh [INSTANCES [LINES]]      (default 10 and 100000)
. "$(dirname "$0")/lib.sh"
instances=${1:-10}
lines=${2:-100000}
bench_up
sql() { psql "$LOOM_PG_DSN" -XAtq -c "$1"; }

# --- shipping ------------------------------------------------------------------------------
state=$LOOM_HOME/bench-agent
ids=()
for i in $(seq 1 "$instances"); do
	id=$(cat /proc/sys/kernel/random/uuid)
	ids+=("$id")
	mkdir -p "$state/instances/$id"
	echo "{\"id\":\"$id\",\"project\":\"default\",\"kind\":\"job\"}" >"$state/instances/$id/instance.json"
	awk -v n="$lines" -v ts="$(date -u +%Y-%m-%dT%H:%M:%S)" 'BEGIN {
		for (i = 0; i < n; i++)
			printf "%s.%09dZ %s F line %d of the benchmark, some text to make it about a hundred bytes\n",
				ts, i, (i % 5 == 0 ? "stderr" : "stdout"), i }' >"$state/instances/$id/container.log"
done
total_bytes=$(cat "$state"/instances/*/container.log | wc -c)
total_lines=$((instances * lines))
port=$(bench_free_port)
t0=$(now_ms)
LOOM_PG_DSN=$LOOM_PG_DSN LOOM_NATS_URL=$LOOM_NATS_URL "$bin/loom-logshipper" --agent-state-dir "$state" \
	--node-name benchnode --http-addr "127.0.0.1:$port" >>"$LOOM_HOME/logs/logshipper-bench.log" 2>&1 &
pids+=($!)
stored() { sql "SELECT coalesce(sum(lines), 0) FROM log_streams WHERE node = 'benchnode'"; }
while [ "$(stored)" -lt "$total_lines" ]; do sleep 0.1; done
ship_ms=$(($(now_ms) - t0))
rounds=$(curl -s "http://127.0.0.1:$port/metrics" | sed -n 's/^loom_logshipper_rounds_total //p')

# --- follow latency --------------------------------------------------------------------------
# shellcheck disable=SC2016
loom app create ticker --image "$LOOM_REGISTRY/loom/busybox:latest" --min-scale 1 --port 8080 \
	--cmd 'i=0; (while :; do i=$((i + 1)); echo "tick $i"; sleep 0.05; done) & exec httpd -f -p 8080 -h /etc' \
	>/dev/null
samples=200
lat=$(python3 - "$LOOM_API" "$LOOM_KEY" "$samples" <<'EOF'
import datetime, http.client, json, sys, time
from urllib.parse import urlparse
api, key, want = urlparse(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection(api.hostname, api.port, timeout=120)
c.request("GET", "/v1/projects/default/apps/ticker/logs?follow=true&tail=1",
          headers={"Authorization": "Bearer " + key, "Accept": "text/event-stream"})
r = c.getresponse()
out, skip = [], 20  # the first lines: history, and the app starting
while len(out) < want:
    line = r.fp.readline()
    if not line:
        break
    if not line.startswith(b"data: "):
        continue
    now = time.time()
    ts = json.loads(line[6:])["ts"]
    t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    if skip:
        skip -= 1
        continue
    out.append((now - t.timestamp()) * 1000)
print(" ".join("%.1f" % x for x in sorted(out)))
EOF
)
pct() { tr ' ' '\n' <<<"$lat" | awk -v p="$1" 'NF { v[++n] = $1 } END { if (!n) { print "-"; exit }
	i = int(p / 100 * n + 0.999); if (i < 1) i = 1; print v[i] }'; }

printf '\n%-62s %14s\n' "logs ($(nproc) cores)" "figure"
printf '%-62s %14s\n' "--------------------------------------------------------------" "--------------"
printf '%-62s %14s\n' "shipped: $instances files x $lines lines, $((total_bytes / 1000000)) MB" "$total_lines"
printf '%-62s %14s\n' "  seconds until every line is in PostgreSQL" "$(secs "$ship_ms")"
printf '%-62s %14s\n' "  lines/s" "$(rate "$total_lines" "$ship_ms")"
printf '%-62s %14s\n' "  MB/s" "$(awk -v b="$total_bytes" -v m="$ship_ms" 'BEGIN { printf "%.1f", b / 1000 / m }')"
printf '%-62s %14s\n' "  rounds (one COPY and commit each)" "${rounds:-?}"
printf '%-62s %14s\n' "follow latency, line written -> line on the follower, p50 ms" "$(pct 50)"
printf '%-62s %14s\n' "  p99 ms ($(wc -w <<<"$lat") lines)" "$(pct 99)"
printf '%-62s %14s\n' "  max ms" "$(pct 100)"
