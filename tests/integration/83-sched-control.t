#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# The scheduler's control with a real agent (one node of two CPUs): a leader
# frozen (SIGSTOP) past its lease is replaced, and once thawed (SIGCONT) it
# places nothing (every instance placed afterwards carries the new leader's
# epoch); an app rolled over to a new revision keeps its running count (the
# new instances run before any old one ends); with the node full, a
# higher-priority run's indices are placed before a lower one's; reports
# sent many at once are applied in their order, each acknowledged or
# refused on its own.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

export LOOM_AGENT_CPU_MILLIS=2000
platform_up
trap 'rc=$?; cleanup_83; (exit $rc); platform_trap' EXIT
image=$LOOM_REGISTRY/loom/busybox:latest
sched2_pid=
frozen=

cleanup_83() {
	[ -z "$frozen" ] || kill -CONT "$frozen" 2>/dev/null
	[ -n "$sched2_pid" ] && kill -TERM "$sched2_pid" 2>/dev/null && wait "$sched2_pid" 2>/dev/null
	sched2_pid=
}

run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }
sql() { psql "$LOOM_PG_DSN" -XAtq -F' ' -c "$1" 2>&1; }
run_over() { local s; s=$(run_field "$1" .status); [ "$s" = completed ] || [ "$s" = failed ]; }
lease_epoch() { sql "SELECT epoch FROM leases WHERE name = 'scheduler'"; }
epochs_of() {
	sql "SELECT string_agg(DISTINCT i.epoch::text, ',') FROM instances i
		JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = '$1'"
}

# --- a frozen leader is fenced ----------------------------------------------------------
LOOM_SCHEDULER_ADDR=127.0.0.1:0 setsid "$bin/loom-scheduler" \
	>>"$LOOM_HOME/logs/scheduler-standby.log" 2>&1 </dev/null &
sched2_pid=$!
standby_up() { grep -q 'scheduler replica' "$LOOM_HOME/logs/scheduler-standby.log"; }
ok "a standby scheduler runs (pid $sched2_pid)" wait_for 20 standby_up
holder=$(sql "SELECT holder FROM leases WHERE name = 'scheduler'")
epoch=$(lease_epoch)
leader=$(cut -d: -f2 <<<"$holder")
other=$sched2_pid
[ "$leader" = "$sched2_pid" ] && other=$(cat "$LOOM_HOME/run/scheduler.pid")
ok "freeze the leader (pid $leader, epoch $epoch) with SIGSTOP" kill -STOP "$leader"
frozen=$leader
moved() { [ "$(lease_epoch)" -gt "$epoch" ] 2>/dev/null; }
ok "the lease moves to a new epoch" wait_for 30 moved
epoch2=$(lease_epoch)
is "$(sql "SELECT split_part(holder, ':', 2) FROM leases WHERE name = 'scheduler'")" "$other" \
	"the other replica (pid $other) holds epoch $epoch2"
submit_small() {
	loom jobrun submit --name "$1" --image "$image" --cpu 0.125 --memory 256M --cmd 'true' \
		--array-indices 0-3 >/dev/null 2>&1
}
ok "submit while the old leader is frozen" submit_small during
# only the placement is waited for here: the frozen replica is still in the
# reports' queue group and holds some reports until it is thawed
placed() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = '$1'")" = 4 ]
}
ok "during is placed by the new leader" wait_for 60 placed during || diag "$(run_json during)"
ok "thaw the old leader with SIGCONT" kill -CONT "$leader"
frozen=
ok "during completes" wait_for 60 run_over during || diag "$(run_json during)"
ok "submit after the old leader woke" submit_small after
ok "after completes" wait_for 60 run_over after || diag "$(run_json after)"
is "$(epochs_of during)" "$epoch2" "during: every instance carries the new epoch $epoch2"
is "$(epochs_of after)" "$epoch2" "after: every instance carries the new epoch $epoch2"
is "$(sql "SELECT count(*) FROM instances WHERE epoch = $epoch
	AND created_at > (SELECT min(i.created_at) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'during')")" 0 "nothing was placed under the old epoch after the takeover"
is "$(lease_epoch)" "$epoch2" "the lease stayed with epoch $epoch2"
ok "the thawed replica still runs" kill -0 "$leader"

# --- app rollover keeps the running count -------------------------------------------------
out=$(loom app create roll --image "$image" --cmd 'httpd -f -p 8080 -h /etc' --port 8080 \
	--min-scale 2 --max-scale 2 --cpu 0.125 --memory 256M 2>&1)
is "$?" 0 "app create roll (2 instances)" || diag "$out"
gen_running() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'roll' AND i.app_generation = $1 AND i.state = 'running'")" = 2 ]
}
ok "roll: two instances of generation 1 run" wait_for 60 gen_running 1
out=$(loom app update roll --env ROLL=2 2>&1)
is "$?" 0 "app update roll (a new generation)" || diag "$out"
old_gone() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'roll' AND i.app_generation = 1
		AND i.state IN ('assigned','pulling','starting','running')")" = 0 ]
}
ok "roll: generation 2 runs" wait_for 60 gen_running 2
ok "roll: generation 1 is retired" wait_for 60 old_gone
# the instance records: both new instances were running before the first old one ended
order=$(sql "SELECT (SELECT max(started_at) FROM (SELECT i.started_at FROM instances i
		JOIN apps a ON a.id = i.app_id WHERE a.name = 'roll' AND i.app_generation = 2
		AND i.started_at IS NOT NULL ORDER BY i.started_at LIMIT 2) n)
	<= (SELECT min(coalesce(i.finished_at, 'infinity')) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'roll' AND i.app_generation = 1)")
is "$order" t "roll: two new instances ran before any old one ended"
# one DELETE, then wait: a DELETE repeated while the instances stop marks
# them again and postpones the scheduler's stop (see the report of issue 5)
api DELETE "/v1/projects/$LOOM_PROJECT/apps/roll"
ok "DELETE app roll ($http_status)" test "$http_status" = 202 -o "$http_status" = 204
idle() {
	[ "$(sql "SELECT count(*) FROM instances WHERE state IN ('assigned','pulling','starting','running')")" = 0 ]
}
ok "the node is idle" wait_for 60 idle
api DELETE "/v1/projects/$LOOM_PROJECT/apps/roll"
ok "app roll is gone ($http_status)" test "$http_status" = 204 -o "$http_status" = 404

# --- priority with a full node ------------------------------------------------------------
out=$(loom jobrun submit --name filler --image "$image" --cpu 2 --memory 4G --cmd 'sleep 3600' 2>&1)
is "$?" 0 "submit filler (2 vCPU: the whole node)" || diag "$out"
filler_runs() { [ "$(run_field filler .status_details.running)" = 1 ]; }
ok "filler runs" wait_for 60 filler_runs
prio() {
	local body
	body=$(jq -nc --arg n "$1" --argjson p "$2" --arg img "$image" '{name: $n, image_reference: $img,
		run_commands: ["/bin/sh", "-c", "sleep 1"], scale_cpu_limit: "1", scale_memory_limit: "2G",
		scale_array_spec: "0-1", priority: $p}')
	api POST "/v1/projects/$LOOM_PROJECT/job_runs" "$body"
	is "$http_status" 201 "submit $1 (priority $2, two indices of 1 vCPU)" || diag "$http_body"
}
prio low 10
prio high 90
both_wait() {
	[ -n "$(run_field low '.status_details.waiting_reason // empty')" ] &&
		[ -n "$(run_field high '.status_details.waiting_reason // empty')" ]
}
ok "low and high wait for room" wait_for 20 both_wait
ok "cancel filler" loom jobrun cancel filler
ok "low ends" wait_for 90 run_over low || diag "$(run_json low)"
ok "high ends" wait_for 90 run_over high || diag "$(run_json high)"
order=$(sql "SELECT (SELECT max(i.created_at) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = 'high')
	< (SELECT min(i.created_at) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = 'low')")
is "$order" t "high's indices were all placed before any of low's"

# --- many reports at once --------------------------------------------------------------
# One loom.instance.reports request, by hand, for a running index: its
# failure and then its success (applied in that order, the success changes
# only the seq), a report with no valid id, one from another node, one that
# names no node (it once moved an app's address), a resend of an old seq, and
# one whose reason PostgreSQL cannot store (not UTF-8): it alone is refused.
# shellcheck disable=SC2016
out=$(loom jobrun submit --name batch --image "$image" --cpu 0.5 --memory 1G --cmd 'sleep 30' \
	--retrylimit 2 2>&1)
is "$?" 0 "submit batch (one index, sleep 30)" || diag "$out"
batch_runs() { [ "$(run_field batch .status_details.running)" = 1 ]; }
ok "batch runs" wait_for 60 batch_runs
bid=$(sql "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'batch'")
jq -nc --arg id "$bid" --arg node "$LOOM_NODE_NAME" '
	{instance_id: $id, node: $node, state: "failed", exit_code: 3, reason: "by hand", seq: 1000},
	{instance_id: $id, node: $node, state: "succeeded", exit_code: 0, seq: 1001},
	{instance_id: "not-a-uuid", node: $node, state: "running", seq: 1},
	{instance_id: $id, node: "elsewhere", state: "succeeded", seq: 1002},
	{instance_id: $id, node: "", state: "succeeded", seq: 1003},
	{instance_id: $id, node: $node, state: "running", seq: 5},
	{instance_id: $id, node: $node, state: "failed", reason: {hex: "ff"}, seq: 2000}' \
	>"$tmp/reports.jsonl"
acks=$(python3 "$(dirname "$0")/usage_helper.py" reports "$tmp/reports.jsonl" 2>&1)
is "$(head -n 6 <<<"$acks")" "ok
ok
refused: invalid instance id
refused: instance $bid is not on node \"elsewhere\"
refused: instance $bid is not on node \"\"
ok" "each report of the batch has its own Ack, in order (no node: refused)"
like "$(sed -n 7p <<<"$acks")" '^refused: .*UTF8' \
	"the report PostgreSQL cannot store is refused alone ($(wc -l <<<"$acks") Acks)"
is "$(sql "SELECT state, exit_code, reason, report_seq FROM instances WHERE id = '$bid'")" \
	"failed 3 by hand 1001" "the failure was applied first; the success after it moved only the seq"
is "$(sql "SELECT j.retries FROM job_run_indices j JOIN job_runs r ON r.id = j.run_id
	WHERE r.name = 'batch'")" 1 "the index counted the failure as a retry"
ok "cancel batch" loom jobrun cancel batch

cleanup_83
finish
