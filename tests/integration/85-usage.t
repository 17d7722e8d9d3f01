#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Usage, ground truth: jobs burn cpu while the test kills -9 metering, kills
# -9 nats-server and takes away what it had not synced to disk (what a
# machine crash takes: Debian's 2.9 syncs JetStream every two minutes), and
# kills and restarts the agent, mid-run. Then every instance's samples add up
# to its cgroup's own counter (within 1%; they are exact), the hourly records
# to the samples, the FOCUS export (from loom-admin and from the API, the same
# bytes) to the records, to the last digit; the user's view shows what the
# run used and cost.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# fast rounds: several samples per instance, resends within seconds
export LOOM_AGENT_USAGE_INTERVAL=1s LOOM_AGENT_USAGE_RESEND=3s
export LOOM_METERING_AGGREGATE_INTERVAL=500ms
platform_up
image=$LOOM_REGISTRY/loom/busybox:latest
sql() { psql "$LOOM_PG_DSN" -XAtq -F' ' -c "$1" 2>&1; }
run_field() { loom jobrun get "$1" -o json 2>/dev/null | jq -r "$2" 2>/dev/null; }
outbox=$LOOM_HOME/agent/usage-outbox
nats_monitor=$(sed -n 's/^LOOM_DEV_NATS_MONITOR_PORT=//p' "$LOOM_HOME/env")
from=$(sql "SELECT to_char(date_trunc('hour', now() AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:00:00Z')")

out=$(loom-admin prices set --currency EUR --price vcpu_seconds_used=0.00005 \
	--price memory_gb_seconds=0.000001 --free vcpu_seconds_used=1 --description truth 2>&1)
like "$out" 'price sheet version 1: EUR, 2 prices' "a price sheet is set"

# --- three indices, each burning about two vCPU-seconds ----------------------------
# shellcheck disable=SC2016
out=$(loom jobrun submit --name truth --image "$image" --cpu 1 --memory 4G --array-indices 0-2 \
	--cmd 'awk "BEGIN { for (i = 0; i < 4000000; i++) s += i }"; echo burned $JOB_INDEX' 2>&1)
is "$?" 0 "jobrun submit truth (3 indices burning cpu)" || diag "$out"
running() { [ "$(run_field truth .status_details.running)" -ge 1 ] 2>/dev/null; }
ok "truth runs" wait_for 60 running

# metering goes away while samples keep coming: they wait in JetStream and
# in the agent's outbox
ok "kill -9 metering" halt metering KILL
in_stream() {
	curl -s "http://127.0.0.1:$nats_monitor/jsz?streams=true" | jq -e \
		'[.account_details[].stream_detail[] | select(.name == "LOOM_USAGE") | .state.messages] | add > 0' \
		>/dev/null
}
ok "samples wait in the stream while metering is down" wait_for 20 in_stream
# nats-server dies, and what it had not synced is gone with it
ok "kill -9 nats-server" halt nats KILL
rm -rf "$LOOM_HOME/nats/jetstream"
unhalt nats
nats_up() { curl -fs -o /dev/null "http://127.0.0.1:$nats_monitor/healthz"; }
ok "nats-server starts again, without the JetStream store it had" wait_for 20 nats_up
ok "kill -9 the agent and start it again" respawn agent KILL
agent_ready() { curl -fs -o /dev/null "http://$LOOM_AGENT_ADDR/readyz"; }
ok "the agent is ready again" wait_for 30 agent_ready
unhalt metering
metering_ready() { curl -fs -o /dev/null "http://$LOOM_METERING_ADDR/readyz"; }
ok "metering is ready again" wait_for 30 metering_ready

over() { s=$(run_field truth .status); [ "$s" = completed ] || [ "$s" = failed ]; }
ok "truth finishes" wait_for 120 over
is "$(run_field truth .status)" completed "truth completed"

# --- every sample arrives, once ------------------------------------------------------
empty() { [ -z "$(ls -A "$outbox")" ]; }
ok "the agent's outbox empties (metering confirmed every sample)" wait_for 60 empty
ids=$(sql "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'truth'")
n=$(wc -w <<<"$ids")
# an instance given up for lost (the node missed heartbeats while NATS was
# away) runs on until the agent stops it: wait for every exit
exited() { local i; for i in $ids; do [ -f "$LOOM_HOME/agent/instances/$i/exit.json" ] || return 1; done; }
ok "every instance of truth has exited" wait_for 60 exited
ok "the outbox is empty again" wait_for 60 empty
ok "truth ran on $n instances (3, or more where the node was lost meanwhile)" test "$n" -ge 3
cgroup_total=0 billed_total=0 exact=0
for id in $ids; do
	counter=$(jq -r '.cpu_usage_ns // empty' "$LOOM_HOME/agent/instances/$id/exit.json" 2>/dev/null)
	sampled=$(sql "SELECT coalesce(sum(cpu_ns), 0) FROM usage_samples WHERE instance_id = '$id'")
	finals=$(sql "SELECT count(*) FROM usage_samples WHERE instance_id = '$id' AND final")
	diag "instance $id: cgroup counter ${counter:-?} ns, samples add up to $sampled ns ($finals final)"
	cgroup_total=$((cgroup_total + ${counter:-0}))
	billed_total=$((billed_total + sampled))
	[ "$counter" = "$sampled" ] && exact=$((exact + 1))
done
diag "cgroup counters: $cgroup_total ns; samples: $billed_total ns; exact on $exact of $n instances"
ok "every instance left its counter in exit.json" test "$cgroup_total" -gt 1000000000
diff_ppm=$(((billed_total - cgroup_total) * 1000000 / (cgroup_total > 0 ? cgroup_total : 1)))
ok "billed vCPU-seconds equal the cgroups' counters within 1% (${diff_ppm#-} ppm)" \
	test "${diff_ppm#-}" -le 10000
is "$exact" "$n" "and exactly, instance by instance"
is "$(sql "SELECT count(*) - count(DISTINCT (instance_id, seq)) FROM usage_samples")" 0 \
	"no sample is stored twice"

# --- the records add up to the samples, the export to the records --------------------
aggregated() { [ "$(sql "SELECT count(*) FROM usage_samples WHERE NOT aggregated")" = 0 ]; }
ok "every sample is aggregated" wait_for 30 aggregated
sampled_s=$(sql "SELECT trim_scale(sum(cpu_ns) * 0.000000001) FROM usage_samples s
	JOIN instances i ON i.id = s.instance_id JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'truth'")
like "$sampled_s" '^[1-9][0-9]*\.[0-9]+$' "the samples hold seconds of cpu ($sampled_s)"
recorded_s=$(sql "SELECT trim_scale(sum(quantity)) FROM usage_records
	WHERE resource = 'truth' AND metric = 'vcpu_seconds_used'")
is "$recorded_s" "$sampled_s" "the hourly records hold the samples' vCPU-seconds exactly ($sampled_s)"
alloc_sampled=$(sql "SELECT trim_scale(sum(cpu_millis_alloc::numeric * interval_ms * 0.000001))
	FROM usage_samples s JOIN instances i ON i.id = s.instance_id JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'truth'")
is "$(sql "SELECT trim_scale(sum(quantity)) FROM usage_records WHERE resource = 'truth'
	AND metric = 'vcpu_seconds_allocated'")" "$alloc_sampled" "and the allocated vCPU-seconds"

to=$(sql "SELECT to_char(date_trunc('hour', now() AT TIME ZONE 'UTC') + interval '2 hours', 'YYYY-MM-DD\"T\"HH24:00:00Z')")
loom-admin usage export --format focus --from "$from" --to "$to" --project default --include-open \
	>"$tmp/focus.csv" 2>"$tmp/focus.err"
is "$?" 0 "loom-admin usage export --format focus" || diag "$(cat "$tmp/focus.err")"
get -H "Authorization: Bearer $LOOM_KEY" \
	"$LOOM_API/v1/admin/usage/export?format=focus&from=$from&to=$to&project=default&include_open=true"
is "$http_status $http_type" "200 text/csv" "GET /v1/admin/usage/export answers CSV"
ok "the API's export is the same, byte for byte" cmp -s "$tmp/http_body" "$tmp/focus.csv"
# sums over the CSV with Python's exact decimals
focus_sum() {
	python3 - "$tmp/focus.csv" "$@" <<'EOF'
import csv, sys
from decimal import Decimal
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
col, metric, resource = sys.argv[2], sys.argv[3], sys.argv[4]
total = sum((Decimal(r[col]) for r in rows
             if (metric == "*" or r["x_Metric"] == metric)
             and (resource == "*" or r["ResourceName"] == resource)), Decimal(0))
print(format(total.normalize(), "f") if total else "0")
EOF
}
is "$(focus_sum ConsumedQuantity vcpu_seconds_used truth)" "$sampled_s" \
	"the FOCUS export's vCPU-seconds of truth equal the samples' exactly"
is "$(focus_sum BilledCost '*' '*')" "$(sql "SELECT trim_scale(sum(billed_cost)) FROM usage_records")" \
	"its billed cost is the records' to the last digit"
rows=$(($(wc -l <"$tmp/focus.csv") - 1))
is "$rows" "$(sql "SELECT count(*) FROM usage_records")" "one CSV row per hourly record"
like "$(head -1 "$tmp/focus.csv")" '^BilledCost,BillingAccountId,BillingAccountName,BillingCurrency,' \
	"the header names FOCUS's columns"
like "$(grep ',vcpu_seconds_used,' "$tmp/focus.csv" | head -1)" \
	',EUR,.*,Usage,,.*,Usage-Based,.*,vCPU-Seconds,.*/v1/projects/default/job_runs/truth,truth,Job Run,Compute,Loom Jobs,' \
	"a row says currency, category, unit and the job run"

# --- the user's view ---------------------------------------------------------------
api GET "/v1/projects/default/usage?from=$from&to=$to&group_by=resource"
is "$http_status" 200 "GET .../usage answers"
is "$(jq -r '.items[] | select(.resource == "truth" and .metric == "vcpu_seconds_used") | .quantity' <<<"$http_body")" \
	"$sampled_s" "it shows truth's vCPU-seconds"
cost=$(jq -r '.items[] | select(.resource == "truth" and .metric == "vcpu_seconds_used") | .cost' <<<"$http_body")
want=$(sql "SELECT trim_scale(greatest(0, $sampled_s - 1) * 0.00005)")
is "$cost" "$want" "and their cost: (used - 1 free) x 0.00005 EUR"
like "$(jq -r '.peaks[] | select(.resource == "truth") | .memory_peak_bytes' <<<"$http_body")" '^[1-9][0-9]*$' \
	"and truth's memory peak"
out=$(loom usage --from "$from" --to "$to" 2>&1)
like "$out" "job truth +vcpu_seconds_used +$sampled_s vCPU-Seconds +$want EUR" "loom usage prints it"
api GET "/v1/projects/default/usage?group_by=week"
is "$http_status $(jq -r .detail <<<"$http_body")" \
	'400 query parameter "group_by": must be resource, kind or day' "a bad group_by is a 400 naming it"
api GET "/v1/projects/default/usage?from=yesterday"
like "$http_status $(jq -r .detail <<<"$http_body")" '^400 query parameter "from": ' \
	"a bad from is a 400 naming it"

finish
