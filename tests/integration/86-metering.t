#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Metering with samples made by the test (usage_helper.py publishes them to
# JetStream as an agent would):
#   - samples are confirmed to their agent (loom.metered.<node>) only after
#     COMMIT, and refused ones are named as such
#   - hourly records hold exactly what the samples say; an hour closes and
#     never changes; a late sample gets a correction row of its own
#   - rating: the sheet in effect at the hour, an exact SKU before '', a
#     monthly free quantity; function activations and request counts (the
#     activator's, for an app it served)
#   - price sheets and export parameters are checked, field by field
#   - the FOCUS export, and the CloudEvents pushed to an endpoint that fails
#     at first: each event once, resumed from the cursor after a restart
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

command -v python3 >/dev/null || skip_all "needs python3"
helper="python3 $it_dir/usage_helper.py"
free_port recv_port
export LOOM_METERING_CLOSE_AFTER=1s LOOM_METERING_AGGREGATE_INTERVAL=300ms
export LOOM_METERING_PUSH_URL=http://127.0.0.1:$recv_port/events LOOM_METERING_PUSH_BATCH=2
platform_up
sql() { psql "$LOOM_PG_DSN" -XAtq -F'|' -c "$1" 2>&1; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; platform_trap' EXIT
$helper receiver "$recv_port" "$tmp/events.jsonl" 2 >"$tmp/receiver.log" 2>&1 &
pids+=($!)
$helper sub 'loom.metered.n-test' 600 >"$tmp/metered.log" 2>&1 &
pids+=($!)
wait_for 10 grep -q subscribed "$tmp/metered.log"

# hour H-3 and H-2 of now, in unix ms
h=$(($(date +%s) / 3600 * 3600 - 3 * 3600))
# sample ID SEQ_OFFSET_S CPU_NS [k=v ...]: one sample line, 5 s long, ending
# SEQ_OFFSET_S seconds into hour H-3
sample() {
	local id=$1 off=$2 cpu=$3
	shift 3
	local ts=$(((h + off) * 1000))
	local extra=""
	local kv
	for kv in "$@"; do extra+=",\"${kv%%=*}\":${kv#*=}"; done
	printf '{"instance_id":"%s","node":"n-test","project":"default","seq":%d,"ts_unix_ms":%d,"start_unix_ms":%d,"interval_ms":5000,"cpu_ns":%d,"cpu_usage_ns":%d,"cpu_millis_alloc":1500,"memory_bytes_alloc":536870912,"kind":"job","resource":"past"%s}\n' \
		"$id" "$ts" "$ts" $((ts - 5000)) "$cpu" "$cpu" "$extra"
}
i1=aaaaaaaa-0000-4000-8000-000000000001
i2=aaaaaaaa-0000-4000-8000-000000000002

# a price sheet in effect before these hours: loom-admin refuses sheets for
# hours that may be closed (tested below), so the test writes it itself
sql "INSERT INTO price_sheets (effective_from, currency, description)
	VALUES (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '2 days', 'USD', 'test');
	INSERT INTO prices (version, metric, sku, unit_price, free_per_month) VALUES
	(1, 'vcpu_seconds_used', '', 0.25, 5), (1, 'gpu_seconds', 'A100', 0.001, 0),
	(1, 'gpu_seconds', '', 0.0001, 0), (1, 'function_gb_seconds', '', 0.00002, 0),
	(1, 'function_invocations', '', 0.0000002, 0), (1, 'requests', '', 0.000001, 0)" >/dev/null

# --- hours close, late samples correct them -------------------------------------------
# metering stopped, the closed hours forgotten: H-3 is open when it comes back
ok "metering stopped" halt metering TERM
sql "DELETE FROM usage_hours" >/dev/null
{
	sample $i1 600 3000000000 gpus=1 gpu_model='"A100"'
	sample $i1 605 2000000001
	sample $i2 900 4123456789 gpus=2 gpu_model='"T4"'
} >"$tmp/s1.jsonl"
is "$($helper publish "$tmp/s1.jsonl" | awk '{ print $2 }' | sort | uniq -c | awk '{ print $1, $2 }')" \
	"3 stored" "three samples in JetStream"
unhalt metering
closed() { [ "$(sql "SELECT count(*) FROM usage_records WHERE resource = 'past' AND correction = 0
	AND closed_pass IS NOT NULL")" -ge 4 ]; }
ok "H-3's records are made and closed" wait_for 20 closed
rec() { sql "SELECT trim_scale(quantity), trim_scale(free_quantity), trim_scale(billed_cost), correction > 0,
	closed_pass IS NOT NULL FROM usage_records WHERE resource = 'past' AND metric = '$1' AND sku = '${2:-}'
	AND hour = to_timestamp($h) ORDER BY id"; }
is "$(rec vcpu_seconds_used)" "9.12345679|5|1.0308641975|f|t" \
	"vCPU-seconds: the samples' sum, 5 of them free, the rest at 0.25"
is "$(rec vcpu_seconds_allocated)" "22.5|0|0|f|t" "vCPU-seconds allocated: 1.5 vCPU x 15 s, no price"
is "$(rec memory_gb_seconds)" "8.05306368|0|0|f|t" "memory GB-seconds: 0.536870912 GB x 15 s"
is "$(rec gpu_seconds A100)" "5|0|0.005|f|t" "GPU-seconds of an A100 at its own price"
is "$(rec gpu_seconds T4)" "10|0|0.001|f|t" "GPU-seconds of a T4 at the price for every model"
before=$(sql "SELECT id, quantity, billed_cost, updated_at FROM usage_records WHERE resource = 'past' ORDER BY id")

sample $i2 1200 1000000000 >"$tmp/s2.jsonl"
$helper publish "$tmp/s2.jsonl" >/dev/null
corrected() { [ "$(sql "SELECT count(*) FROM usage_records WHERE resource = 'past' AND correction > 0")" -ge 3 ]; }
ok "a sample for the closed hour makes correction rows" wait_for 20 corrected
is "$(sql "SELECT id, quantity, billed_cost, updated_at FROM usage_records WHERE resource = 'past'
	AND correction = 0 ORDER BY id")" "$before" "the closed rows did not change"
is "$(sql "SELECT trim_scale(quantity), trim_scale(billed_cost), closed_pass = correction FROM usage_records
	WHERE resource = 'past' AND metric = 'vcpu_seconds_used' AND correction > 0")" "1|0.25|t" \
	"the correction: 1 vCPU-second, the free 5 used up, closed when made"

# --- confirmations after COMMIT ---------------------------------------------------------
confirmed() { grep -q "ids=.*$1" "$tmp/metered.log"; }
ok "the first samples are confirmed to their node" confirmed "$i2:$(((h + 900) * 1000))"
ok "and the late one" confirmed "$i2:$(((h + 1200) * 1000))"
# another transaction holds the same sample, uncommitted, for 8 s: metering's
# insert waits for it (then rolls it back), and must not confirm meanwhile
seq3=$(((h + 1500) * 1000))
psql "$LOOM_PG_DSN" -XAtq -c "BEGIN; INSERT INTO usage_samples (instance_id, seq, project, node, ts,
	cpu_usage_ns, memory_bytes, memory_peak_bytes, cpu_millis_alloc, memory_bytes_alloc)
	VALUES ('$i1', $seq3, 'default', 'n-test', now(), 0, 0, 0, 0, 0); SELECT pg_sleep(8); ROLLBACK" \
	>/dev/null 2>&1 &
lock_pid=$!
locked() { [ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'
	AND query LIKE '%pg_sleep(8)%' AND pid <> pg_backend_pid()")" = 1 ]; }
ok "another transaction holds the sample" wait_for 10 locked
sample $i1 1500 7 >"$tmp/s3.jsonl"
$helper publish "$tmp/s3.jsonl" >/dev/null
id3="$i1:$seq3"
sleep 2
early=$(grep -c "ids=.*$id3" "$tmp/metered.log")
stored=$(sql "SELECT count(*) FROM usage_samples WHERE instance_id = '$i1' AND seq = $seq3")
is "$early/$stored" "0/0" "while metering waits to store the sample, it is not confirmed"
wait "$lock_pid"
ok "once the other transaction is gone, it is confirmed" wait_for 15 confirmed "$id3"
is "$(sql "SELECT count(*) FROM usage_samples WHERE instance_id = '$i1' AND seq = $seq3 AND cpu_ns = 7")" 1 \
	"and stored"
sample $i1 1600 99999999999999 >"$tmp/s4.jsonl"
$helper publish "$tmp/s4.jsonl" >/dev/null
refused() { grep -q "refused=.*$i1:$(((h + 1600) * 1000))" "$tmp/metered.log"; }
ok "an impossible sample is refused, and the agent told so" wait_for 10 refused
ok "metering says why" grep -q "dropping usage message.*ns of cpu in 5000 ms" "$LOOM_HOME/logs/metering.log"

# --- functions and requests ----------------------------------------------------------------
sql "INSERT INTO function_activations (id, project_id, function_name, generation, started_at,
	duration_us, billed_ms, memory_bytes, status, http_status, cold) VALUES
	(gen_random_uuid(), 1, 'fn', 3, to_timestamp($h + 100), 1200, 2, 256000000, 'success', 200, true),
	(gen_random_uuid(), 1, 'fn', 3, to_timestamp($h + 200), 900, 1, 256000000, 'success', 200, false);
	INSERT INTO usage_requests (ts, project_id, project, app, requests) VALUES
	(to_timestamp($h + 100), 1, 'default', 'web', 40), (to_timestamp($h + 300), 1, 'default', 'web', 2);
	INSERT INTO build_runs (project_id, name, spec, state, started_at, finished_at) VALUES
	(1, 'b-med', '{\"strategy_size\": \"medium\"}', 'succeeded', to_timestamp($h + 100),
	 to_timestamp($h + 142.5)),
	(1, 'b-xl', '{\"strategy_size\": \"xlarge\"}', 'failed', to_timestamp($h + 200), to_timestamp($h + 210)),
	(1, 'b-never', '{}', 'cancelled', NULL, to_timestamp($h + 300))" >/dev/null
fn_done() { [ -n "$(sql "SELECT 1 FROM usage_records WHERE resource = 'web'")" ] &&
	[ -n "$(sql "SELECT 1 FROM usage_records WHERE resource = 'b-xl'")" ]; }
ok "activations, request counts and build runs are aggregated" wait_for 20 fn_done
is "$(sql "SELECT resource, sku, trim_scale(sum(quantity)) FROM usage_records WHERE kind = 'build'
	AND metric = 'build_seconds' GROUP BY resource, sku ORDER BY resource")" "b-med|medium|42.5
b-xl|xlarge|10" "build-seconds per size, from start to finish (a run that never started: none)"
is "$(sql "SELECT count(*) FROM build_runs WHERE NOT metered")" 0 "each build run is counted once"
is "$(sql "SELECT metric, revision, trim_scale(quantity), trim_scale(billed_cost) FROM usage_records
	WHERE kind = 'function' ORDER BY metric")" "function_gb_seconds|3|0.000768|0.00000001536
function_invocations|3|2|0.0000004" "a function: 2 invocations, 0.256 GB x 3 billed ms, priced"
is "$(sql "SELECT kind, trim_scale(quantity), trim_scale(billed_cost) FROM usage_records WHERE resource = 'web'")" \
	"app|42|0.000042" "an app's requests"
is "$(sql "SELECT count(*) FROM function_activations WHERE NOT metered")" 0 "each activation is counted once"

# --- the FOCUS export ---------------------------------------------------------------------
from=$(sql "SELECT to_char(to_timestamp($h) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00Z')")
to=$(sql "SELECT to_char(to_timestamp($h + 3600) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00:00Z')")
loom-admin usage export --format focus --from "$from" --to "$to" >"$tmp/focus.csv"
is "$?" 0 "loom-admin usage export"
is "$(($(wc -l <"$tmp/focus.csv") - 1))" "$(sql "SELECT count(*) FROM usage_records WHERE hour = to_timestamp($h)")" \
	"a row per record of the hour"
is "$(grep ',Correction,' "$tmp/focus.csv" | grep -c ',vcpu_seconds_used,')" \
	"$(sql "SELECT count(*) FROM usage_records WHERE hour = to_timestamp($h) AND correction > 0
	AND metric = 'vcpu_seconds_used'")" "each correction is a row of ChargeClass Correction"
total=$(python3 - "$tmp/focus.csv" <<'EOF'
import csv, sys
from decimal import Decimal
rows = [r for r in csv.DictReader(open(sys.argv[1], newline="")) if r["x_Metric"] == "vcpu_seconds_used"]
print(format(sum(Decimal(r["ConsumedQuantity"]) for r in rows).normalize(), "f"))
EOF
)
is "$total" "$(sql "SELECT trim_scale(sum(cpu_ns) * 0.000000001) FROM usage_samples
	WHERE resource = 'past'")" "its vCPU-seconds are the samples', exactly"
api GET "/v1/admin/usage/export?format=focus&to=$to"
is "$http_status $(jq -r .detail <<<"$http_body")" \
	'400 query parameter "from": is required (RFC 3339, a day 2026-05-01 or a month 2026-05)' \
	"the export without from is a 400 naming it"
api GET "/v1/admin/usage/export?format=focus&from=$from&to=$to&project=Nope"
like "$http_status $(jq -r .detail <<<"$http_body")" '^400 query parameter "project": ' "a bad project is named"
key=$(loom-admin keys create --project default --role read | grep -o 'loom_[0-9a-f]\{12\}_[A-Za-z0-9_-]\{43\}')
api GET "/v1/admin/usage/export?format=focus&from=$from&to=$to" "" "$key"
is "$http_status" 403 "a project's key cannot export"
out=$(loom-admin usage export --format xml --from "$from" --to "$to" 2>&1)
is "$?/$out" "2/loom-admin: --format: \"xml\" is not a format (focus: FinOps FOCUS 1.2 CSV)
(see loom-admin --help)" "loom-admin names a bad format"

# --- price sheets ---------------------------------------------------------------------------
check_sheet() {
	local want=$1
	shift
	out=$(loom-admin prices set "$@" 2>&1)
	local rc=$?
	like "$rc $out" "^1 loom-admin: invalid price sheet: $want" "prices set refuses: $want"
}
check_sheet 'field "currency": "usd" is not an ISO 4217' --currency usd --price requests=1
check_sheet 'field "effective_from": must not be before the current hour' --currency USD \
	--price requests=1 --effective-from "$from"
check_sheet 'field "prices\[0\].metric": "cpu" is not one of ' --currency USD --price cpu=1
check_sheet 'field "prices\[0\].unit_price": is required' --currency USD --free requests=5
check_sheet 'field "prices\[0\].unit_price": "1,5" is not a decimal' --currency USD --price 'requests=1,5'
versions=$(sql "SELECT count(*) FROM price_sheets")
next=$(sql "SELECT to_char(date_trunc('hour', now() AT TIME ZONE 'UTC') + interval '2 hours', 'YYYY-MM-DD\"T\"HH24:00:00Z')")
out=$(loom-admin prices set --currency CHF --price gpu_seconds/H100=0.002 --effective-from "$next" 2>&1)
like "$out" "^price sheet version $((versions + 1)): CHF, 1 prices, effective from" "a sheet for a later hour"
like "$(loom-admin prices get --at "$next")" 'currency: +CHF' "prices get --at shows it"
like "$(loom-admin prices get --at "$next")" 'gpu_seconds +H100 +GPU-Seconds +0.002' "with its prices"
like "$(loom-admin prices get)" 'currency: +USD' "and the sheet in effect now is still the other"
out=$(loom-admin prices set --currency CHF --price requests=1 --effective-from "$next" 2>&1)
like "$out" 'sheets are never changed' "a second sheet for the same hour is refused"
is "$(sql "SELECT count(*) FROM price_sheets")" $((versions + 1)) "and nothing was written"

# --- CloudEvents ------------------------------------------------------------------------------
all_pushed() {
	[ "$(sql "SELECT count(*) FROM usage_events")" -gt 0 ] &&
		[ "$(sql "SELECT seq FROM usage_push_cursor")" = "$(sql "SELECT max(seq) FROM usage_events")" ]
}
ok "every event is pushed (past two refused POSTs)" wait_for 30 all_pushed
ok "metering retried after the endpoint failed" grep -q 'pushing usage events: .* answered 500' \
	"$LOOM_HOME/logs/metering.log"
ids_pushed() { jq -r .id "$tmp/events.jsonl" | sort; }
is "$(ids_pushed | uniq -d)" "" "no event was accepted twice"
is "$(ids_pushed | paste -sd,)" "$(sql "SELECT id FROM usage_events ORDER BY id" | sort | paste -sd,)" \
	"the endpoint has every event"
ev=$(grep "\"loom-usage/1/vcpu_seconds_used/$(date -u -d "@$h" +%Y-%m-%dT%HZ)\"" "$tmp/events.jsonl")
is "$(jq -r '[.specversion, .type, .source, .subject, .data.quantity, .data.billed_cost, .data.currency] | join(" ")' <<<"$ev")" \
	"1.0 dev.loom.usage /loom/metering default 9.12345679 1.0308641975 USD" \
	"an hour's event: a CloudEvent with the hour's quantity and cost"
like "$(jq -r .id "$tmp/events.jsonl" | grep -c '/correction-')" '^[1-9]' "corrections have events of their own"

# a restart resumes from the cursor: only the new events go out
pushed_before=$(wc -l <"$tmp/events.jsonl")
cursor_before=$(sql "SELECT seq FROM usage_push_cursor")
ok "kill -9 metering" halt metering KILL
sample $i2 2400 500000000 >"$tmp/s5.jsonl"
$helper publish "$tmp/s5.jsonl" >/dev/null
unhalt metering
more() { [ "$(sql "SELECT seq FROM usage_push_cursor")" = "$(sql "SELECT max(seq) FROM usage_events")" ] &&
	[ "$(wc -l <"$tmp/events.jsonl")" -gt "$pushed_before" ]; }
ok "the new correction's events are pushed after the restart" wait_for 30 more
is "$(ids_pushed | uniq -d)" "" "and nothing was sent again"
is "$(($(wc -l <"$tmp/events.jsonl") - pushed_before))" \
	"$(sql "SELECT count(*) FROM usage_events WHERE seq > $cursor_before")" "exactly the new ones"

# --- an app's requests, counted by the activator ------------------------------------------
out=$(loom app create hits --image "$LOOM_REGISTRY/loom/busybox:latest" --cmd 'httpd -f -p 8080 -h /etc' \
	--port 8080 --min-scale 1 2>&1)
is "$?" 0 "an app that answers" || diag "$out"
url=$(loom app get hits -o json | jq -r .url)
codes=$(for i in 1 2 3 4 5; do curl -s -o /dev/null -m 10 -w '%{http_code} ' "${url}hostname"; done)
is "$codes" "200 200 200 200 200 " "five requests reach it"
counted() { [ "$(sql "SELECT coalesce(sum(requests), 0) FROM usage_requests WHERE app = 'hits'")" = 5 ]; }
ok "the activator counts them for metering" wait_for 10 counted
billed() { [ "$(sql "SELECT trim_scale(sum(quantity)) FROM usage_records WHERE resource = 'hits'
	AND metric = 'requests'")" = 5 ]; }
ok "and metering aggregates them" wait_for 20 billed

# --- an export of many pages (the API pages 2,000 rows, loom-admin 5,000) ------------------
# 12,000 records of two hours of 2020, their ids across 999 -> 1000 and 9999 -> 10000: a
# page order or keyset that took ids for text would repeat or skip rows
sql "INSERT INTO usage_records (hour, project_id, project, kind, resource, metric, quantity,
	sources, closed_pass)
	SELECT timestamptz '2020-01-01 00:00Z' + (n / 6000) * interval '1 hour', 1, 'default', 'job',
		'page-' || n, 'vcpu_seconds_used', 1, 1, 0 FROM generate_series(0, 11999) n" >/dev/null
record_ids() { tail -n +2 "$1" | awk -F, '{ print $NF }' | tr -d '\r'; }
loom-admin usage export --format focus --from 2020-01 --to 2020-02 >"$tmp/pages-admin.csv"
is "$(record_ids "$tmp/pages-admin.csv" | md5sum)" \
	"$(sql "SELECT id FROM usage_records WHERE hour < '2020-02-01' ORDER BY hour, id" | md5sum)" \
	"loom-admin's export of 12,000 records: each once, in order"
curl -sS -m 60 -H "Authorization: Bearer $LOOM_KEY" -o "$tmp/pages-api.csv" \
	"$LOOM_API/v1/admin/usage/export?format=focus&from=2020-01&to=2020-02"
ok "the API's export of them is the same, byte for byte" cmp "$tmp/pages-api.csv" "$tmp/pages-admin.csv"

kill "${pids[@]}" 2>/dev/null
trap 'platform_trap' EXIT
finish
