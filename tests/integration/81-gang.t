#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Gangs and daemon runs with real agents (three nodes on this machine): a
# gang of three (scale_nodes 3) is placed on three nodes at once with its
# ranks in the environment; a gang of four does not fit three nodes and
# places nothing; a gang whose one member fails restarts whole, counted as
# one retry; a daemon run is restarted past any retry limit.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# two CPUs per node: a member of two CPUs fills a node
export LOOM_AGENT_CPU_MILLIS=2000
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
