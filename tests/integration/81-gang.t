#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Gangs and daemon runs with real agents (three nodes on this machine): a
# gang of three (scale_nodes 3) is placed on three nodes at once with its
# ranks in the environment; a gang of four does not fit three nodes and
# places nothing; a gang whose one member fails restarts whole, counted as
# one retry; a daemon run is restarted past any retry limit; the bus away
# for longer than the node lease under a running array and a running gang:
# no index ever has two live copies.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# two CPUs per node: a member of two CPUs fills a node
export LOOM_AGENT_CPU_MILLIS=2000
# nodes lost after 6 s without heartbeats: agents' leases of about 3.4 s
export LOOM_SCHEDULER_NODE_TIMEOUT=6s
platform_up
image=$LOOM_REGISTRY/loom/busybox:latest

run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }
sql() { psql "$LOOM_PG_DSN" -XAtq -F' ' -c "$1" 2>&1; }
run_over() { local s; s=$(run_field "$1" .status); [ "$s" = completed ] || [ "$s" = failed ]; }
# gang NAME NODES CMD [EXTRA_JSON]: POST a run
gang() {
	local body x=${4:-}
	[ -n "$x" ] || x='{}'
	body=$(jq -nc --arg n "$1" --argjson k "$2" --arg cmd "$3" --arg img "$image" \
		--argjson x "$x" '{name: $n, image_reference: $img, scale_nodes: $k,
		run_commands: ["/bin/sh", "-c", $cmd], scale_cpu_limit: "2", scale_memory_limit: "4G"} + $x')
	api POST "/v1/projects/$LOOM_PROJECT/job_runs" "$body"
}

for k in 2 3; do
	out=$("$loom_dev" add-node "it$$-$k" 2>&1)
	is "$?" 0 "loom-dev add-node it$$-$k" || diag "$out"
done
three_ready() { [ "$(sql "SELECT count(*) FROM nodes WHERE state = 'ready'")" = 3 ]; }
ok "three nodes are ready" wait_for 20 three_ready

# --- a gang of three ---------------------------------------------------------------
# shellcheck disable=SC2016 # for the container's shell
gang trio 3 'echo "rank $RANK/$WORLD_SIZE loom $LOOM_RANK/$LOOM_WORLD_SIZE master $MASTER_ADDR:$MASTER_PORT"; sleep 2'
is "$http_status" 201 "submit trio (scale_nodes 3)" || diag "$http_body"
ok "trio ends" wait_for 60 run_over trio || diag "$(run_json trio)"
is "$(run_field trio .status)" completed "trio: completed"
members=$(sql "SELECT count(*), count(DISTINCT i.node_name), string_agg(i.rank::text, ',' ORDER BY i.rank),
	count(DISTINCT i.created_at) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'trio'")
is "$members" "3 3 0,1,2 1" "trio: three members, ranks 0-2, on three nodes, placed in one transaction"
trio_logs() {
	logs=$(loom jobrun logs trio 2>&1)
	[ "$(grep -c 'rank [0-2]/3 loom [0-2]/3 master 127.0.0.1:29500' <<<"$logs")" -eq 3 ]
}
ok "trio: each member saw its rank, the world size and the master (RANK and LOOM_RANK)" \
	wait_for 20 trio_logs || diag "$logs"

# --- all or none: four members cannot fit three nodes ----------------------------------
gang quartet 4 'true'
is "$http_status" 201 "submit quartet (scale_nodes 4)" || diag "$http_body"
waits() { [ -n "$(run_field quartet '.status_details.waiting_reason // empty')" ]; }
ok "quartet waits" wait_for 15 waits
like "$(run_field quartet .status_details.waiting_reason)" 'gang' \
	"quartet: the waiting reason names the gang ($(run_field quartet .status_details.waiting_reason))"
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'quartet'")" 0 "quartet: no member was placed"
ok "cancel quartet" loom jobrun cancel quartet

# --- one member fails: the gang restarts whole, one retry ---------------------------------
# shellcheck disable=SC2016
gang phoenix 3 'if [ "$RANK" = 1 ] && [ "$JOB_INDEX_RETRY_COUNT" = 0 ]; then sleep 1; exit 5; fi; sleep 3' \
	'{"scale_retry_limit": 2}'
is "$http_status" 201 "submit phoenix (rank 1 fails on the first try)" || diag "$http_body"
ok "phoenix ends" wait_for 90 run_over phoenix || diag "$(run_json phoenix)"
is "$(run_field phoenix .status)" completed "phoenix: completed on its second try"
tries=$(sql "SELECT i.retry, string_agg(i.rank || ':' || i.state, ',' ORDER BY i.rank) FROM instances i
	JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'phoenix' GROUP BY i.retry ORDER BY i.retry")
is "$tries" "0 0:stopped,1:failed,2:stopped
1 0:succeeded,1:succeeded,2:succeeded" \
	"phoenix: the first gang stopped when rank 1 failed; the second succeeded whole"
is "$(run_field phoenix '.status_details.indices_details[0].retries')" 1 \
	"phoenix: the restart counted as one retry"

# --- the bus away past the node lease: no index runs twice at once ----------------------
# Each agent stops its job instances once no scheduler has answered its
# heartbeats for its lease; the scheduler declares the nodes lost only later,
# and places the indices again when the bus is back. The containers mark
# their own lives: a line every 200 ms, stamped by the shim as it reads it.
# shellcheck disable=SC2016
out=$(loom jobrun submit --name blip --image "$image" --cpu 0.5 --memory 1G --array-indices 0-3 \
	--cmd 'for i in $(seq 60); do echo "alive $JOB_INDEX"; sleep 0.2; done' 2>&1)
is "$?" 0 "jobrun submit blip (4 indices of 12 s)" || diag "$out"
# shellcheck disable=SC2016
gang blipgang 2 'for i in $(seq 60); do echo "alive $RANK"; sleep 0.2; done'
is "$http_status" 201 "submit blipgang (scale_nodes 2, 12 s)" || diag "$http_body"
blip_running() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name IN ('blip', 'blipgang') AND i.state = 'running'")" = 6 ]
}
ok "blip's 4 indices and blipgang's 2 members run" wait_for 60 blip_running
sleep 1
ok "kill -9 nats-server" halt nats KILL
all_lost() { [ "$(sql "SELECT count(*) FROM nodes WHERE state = 'lost'")" = 3 ]; }
ok "the scheduler declares the three nodes lost" wait_for 30 all_lost
unhalt nats
ok "blip ends" wait_for 120 run_over blip || diag "$(run_json blip)"
ok "blipgang ends" wait_for 120 run_over blipgang || diag "$(run_json blipgang)"
is "$(run_field blip .status)" completed "blip: completed"
is "$(run_field blipgang .status)" completed "blipgang: completed"
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'blip' AND i.state = 'succeeded'")" 4 "blip: each index succeeded once"
is "$(sql "SELECT max(retries) FROM job_run_indices j JOIN job_runs r ON r.id = j.run_id
	WHERE r.name IN ('blip', 'blipgang')")" 0 "blip, blipgang: the lost bus used no retry"
placed=$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name IN ('blip', 'blipgang')")
ok "the lost indices and the gang were placed again ($placed instances for 6)" test "$placed" -ge 12
fenced=$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name IN ('blip', 'blipgang') AND i.reason LIKE 'node lease expired%'")
ok "the agents stopped their instances when the lease ran out ($fenced)" test "$fenced" -ge 6
# every line of the ones that ran to the end is stored: the others' are too
shipped() {
	[ "$(sql "SELECT count(*) FROM log_lines l JOIN instances i ON i.id = l.instance_id
		JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name IN ('blip', 'blipgang') AND i.state = 'succeeded'")" = 360 ]
}
ok "the lines of the copies that finished are stored" wait_for 30 shipped
life="WITH life AS (SELECT l.instance_id AS id, min(l.ts) AS b, max(l.ts) AS e FROM log_lines l
	  GROUP BY 1),
	x AS (SELECT i.id, i.job_run_id, i.array_index, i.rank, i.gang, life.b, life.e
	  FROM instances i JOIN job_runs r ON r.id = i.job_run_id JOIN life ON life.id = i.id
	  WHERE r.name IN ('blip', 'blipgang'))"
diag "$(sql "$life SELECT array_index, rank, left(id::text, 8), b::time, e::time FROM x
	ORDER BY job_run_id, array_index, b")"
twice=$(sql "$life SELECT count(*) FROM x a JOIN x b ON a.job_run_id = b.job_run_id
	AND a.array_index = b.array_index AND a.id < b.id
	AND (a.gang IS NULL OR a.gang <> b.gang) AND a.b <= b.e AND b.b <= a.e")
is "$twice" 0 "no index and no gang had two live copies at once (from the containers' own lines)"

# --- daemon: restarted without limit -----------------------------------------------------
# shellcheck disable=SC2016
body=$(jq -nc --arg img "$image" '{name: "demon", image_reference: $img, run_mode: "daemon",
	run_commands: ["/bin/sh", "-c", "exit 1"], scale_cpu_limit: "0.5", scale_memory_limit: "1G"}')
api POST "/v1/projects/$LOOM_PROJECT/job_runs" "$body"
is "$http_status" 201 "submit demon (daemon mode, exits 1)" || diag "$http_body"
restarts() { [ "$(run_field demon '.status_details.indices_details[0].retries')" -ge 4 ] 2>/dev/null; }
ok "demon is restarted past the default retry limit of 3" wait_for 40 restarts ||
	diag "$(run_json demon)"
is "$(run_field demon .status)" running "demon: still running"
ok "cancel demon" loom jobrun cancel demon

finish
