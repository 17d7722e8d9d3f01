#!/usr/bin/env bash
# The logs' figures, on a platform of its own:
#   - shipping: a logshipper of its own ships INSTANCES container.log files of
#     LINES CRI lines each (made beforehand) into PostgreSQL: lines/s and MB/s
#     from its start until log_streams counts every line (one node's
#     logshipper: reading, parsing, COPY, commits and the LogBatches)
#   - the ceiling beside it: the same rows, in the same empty table, loaded
#     by psql's \copy from a file made beforehand (one COPY, one transaction),
#     in text and in binary format; the logshipper's rate over each
#   - where the time goes: CPU seconds of the logshipper and of its
#     PostgreSQL backend while it ships, and of the backend of each \copy;
#     lines per CPU-second of a backend is what it would take with a core
#     of its own (the wall-clock rates drop when other work takes the cores)
#   - follow latency: an app writes a line every 50 ms; a follower of
#     `GET .../logs?follow=true` (server-sent events) takes the time from the
#     line's timestamp (the shim stamps it when it reads the container's pipe)
#     to its arrival: p50, p99, max
# The three loads run RUNS times in turn (text COPY, binary COPY, the
# logshipper), each into an empty log_lines; the table gives each figure's
# median and its range, and the load average over them: whatever else runs
# on the machine shares its cores. Prints a table; never fails on a time.
#   tests/bench/logs.sh [INSTANCES [LINES [RUNS]]]      (default 10, 100000, 3)
. "$(dirname "$0")/lib.sh"
instances=${1:-10}
lines=${2:-100000}
runs=${3:-3}
bench_up
sql() { psql "$LOOM_PG_DSN" -XAtq -c "$1"; }

# --- shipping ------------------------------------------------------------------------------
files=$LOOM_HOME/bench-files # the container.log files, copied for each run
rows=$LOOM_HOME/rows.copy     # the same lines as log_lines rows, in COPY's text format
: >"$rows"
pid=$(sql "SELECT id FROM projects WHERE name = 'default'")
ts=$(date -u +%Y-%m-%dT%H:%M:%S)
for _ in $(seq 1 "$instances"); do
	id=$(cat /proc/sys/kernel/random/uuid)
	mkdir -p "$files/instances/$id"
	echo "{\"id\":\"$id\",\"project\":\"default\",\"kind\":\"job\"}" >"$files/instances/$id/instance.json"
	awk -v n="$lines" -v ts="$ts" -v id="$id" -v pid="$pid" -v rows="$rows" 'BEGIN {
		pts = ts; sub("T", " ", pts)
		for (i = 0; i < n; i++) {
			stream = i % 5 == 0 ? "stderr" : "stdout"
			text = sprintf("line %d of the benchmark, some text to make it about a hundred bytes", i)
			rec = sprintf("%s.%09dZ %s F %s", ts, i, stream, text)
			print rec
			printf "%s\t%d\t%s.%06d+00\t%s\t%s\t%s\n", id, off, pts, int(i / 1000), stream, text, pid >>rows
			off += length(rec) + 1
		} }' >"$files/instances/$id/container.log"
done
total_bytes=$(cat "$files"/instances/*/container.log | wc -c)
total_lines=$((instances * lines))
cols='log_lines (instance_id, "offset", ts, stream, line, project_id)'
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / hz }' "/proc/$1/stat"; }
empty_table() {
	sql "TRUNCATE log_lines; DELETE FROM log_streams WHERE node = 'benchnode'; CHECKPOINT"
}
check_rows() {
	local n
	n=$(sql "SELECT count(*) FROM log_lines")
	[ "$n" = "$total_lines" ] || echo "logs.sh: $1 stored $n rows, not $total_lines" >&2
}

# raw_copy FORMAT FILE: loads FILE into the empty log_lines with psql's \copy;
# sets copy_ms (psql's start to its exit) and copy_cpu (its backend's CPU ms)
raw_copy() {
	empty_table
	local t0
	t0=$(now_ms)
	copy_cpu=$(psql "$LOOM_PG_DSN" -XAtq <<-SQL
		\\o $LOOM_HOME/backend.pid
		SELECT pg_backend_pid();
		\\o
		\\copy $cols FROM '$2' WITH (FORMAT $1)
		\\! awk '{ print (\$14 + \$15) * 1000 / $(getconf CLK_TCK) }' /proc/\$(cat $LOOM_HOME/backend.pid)/stat
	SQL
	)
	copy_ms=$(($(now_ms) - t0))
	check_rows "the $1 COPY"
}

# ship: a logshipper ships fresh copies of the files into the empty log_lines;
# sets ship_ms, ship_cpu (its CPU ms), ship_bcpu (its backend's) and ship_rounds
ship() {
	empty_table
	rm -rf "$LOOM_HOME/bench-agent"
	cp -r "$files" "$LOOM_HOME/bench-agent"
	local port t0 p
	port=$(bench_free_port)
	t0=$(now_ms)
	LOOM_PG_DSN="$LOOM_PG_DSN?application_name=bench-logshipper" LOOM_NATS_URL=$LOOM_NATS_URL \
		"$bin/loom-logshipper" --agent-state-dir "$LOOM_HOME/bench-agent" --node-name benchnode \
		--http-addr "127.0.0.1:$port" >>"$LOOM_HOME/logs/logshipper-bench.log" 2>&1 &
	p=$!
	pids+=("$p")
	until [ "$(sql "SELECT coalesce(sum(lines), 0) FROM log_streams WHERE node = 'benchnode'")" -ge "$total_lines" ]; do
		sleep 0.1
	done
	ship_ms=$(($(now_ms) - t0))
	ship_cpu=$(cpu_ms "$p")
	ship_bcpu=$(cpu_ms "$(sql "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench-logshipper'")")
	ship_rounds=$(curl -s "http://127.0.0.1:$port/metrics" | sed -n 's/^loom_logshipper_rounds_total //p')
	kill "$p"
	wait "$p" 2>/dev/null || true
	check_rows "the logshipper"
}

# the binary file, from the rows as PostgreSQL stored them (a warm-up, not counted)
raw_copy text "$rows"
psql "$LOOM_PG_DSN" -XAtq -c "\\copy $cols TO '$LOOM_HOME/rows.bin' WITH (FORMAT binary)"
load_before=$(cut -d' ' -f1 /proc/loadavg)
text_ms=() text_cpu=() bin_ms=() bin_cpu=() ships_ms=() ships_cpu=() ships_bcpu=() ships_rounds=()
for _ in $(seq 1 "$runs"); do
	raw_copy text "$rows"
	text_ms+=("$copy_ms") text_cpu+=("$copy_cpu")
	raw_copy binary "$LOOM_HOME/rows.bin"
	bin_ms+=("$copy_ms") bin_cpu+=("$copy_cpu")
	ship
	ships_ms+=("$ship_ms") ships_cpu+=("$ship_cpu") ships_bcpu+=("$ship_bcpu") ships_rounds+=("${ship_rounds:-?}")
done
load_after=$(cut -d' ' -f1 /proc/loadavg)

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

# med < VALUES: "median (min-max)" of one value a line (of an even count,
# the lower middle)
med() {
	sort -g | awk '{ v[NR] = $1 } END {
		m = v[int((NR + 1) / 2)]; if (NR == 1) print m; else printf "%s (%s-%s)", m, v[1], v[NR] }'
}
# each F VALUES...: F of each value, one a line
each() {
	local f=$1 v
	shift
	for v in "$@"; do "$f" "$v"; echo; done
}
lps() { rate "$total_lines" "$1"; }
mbs() { awk -v b="$total_bytes" -v m="$1" 'BEGIN { printf "%.1f", b / 1000 / (m > 0 ? m : 1) }'; }
s1() { secs "$1"; }
ratios=() bin_ratios=()
for i in "${!ships_ms[@]}"; do
	ratios+=("$(awk -v a="${ships_ms[$i]}" -v b="${text_ms[$i]}" 'BEGIN { printf "%.2f", b / a }')")
	bin_ratios+=("$(awk -v a="${ships_ms[$i]}" -v b="${bin_ms[$i]}" 'BEGIN { printf "%.2f", b / a }')")
done
row() { printf '%-60s %20s\n' "$1" "$2"; }
printf '\n'
row "logs ($(nproc) cores, PostgreSQL ${LOOM_DEV_PG_DURABILITY:-fast})" "median (min-max)"
row "------------------------------------------------------------" "--------------------"
row "shipped: $instances files x $lines lines, $((total_bytes / 1000000)) MB; $runs runs of each" "$total_lines lines"
row "  load average (1 min) before -> after the runs" "$load_before -> $load_after"
row "logshipper: its start -> log_streams counts every line" "(100 ms polls)"
row "  seconds" "$(each s1 "${ships_ms[@]}" | med)"
row "  lines/s" "$(each lps "${ships_ms[@]}" | med)"
row "  MB/s (of container.log)" "$(each mbs "${ships_ms[@]}" | med)"
row "  rounds (one COPY and commit each)" "$(printf '%s\n' "${ships_rounds[@]}" | med)"
row "  CPU seconds of the logshipper" "$(each s1 "${ships_cpu[@]}" | med)"
row "  CPU seconds of its PostgreSQL backend" "$(each s1 "${ships_bcpu[@]}" | med)"
row "  lines per CPU-second of its backend" "$(each lps "${ships_bcpu[@]}" | med)"
row "raw COPY: psql \\copy of the same rows, its start -> its exit" ""
row "  text format: lines/s" "$(each lps "${text_ms[@]}" | med)"
row "    CPU seconds of its backend" "$(each s1 "${text_cpu[@]}" | med)"
row "    lines per CPU-second of its backend" "$(each lps "${text_cpu[@]}" | med)"
row "  binary format: lines/s" "$(each lps "${bin_ms[@]}" | med)"
row "    CPU seconds of its backend" "$(each s1 "${bin_cpu[@]}" | med)"
row "    lines per CPU-second of its backend" "$(each lps "${bin_cpu[@]}" | med)"
row "logshipper's lines/s over the raw text COPY's (same run)" "$(printf '%s\n' "${ratios[@]}" | med)"
row "  over the raw binary COPY's (same run)" "$(printf '%s\n' "${bin_ratios[@]}" | med)"
row "follow latency, line written -> line on the follower, p50 ms" "$(pct 50)"
row "  p99 ms ($(wc -w <<<"$lat") lines)" "$(pct 99)"
row "  max ms" "$(pct 100)"
