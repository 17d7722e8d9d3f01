#!/usr/bin/env bash
# The scheduler's figures through the whole path (API, scheduler, PostgreSQL,
# NATS, the simulated agents' reports), on platforms of its own started with
# `tools/loom-dev up --simulate-nodes N`. Every figure is measured with
# PostgreSQL durable (LOOM_DEV_PG_DURABILITY=durable: fsync, synchronous_commit
# and full_page_writes on, read back with pg_settings); the placement rates
# are measured again in the dev platform's fast mode (all three off), beside.
#   - placements/s (instance rows committed) with 1,000 and 10,000 simulated
#     nodes: an array of PLACE indices that all fit, POST to the last row
#   - a million indices placed: a BENCH_MILLION-index array of simulated
#     `sleep 3600` on BENCH_MILLION_NODES nodes, which hold all of it at once
#     (256 such indices a node), POST to the last instance row (all placed),
#     and how many of them were reported running by then
#   - API time to submit a one-million-index array that fits no node (curl's
#     time_total): the run is stored as one row and nothing is placed, so
#     this is the API's validation and insert only
#   - a 10,000-index array with room for all of it: submit to fully placed
#   - node loss to replacements placed: kill -9 a second simulated agent
#     whose nodes hold a run's indices
#   - leader failover: kill -9 the leading scheduler with a standby running,
#     until the standby has placed new work
# Prints a table with the issue's anchors; never fails on a time.
#   tests/bench/scheduler.sh [PLACE]      (default 20000)
#   BENCH_MILLION (1000000) and BENCH_MILLION_NODES (5000) size the million;
#   BENCH_FAST=0 skips the fast-mode runs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${LOOM_BUILD:-build}
case "$build" in /*) bin=$build/bin ;; *) bin=$repo/$build/bin ;; esac
place_n=${1:-20000}
million=${BENCH_MILLION:-1000000}
million_nodes=${BENCH_MILLION_NODES:-5000}
with_fast=${BENCH_FAST:-1}
loom_dev=$repo/tools/loom-dev

export LOOM_HOME
LOOM_HOME=$(mktemp -d /tmp/loom-bench.XXXXXX)
n=$(($$ % 1000))
export LOOM_NODE_NAME=bsch$$ LOOM_AGENT_BRIDGE=lbs$n LOOM_AGENT_CGROUP_PARENT=loom-bsch$$
export LOOM_AGENT_SUBNET=10.$((94 + n / 250)).$((n % 250)).0/24
export XDG_CONFIG_HOME=$LOOM_HOME/config LOOM_BUILD=$build
# nodes lost after 5 s of silence (the default is 10 s, which adds 5 s to the
# node-loss figure; the simulated agents take no node lease)
export LOOM_SCHEDULER_NODE_TIMEOUT=${LOOM_SCHEDULER_NODE_TIMEOUT:-5s}
# no function runtimes (loom-dev builds them by default): nothing here runs functions
export LOOM_DEV_RUNTIMES=${LOOM_DEV_RUNTIMES:-none}
export PATH=$bin:$PATH
extra_pids=()
cleanup() {
	local p
	for p in "${extra_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	"$loom_dev" down >/dev/null 2>&1 || true
	rm -rf --one-file-system "$LOOM_HOME"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
sql() { psql "$LOOM_PG_DSN" -XAtq -c "$1"; }
say() { echo "# $*" >&2; }

# up NODES MODE: a platform of NODES simulated nodes, PostgreSQL in MODE
# (durable or fast); durable_pg / fast_pg: what PostgreSQL itself reports
up() {
	local t0 pg
	t0=$(now_ms)
	LOOM_DEV_PG_DURABILITY=$2 "$loom_dev" up --simulate-nodes "$1" >"$LOOM_HOME/up-$1-$2.out" 2>&1 ||
		{ cat "$LOOM_HOME/up-$1-$2.out" >&2; exit 1; }
	eval "$("$loom_dev" env)"
	pg=$(sql "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
		WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')")
	say "up with $1 simulated nodes in $(($(now_ms) - t0)) ms, PostgreSQL $2: $pg"
	if [ "$2" = durable ]; then durable_pg=$pg; else fast_pg=$pg; fi
}
down() { "$loom_dev" down >/dev/null 2>&1 || true; }

# run_id NAME
run_id() { sql "SELECT id FROM job_runs WHERE name = '$1'"; }

# submit NAME SPEC CPU CMD [PARALLELISM] [EXTRA_JSON]: POST a run, prints the
# API's ms. CPU picks a Code Engine shape (the API takes only those):
# 0.125 -> 256M, 1 -> 2G.
submit() {
	local body mem
	case $3 in 0.125) mem=256M ;; 1) mem=2G ;; *) say "no shape for cpu $3"; return 1 ;; esac
	body=$(jq -nc --arg n "$1" --arg a "$2" --arg c "$3" --arg m "$mem" --arg cmd "$4" \
		--argjson p "${5:-0}" --argjson x "${6:-"{}"}" \
		'{name: $n, image_reference: "127.0.0.1:1/sim:1", run_commands: ["/bin/sh", "-c", $cmd],
		  scale_array_spec: $a, scale_cpu_limit: $c, scale_memory_limit: $m,
		  scale_retry_limit: 0, parallelism: $p} + $x')
	curl -sS -m 30 -o "$LOOM_HOME/submit.out" -w '%{http_code} %{time_total}\n' \
		-H "Authorization: Bearer $LOOM_KEY" -H 'Content-Type: application/json' \
		--data-binary "$body" "$LOOM_API/v1/projects/$LOOM_PROJECT/job_runs" >"$LOOM_HOME/submit.w"
	read -r code secs <"$LOOM_HOME/submit.w"
	[ "${code:0:1}" = 2 ] || { say "submit $1: HTTP $code $(cat "$LOOM_HOME/submit.out")"; return 1; }
	awk -v s="$secs" 'BEGIN { printf "%.1f\n", s * 1000 }'
}

# wait_count SQL WANT SECONDS [INTERVAL]: polls (every INTERVAL s, 0.02)
# until SQL's count reaches WANT; prints the ms waited, or "-" on time out
wait_count() {
	local t0 got
	t0=$(now_ms)
	while :; do
		got=$(sql "$1")
		[ "$got" -ge "$2" ] && { echo $(($(now_ms) - t0)); return 0; }
		[ $(($(now_ms) - t0)) -lt $(($3 * 1000)) ] || { say "timed out at $got of $2"; echo -; return 0; }
		sleep "${4:-0.02}"
	done
}

rate() { [ "$2" = - ] && echo - || awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.0f\n", n * 1000 / ms }'; }

# placements NAME COUNT: an array of COUNT indices that all fit, placed
placements() {
	local t0 ms id
	t0=$(now_ms)
	submit "$1" "0-$(($2 - 1))" 0.125 'sleep 3600' >/dev/null
	id=$(run_id "$1")
	ms=$(wait_count "SELECT count(*) FROM instances WHERE job_run_id = $id" "$2" 120)
	[ "$ms" = - ] || ms=$(($(now_ms) - t0))
	echo "$ms"
}

# --- 1,000 simulated nodes, durable -----------------------------------------------
up 1000 durable
p1k_ms=$(placements place1k "$place_n")
p1k=$(rate "$place_n" "$p1k_ms")
say "1k nodes: $place_n placed in $p1k_ms ms"

t0=$(now_ms)
submit a10k 0-9999 0.125 'sleep 3600' >/dev/null
a10k_ms=$(wait_count "SELECT count(*) FROM instances WHERE job_run_id = $(run_id a10k)" 10000 60)
[ "$a10k_ms" = - ] || a10k_ms=$(($(now_ms) - t0))
say "10k-index array fully placed in $a10k_ms ms"

# completions: the same size of array, each index a simulated `true` that
# ends at once, from the POST to the run completed (every index's RUNNING and
# SUCCEEDED reports applied and the run settled)
completed() {
	local t0 ms state
	t0=$(now_ms)
	submit "$1" 0-9999 0.125 'true' >/dev/null
	ms=$(wait_count "SELECT count(*) FROM job_runs WHERE name = '$1'
		AND state IN ('completed', 'failed')" 1 300)
	[ "$ms" = - ] || ms=$(($(now_ms) - t0))
	state=$(sql "SELECT state || ' (' || n_succeeded || ' succeeded, ' || n_running || ' running, '
		|| n_failed || ' failed)' FROM job_runs WHERE name = '$1'")
	say "$1: $state"
	case $state in completed*) echo "$ms" ;; *) echo "- (${state%% *})" ;; esac
}
c1k_ms=$(completed c1k)
say "10k-index array of true completed in $c1k_ms ms (1k nodes)"

# a million indices that fit nowhere (a node selector no node matches): the
# run is one row and nothing is placed, so only the API's work counts
m1=()
for i in 1 2 3; do
	m1+=("$(submit "million$i" 0-999999 0.125 'true' 0 '{"node_selector": {"bench": "nowhere"}}')")
	loom jobrun cancel "million$i" >/dev/null 2>&1 || true
done
m1_ms=$(printf '%s\n' "${m1[@]}" | sort -n | sed -n 2p)
say "1M-index submit (API time): ${m1[*]} ms (median $m1_ms)"

# node loss: a second simulated agent; its nodes alone take a run (the first
# agent's nodes are cordoned meanwhile), then it dies
LOOM_NODE_NAME=bsl$$ LOOM_AGENT_STATE_DIR=$LOOM_HOME/lossagent LOOM_AGENT_ADDR=127.0.0.1:0 \
	setsid "$bin/loom-agent" --simulate 20 >"$LOOM_HOME/logs/lossagent.log" 2>&1 </dev/null &
loss_pid=$!
extra_pids+=("$loss_pid")
wait_count "SELECT count(*) FROM nodes WHERE name LIKE 'bsl$$-sim-%' AND state = 'ready'" 20 30 >/dev/null
sql "UPDATE nodes SET state = 'cordoned' WHERE name LIKE '$LOOM_NODE_NAME-sim-%'"
sleep 1.2 # the leader's node pool is at most 1 s old
submit victim 0-199 1 'sleep 3600' >/dev/null
vid=$(run_id victim)
wait_count "SELECT count(*) FROM instances WHERE job_run_id = $vid" 200 30 >/dev/null
sql "UPDATE nodes SET state = 'ready' WHERE name LIKE '$LOOM_NODE_NAME-sim-%'"
on_lost=$(sql "SELECT count(*) FROM instances WHERE job_run_id = $vid AND node_name LIKE 'bsl$$-%'")
sleep 1.2
t0=$(now_ms)
kill -KILL "$loss_pid"
wait "$loss_pid" 2>/dev/null || true
loss_ms=$(wait_count "SELECT count(*) FROM instances WHERE job_run_id = $vid
	AND node_name NOT LIKE 'bsl$$-%' AND state <> 'lost'" "$on_lost" 60)
[ "$loss_ms" = - ] || loss_ms=$(($(now_ms) - t0))
say "node loss: $on_lost indices replaced in $loss_ms ms"

# leader failover: a standby replica, then kill -9 the leader
LOOM_SCHEDULER_ADDR=127.0.0.1:0 setsid "$bin/loom-scheduler" >"$LOOM_HOME/logs/scheduler2.log" \
	2>&1 </dev/null &
extra_pids+=("$!")
sleep 2
holder=$(sql "SELECT holder FROM leases WHERE name = 'scheduler'")
old_epoch=$(sql "SELECT epoch FROM leases WHERE name = 'scheduler'")
leader_pid=$(cut -d: -f2 <<<"$holder")
t0=$(now_ms)
kill -KILL "$leader_pid"
wait "$leader_pid" 2>/dev/null || true
submit afterfail 0-99 0.125 'sleep 3600' >/dev/null
fo_ms=$(wait_count "SELECT count(*) FROM instances WHERE job_run_id = $(run_id afterfail)
	AND epoch > $old_epoch" 100 60)
[ "$fo_ms" = - ] || fo_ms=$(($(now_ms) - t0))
say "failover: new epoch $(sql "SELECT epoch FROM leases WHERE name = 'scheduler'"), placing in $fo_ms ms"
for p in "${extra_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
extra_pids=()
down

# --- 10,000 simulated nodes, durable ------------------------------------------------
up 10000 durable
p10k_ms=$(placements place10k "$place_n")
p10k=$(rate "$place_n" "$p10k_ms")
say "10k nodes: $place_n placed in $p10k_ms ms"
c10k_ms=$(completed c10k)
say "10k-index array of true completed in $c10k_ms ms (10k nodes)"
down

# --- the placement rates again, PostgreSQL fast (the dev default) -----------------------------
# right after the durable ones, so that both meet the machine in the same state
p1k_fast=- p10k_fast=- fast_pg="not measured (BENCH_FAST=0)"
if [ "$with_fast" != 0 ]; then
	up 1000 fast
	p1k_fast=$(rate "$place_n" "$(placements place1k "$place_n")")
	down
	up 10000 fast
	p10k_fast=$(rate "$place_n" "$(placements place10k "$place_n")")
	down
	say "fast mode: $p1k_fast/s with 1k nodes, $p10k_fast/s with 10k"
fi

# --- a million indices placed, durable --------------------------------------------------
# A run whose indices run for an hour on nodes with room for all of them: the
# scheduler places the whole array (simulated nodes only acknowledge and
# report, so this is the scheduler, PostgreSQL and NATS at that scale). The
# rows are counted once a second: a count over a million rows is work too.
up "$million_nodes" durable
t0=$(now_ms)
submit million "0-$((million - 1))" 0.125 'sleep 3600' >/dev/null
mid=$(run_id million)
mplaced_ms=$(wait_count "SELECT count(*) FROM instances WHERE job_run_id = $mid" "$million" 3600 1)
[ "$mplaced_ms" = - ] || mplaced_ms=$(($(now_ms) - t0))
mrate=$(rate "$million" "$mplaced_ms")
# the agents' RUNNING reports trail the placements: how far, at that moment
mrunning=$(sql "SELECT count(*) FROM instances WHERE job_run_id = $mid AND state = 'running'")
mnodes=$(sql "SELECT count(DISTINCT node_name) FROM instances WHERE job_run_id = $mid")
say "$million indices: all placed in $mplaced_ms ms ($mrate/s) on $mnodes nodes, $mrunning reported running then"
down

c15() { printf '%-15s' "$1"; }
c46() { printf '%-46s' "$1"; }
cat <<EOF

Loom scheduler, whole path (API, scheduler, PostgreSQL, NATS, simulated agents), $(nproc) CPUs
PostgreSQL durable: $durable_pg; fast (the dev default): $fast_pg
| figure                                         | durable         | fast (dev)      | target     | anchors                                   |
|------------------------------------------------|-----------------|-----------------|------------|-------------------------------------------|
| placements/s, 1,000 nodes                      | $(c15 "$p1k/s") | $(c15 "$p1k_fast/s") | >= 5,000/s | Nomad C1M 3,750/s; K8s 400 pods/s; Slurm 500 jobs/s |
| placements/s, 10,000 nodes                     | $(c15 "$p10k/s") | $(c15 "$p10k_fast/s") | >= 3,000/s | Nomad C2M 1,500/s                         |
| $(c46 "$million indices placed: placements/s") | $(c15 "$mrate/s") | $(c15 -) | -          | Nomad C1M: 1M containers in < 5 min       |
| $(c46 "$million indices: POST to all placed") | $(c15 "$mplaced_ms ms") | $(c15 -) | -          |                                           |
| $(c46 "$million indices: running when all placed") | $(c15 "$mrunning") | $(c15 -) | -          |                                           |
| submit 1,000,000-index array, API only         | $(c15 "$m1_ms ms") | $(c15 -) | < 100 ms   | Slurm "millions in milliseconds"          |
| 10,000-index array fully placed                | $(c15 "$a10k_ms ms") | $(c15 -) | < 2 s      | K8s 50k pods ~4.5 min                     |
| 10,000 trivial indices completed, 1,000 nodes  | $(c15 "$c1k_ms ms") | $(c15 -) | <= 1.5 s   | Slurm ~500 jobs/s                         |
| 10,000 trivial indices completed, 10,000 nodes | $(c15 "$c10k_ms ms") | $(c15 -) | <= 1.5 s   |                                           |
| node loss -> replacements placed               | $(c15 "$loss_ms ms") | $(c15 -) | < 8 s      | K8s ~5-6 min; Slurm 300 s; Nomad 20-30 s  |
| leader failover (kill -9) -> placing           | $(c15 "$fo_ms ms") | $(c15 -) | < 6 s      | Borg ~10 s; K8s lease 15 s; Slurm 120 s   |
What each figure includes:
- placements/s: $place_n indices of 0.125 vCPU + 256M that all fit (sleep 3600), from the POST to
  the last instance row committed.
- $million indices placed: one array of simulated 'sleep 3600', 0.125 vCPU + 256M each, on
  $million_nodes simulated nodes (room for all at once; $mnodes nodes used); placements/s is
  $million over POST to the last instance row; "running when all placed": the instances whose
  RUNNING report the scheduler had processed at that moment.
- submit 1,000,000-index array, API only: median of 3 POSTs (curl's time_total) of a run whose
  node selector no node matches: the API's validation and one row; nothing is placed.
- 10,000-index array: POST to the 10,000th instance row, on the 1,000 nodes.
- 10,000 trivial indices completed: an array of simulated 'true' (each index ends as soon as it
  runs), from the POST to the run's state 'completed': every placement, every RUNNING and
  SUCCEEDED report applied (the simulated agents send them many per request), every index
  settled; with the earlier runs' instances still in the tables.
- node loss: $on_lost indices on 20 nodes of a second simulated agent, kill -9 to all replaced,
  with LOOM_SCHEDULER_NODE_TIMEOUT=$LOOM_SCHEDULER_NODE_TIMEOUT (the default, 10 s, adds 5 s).
EOF
