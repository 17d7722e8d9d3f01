#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# The scheduler with real agents (two nodes on this machine): per-index
# retries of a sparse array, the parallelism cap checked from the instance
# records, the max execution time, resubmit of the failed indices, a node
# whose health script fails drained and back once healthy, an agent killed
# mid-run, and the leading scheduler killed mid-run with a standby.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# two CPUs per node, one per index
export LOOM_AGENT_CPU_MILLIS=2000
# a node drained for its health is ready again after 3 s healthy
export LOOM_SCHEDULER_HEALTH_SETTLE=3s
platform_up
node2=it$$-2
image=$LOOM_REGISTRY/loom/busybox:latest
sched2_pid=

stop_standby() {
	[ -n "$sched2_pid" ] && kill -TERM "$sched2_pid" 2>/dev/null && wait "$sched2_pid" 2>/dev/null
	sched2_pid=
}

run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }
sql() { psql "$LOOM_PG_DSN" -XAtq -F' ' -c "$1" 2>&1; }
run_over() { local s; s=$(run_field "$1" .status); [ "$s" = completed ] || [ "$s" = failed ]; }
# the most instances of run $1 whose [started_at, finished_at) overlap
max_overlap() {
	sql "SELECT coalesce(max(c), 0) FROM (SELECT (SELECT count(*) FROM instances j
		WHERE j.job_run_id = i.job_run_id AND j.started_at IS NOT NULL
		  AND j.started_at <= i.started_at AND coalesce(j.finished_at, 'infinity') > i.started_at) c
		FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = '$1' AND i.started_at IS NOT NULL) x"
}

# node 2's agent runs an operator's health script every second
health=$tmp/health.sh
printf '#!/bin/sh\nexit 0\n' >"$health"
chmod +x "$health"
out=$(LOOM_AGENT_HEALTH_SCRIPT=$health LOOM_AGENT_HEALTH_INTERVAL=1s "$loom_dev" add-node "$node2" 2>&1)
is "$?" 0 "loom-dev add-node $node2" || diag "$out"
nodes_ready() {
	nodes=$("$bin/loom-admin" nodes list 2>/dev/null)
	grep -qE "^$LOOM_NODE_NAME +ready" <<<"$nodes" && grep -qE "^$node2 +ready" <<<"$nodes"
}
ok "both nodes are ready" wait_for 15 nodes_ready || diag "$nodes"

# --- a sparse array: 3 and 20 fail every time ---------------------------------------
# shellcheck disable=SC2016 # for the container's shell
out=$(loom jobrun submit --name sparse --image "$image" --cpu 1 --memory 2G \
	--cmd 'case $JOB_INDEX in 3|20) echo fail; exit 7;; esac; sleep 1' \
	--array-indices 0-4,20,30-32 --retrylimit 2 --parallelism 3 2>&1)
is "$?" 0 "jobrun submit sparse (0-4,20,30-32, retrylimit 2, parallelism 3)" || diag "$out"
waiting=
saw_parallelism() {
	[ "$(run_field sparse .status_details.waiting_reason)" = parallelism ] && waiting=1
	run_over sparse
}
ok "sparse ends" wait_for 120 saw_parallelism || diag "$(run_json sparse)"
is "$(run_field sparse .status)" failed "sparse: the run failed (two indices failed)"
is "$(run_field sparse .status_details.failed_indices)" "3,20" "sparse: failed indices are 3,20"
is "$(run_field sparse .status_details.succeeded_indices)" "0-2,4,30-32" \
	"sparse: the other indices succeeded"
tries=$(sql "SELECT i.array_index, count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'sparse' GROUP BY 1 ORDER BY 1" | paste -sd, -)
is "$tries" "0 1,1 1,2 1,3 3,4 1,20 3,30 1,31 1,32 1" \
	"sparse: failing indices ran 1 + retrylimit times, the others once"
is "$(run_field sparse '[.status_details.indices_details[] | select(.index == 3) | .retries][0]')" \
	2 "sparse: index 3 used its 2 retries"
retry_env=$(sql "SELECT string_agg(retry::text, ',' ORDER BY retry) FROM instances i
	JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'sparse' AND array_index = 20")
is "$retry_env" "0,1,2" "sparse: index 20's instances carried retry 0, 1, 2"
overlap=$(max_overlap sparse)
ok "sparse: never more than 3 running at once (instance records: $overlap)" test "$overlap" -le 3
ok "sparse: the run waited for parallelism at some point" test -n "$waiting"
gaps=$(sql "SELECT min(extract(epoch FROM b.created_at - a.finished_at) * 1000)::int
	FROM instances a JOIN instances b ON b.job_run_id = a.job_run_id
	AND b.array_index = a.array_index AND b.retry = a.retry + 1
	JOIN job_runs r ON r.id = a.job_run_id WHERE r.name = 'sparse'")
ok "sparse: a retry waits its backoff (shortest gap ${gaps} ms >= 400)" test "${gaps:-0}" -ge 400

# --- resubmit reruns only the failed indices --------------------------------------
out=$(loom jobrun resubmit sparse --name sparse2 2>&1)
is "$?" 0 "jobrun resubmit sparse --name sparse2" || diag "$out"
ok "sparse2 ends" wait_for 90 run_over sparse2 || diag "$(run_json sparse2)"
idx=$(sql "SELECT string_agg(DISTINCT array_index::text, ',') FROM instances i
	JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'sparse2'")
is "$idx" "20,3" "sparse2 ran indices 3 and 20 only" ||
	is "$idx" "3,20" "sparse2 ran indices 3 and 20 only"

# --- max execution time ----------------------------------------------------------
out=$(loom jobrun submit --name slow --image "$image" --cpu 1 --memory 2G --cmd 'sleep 60' \
	--maxexecutiontime 2 --retrylimit 1 2>&1)
is "$?" 0 "jobrun submit slow (sleep 60, max 2 s, retrylimit 1)" || diag "$out"
ok "slow ends" wait_for 60 run_over slow || diag "$(run_json slow)"
is "$(run_field slow .status)" failed "slow: failed"
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'slow'")" 2 "slow: killed, retried once, killed again"
like "$(run_field slow '.status_details.indices_details[0].last_failure_reason')" \
	'time|execution' "slow: the reason says it ran out of time"
secs=$(sql "SELECT max(extract(epoch FROM i.finished_at - i.started_at))::int FROM instances i
	JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'slow'")
# SIGTERM at 2 s; `sleep` as PID 1 ignores it, so SIGKILL follows the shim's 10 s grace
ok "slow: no try lasted past 2 s + the 10 s kill grace (longest ${secs} s)" test "${secs:-99}" -le 14

# --- a node whose health checks fail is drained; back once healthy ------------------
node_row() { sql "SELECT state, coalesce(cordoned_by, '-'), coalesce(health_problem, '-') FROM nodes
	WHERE name = '$node2'"; }
# shellcheck disable=SC2016
out=$(loom jobrun submit --name sickbay --image "$image" --cpu 1 --memory 2G \
	--cmd 'sleep 8' --array-indices 0-3 2>&1)
is "$?" 0 "jobrun submit sickbay (4 indices of 8 s on 2 nodes of 2 CPUs)" || diag "$out"
sick_on_node2() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = 'sickbay' AND i.node_name = '$node2' AND i.state = 'running'")" -gt 0 ]
}
ok "sickbay runs on $node2" wait_for 30 sick_on_node2
printf '#!/bin/sh\necho "gpu 3 fell off the bus" >&2\nexit 1\n' >"$health"
drained() { [ "$(node_row | cut -d' ' -f1-2)" = "draining health" ]; }
ok "$node2 is drained by its health checks" wait_for 20 drained || diag "$(node_row)"
like "$(node_row)" 'health script: .* exited with status 1: gpu 3 fell off the bus' \
	"the node's row says what the health script said"
like "$("$bin/loom-admin" nodes list 2>&1 | grep "^$node2 ")" \
	'gpu 3 fell off the bus \(draining by health\)' "loom-admin nodes list shows why $node2 is out"
ok "sickbay completes" wait_for 90 run_over sickbay || diag "$(run_json sickbay)"
is "$(run_field sickbay .status)" completed "sickbay: completed"
moved=$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'sickbay' AND i.node_name = '$node2' AND i.state = 'stopped'
	AND i.reason LIKE 'node unhealthy: health script:%gpu 3 fell off the bus'")
ok "sickbay: the indices on $node2 were stopped, the reason says why ($moved)" test "$moved" -ge 1
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'sickbay' AND i.state = 'succeeded' AND i.node_name = '$LOOM_NODE_NAME'")" 4 \
	"sickbay: every index succeeded on $LOOM_NODE_NAME (none on the drained node)"
is "$(sql "SELECT max(retries) FROM job_run_indices j JOIN job_runs r ON r.id = j.run_id
	WHERE r.name = 'sickbay'")" 0 "sickbay: moving off a sick node used no retry"
printf '#!/bin/sh\nexit 0\n' >"$health"
well() { [ "$(node_row)" = "ready - -" ]; }
ok "$node2 is ready again once healthy for 3 s" wait_for 30 well || diag "$(node_row)"
# an operator's cordon is the operator's: health does not lift it
ok "loom-admin nodes cordon $node2" "$bin/loom-admin" nodes cordon "$node2"
sleep 5
is "$(node_row)" "cordoned operator -" "$node2 stays cordoned by the operator while healthy"
ok "loom-admin nodes uncordon $node2" "$bin/loom-admin" nodes uncordon "$node2"
is "$(node_row)" "ready - -" "$node2 is ready after the operator's uncordon"

# --- an agent killed mid-run -------------------------------------------------------
# shellcheck disable=SC2016
out=$(loom jobrun submit --name survive --image "$image" --cpu 1 --memory 2G \
	--cmd 'sleep 4' --array-indices 0-3 2>&1)
is "$?" 0 "jobrun submit survive (4 indices of 4 s on 2 nodes of 2 CPUs)" || diag "$out"
on_node2() {
	n2=$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = 'survive' AND i.node_name = '$node2' AND i.state = 'running'")
	[ "$n2" -gt 0 ]
}
ok "survive runs on $node2" wait_for 30 on_node2
agent2=$(cat "$LOOM_HOME/nodes/$node2/run/agent.pid" 2>/dev/null)
ok "kill -9 $node2's agent (pid $agent2)" kill -KILL "$agent2"
ok "survive completes" wait_for 90 run_over survive || diag "$(run_json survive)"
is "$(run_field survive .status)" completed "survive: completed"
moved=$(sql "SELECT count(*) FROM instances a JOIN instances b ON b.job_run_id = a.job_run_id
	AND b.array_index = a.array_index AND b.node_name = '$LOOM_NODE_NAME' AND b.state = 'succeeded'
	JOIN job_runs r ON r.id = a.job_run_id
	WHERE r.name = 'survive' AND a.node_name = '$node2' AND a.state = 'lost'")
# count at the end: more indices may have started on node 2 before the kill
lost=$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'survive' AND i.node_name = '$node2' AND i.state = 'lost'")
ok "survive: some indices were lost with $node2 ($lost)" test "${lost:-0}" -ge 1
is "$moved" "$lost" "survive: every index lost with $node2 finished on $LOOM_NODE_NAME"
is "$(sql "SELECT max(retries) FROM job_run_indices j JOIN job_runs r ON r.id = j.run_id
	WHERE r.name = 'survive'")" 0 "survive: losing a node used no retry"

# --- the leading scheduler killed mid-run, a standby takes over ----------------------
LOOM_SCHEDULER_ADDR=127.0.0.1:0 setsid "$bin/loom-scheduler" \
	>>"$LOOM_HOME/logs/scheduler-standby.log" 2>&1 </dev/null &
sched2_pid=$!
sleep 1
# shellcheck disable=SC2016
out=$(loom jobrun submit --name failover --image "$image" --cpu 0.5 --memory 1G \
	--cmd 'sleep 2' --array-indices 0-9 --parallelism 3 2>&1)
is "$?" 0 "jobrun submit failover (10 indices of 2 s, parallelism 3)" || diag "$out"
started() { [ "$(run_field failover .status_details.running)" -gt 0 ] 2>/dev/null; }
ok "failover starts" wait_for 30 started
holder=$(sql "SELECT holder FROM leases WHERE name = 'scheduler'")
epoch=$(sql "SELECT epoch FROM leases WHERE name = 'scheduler'")
leader=$(cut -d: -f2 <<<"$holder")
if [ "$leader" = "$(cat "$LOOM_HOME/run/scheduler.pid")" ] || [ "$leader" = "$sched2_pid" ]; then
	ok "kill -9 the leader (pid $leader, epoch $epoch)" kill -KILL "$leader"
else
	fail "the lease holder ($holder) is one of this test's schedulers"
	leader=
fi
[ "$leader" = "$sched2_pid" ] && sched2_pid=
ok "failover completes" wait_for 120 run_over failover || diag "$(run_json failover)"
is "$(run_field failover .status)" completed "failover: completed"
ok "the lease moved to a new epoch ($(sql "SELECT epoch FROM leases WHERE name = 'scheduler'"))" \
	test "$(sql "SELECT epoch FROM leases WHERE name = 'scheduler'")" -gt "$epoch"
twice=$(sql "SELECT count(*) FROM instances a JOIN instances b ON a.job_run_id = b.job_run_id
	AND a.array_index = b.array_index AND a.id < b.id JOIN job_runs r ON r.id = a.job_run_id
	WHERE r.name = 'failover' AND a.state <> 'lost' AND b.state <> 'lost'
	AND tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)")
is "$twice" 0 "failover: no index ran twice at the same time"
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'failover' AND i.state = 'succeeded'")" 10 "failover: each index succeeded once"
overlap=$(max_overlap failover)
ok "failover: never more than 3 running at once ($overlap)" test "$overlap" -le 3
stop_standby

finish
