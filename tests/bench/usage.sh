#!/usr/bin/env bash
# Metering's figures, on a platform of its own:
#   - samples/s one metering replica stores (JetStream filled while it is
#     stopped, then drained), and two replicas
#   - the FOCUS export of one month for INSTANCES instances (hourly records
#     made in PostgreSQL: every hour of 30 days, 5 metrics each): time, size,
#     rows, through the API's stream
# Prints a table; never fails on a time.
#   tests/bench/usage.sh [SAMPLES [INSTANCES]]     (default 100000 and 1000)
. "$(dirname "$0")/lib.sh"
samples=${1:-100000}
instances=${2:-1000}
# aggregation off the drain's path: it runs once the samples are in
export LOOM_METERING_AGGREGATE_INTERVAL=1h
bench_up
helper="python3 $repo/tests/integration/usage_helper.py"
sql() { psql "$LOOM_PG_DSN" -XAtq -c "$1"; }

metering_pid=$(cat "$LOOM_HOME/run/metering.pid")
mapfile -d '' -t metering_env <"/proc/$metering_pid/environ"
kill "$metering_pid"
while kill -0 "$metering_pid" 2>/dev/null; do sleep 0.1; done

# start_metering K: K replicas, each on its own HTTP port
start_metering() {
	local i port
	for i in $(seq 1 "$1"); do
		port=$(bench_free_port)
		env -i "${metering_env[@]}" LOOM_METERING_ADDR="127.0.0.1:$port" "$bin/loom-metering" \
			>>"$LOOM_HOME/logs/metering-bench.log" 2>&1 &
		pids+=($!)
	done
}
stop_metering() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
# drain K: fill the stream with $samples samples, start K replicas, time
# until all are stored; sets pub (samples/s published) and drain_ms
drain() {
	local before t0
	before=$(sql "SELECT count(*) FROM usage_samples")
	pub=$($helper flood "$samples" "n$1" default | awk '{ print $3 }')
	start_metering "$1"
	# from the first sample stored (the replicas' start is not counted)
	while [ "$(sql "SELECT count(*) FROM usage_samples")" -le "$before" ]; do sleep 0.05; done
	t0=$(now_ms)
	while [ "$(sql "SELECT count(*) FROM usage_samples")" -lt $((before + samples)) ]; do sleep 0.1; done
	drain_ms=$(($(now_ms) - t0))
	stop_metering
}
drain 1
pub1=$pub ms1=$drain_ms
drain 2
ms2=$drain_ms

# one month of hourly records for $instances job runs, 5 metrics each
sql "INSERT INTO usage_records (hour, project_id, project, kind, resource, metric, quantity,
	sources, closed_pass, unit_price, list_cost, billed_cost)
	SELECT h, 1, 'default', 'job', 'run-' || r, m, 3600.123456789, 720, 1, 0.00003, 0.108, 0.108
	FROM generate_series(date_trunc('month', now()) - interval '1 month',
	                     date_trunc('month', now()) - interval '1 hour', interval '1 hour') h,
	     generate_series(1, $instances) r,
	     unnest(ARRAY['vcpu_seconds_allocated', 'vcpu_seconds_used', 'memory_gb_seconds',
	                  'ephemeral_gb_seconds', 'gpu_seconds']) m" >/dev/null
sql "ANALYZE usage_records" >/dev/null
rows=$(sql "SELECT count(*) FROM usage_records WHERE hour < date_trunc('month', now())")
from=$(date -u -d "$(date -u +%Y-%m-01) -1 month" +%Y-%m)
to=$(date -u +%Y-%m)
t0=$(now_ms)
curl -sS -N -H "Authorization: Bearer $LOOM_KEY" -o "$LOOM_HOME/export-api.csv" \
	"$LOOM_API/v1/admin/usage/export?format=focus&from=$from&to=$to"
export_ms=$(($(now_ms) - t0))
t0=$(now_ms)
loom-admin usage export --format focus --from "$from" --to "$to" >"$LOOM_HOME/export-admin.csv"
admin_ms=$(($(now_ms) - t0))
bytes=$(stat -c %s "$LOOM_HOME/export-api.csv")
admin_bytes=$(stat -c %s "$LOOM_HOME/export-admin.csv")
same=yes
if ! cmp -s "$LOOM_HOME/export-api.csv" "$LOOM_HOME/export-admin.csv"; then
	same="no: $(cmp "$LOOM_HOME/export-api.csv" "$LOOM_HOME/export-admin.csv" 2>&1 | head -1 || true)"
	same="$same; rows $(($(wc -l <"$LOOM_HOME/export-api.csv") - 1)) and $(($(wc -l <"$LOOM_HOME/export-admin.csv") - 1))"
	kept=$(mktemp -d /tmp/loom-usage-export.XXXXXX)
	mv "$LOOM_HOME/export-api.csv" "$LOOM_HOME/export-admin.csv" "$kept/"
	same="$same; both kept in $kept"
fi
rm -f "$LOOM_HOME/export-api.csv" "$LOOM_HOME/export-admin.csv"

printf '\n%-62s %14s\n' "metering ($(nproc) cores, $samples samples per run)" "figure"
printf '%-62s %14s\n' "--------------------------------------------------------------" "--------------"
printf '%-62s %14s\n' "samples/s into JetStream (one publisher, pipelined)" "$pub1"
printf '%-62s %14s\n' "samples/s stored, one metering replica" "$(rate "$samples" "$ms1")"
printf '%-62s %14s\n' "samples/s stored, two metering replicas" "$(rate "$samples" "$ms2")"
printf '%-62s %14s\n' "FOCUS export of a month, $instances instances: rows" "$rows"
printf '%-62s %14s\n' "  through the API (streamed): seconds" "$(secs "$export_ms")"
printf '%-62s %14s\n' "  through the API: MB" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')"
printf '%-62s %14s\n' "  through the API: rows/s" "$(rate "$rows" "$export_ms")"
printf '%-62s %14s\n' "  through loom-admin: seconds" "$(secs "$admin_ms")"
printf '%-62s %14s\n' "  through loom-admin: MB" "$(awk -v b="$admin_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')"
printf '%-62s %14s\n' "  the two are the same bytes" "$same"
