#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Two nodes: `loom-dev add-node` starts a second agent + logshipper as another
# machine would run them; the scheduler places an array job on both, each
# node's logshipper ships its instances' output, and `down` removes both.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# two CPUs per node, one per index: six indices cannot all fit on one node
export LOOM_AGENT_CPU_MILLIS=2000
platform_up
node2=it$$-2

out=$("$loom_dev" add-node "$node2" 2>&1)
is "$?" 0 "loom-dev add-node $node2" || diag "$out"

nodes_ready() {
	nodes=$("$bin/loom-admin" nodes list 2>/dev/null)
	grep -qE "^$LOOM_NODE_NAME +ready" <<<"$nodes" && grep -qE "^$node2 +ready" <<<"$nodes"
}
ok "both nodes are registered and ready" wait_for 15 nodes_ready || diag "$nodes"

status=$("$loom_dev" status 2>&1)
like "$status" "^$node2/agent +[0-9]+ .* running +200" "status lists the second node's agent"

# shellcheck disable=SC2016 # for the container's shell
out=$(loom jobrun submit --name spread --image "$LOOM_REGISTRY/loom/busybox:latest" --cpu 1 \
	--cmd 'echo "index $JOB_INDEX"; sleep 2' --array-indices 0-5 2>&1)
is "$?" 0 "jobrun submit spread (6 indices)" || diag "$out"
done_() { [ "$(loom jobrun get spread -o json 2>/dev/null | jq -r .status)" = completed ]; }
ok "spread completes" wait_for 90 done_ || diag "$(loom jobrun get spread -o json 2>&1)"
diag "6 indices of 2 s on 2 nodes of 2 CPUs: $(seconds "$waited_ms") s"

per_node=$(psql "$LOOM_PG_DSN" -AtF' ' -c "SELECT node_name, count(*) FROM instances
	WHERE kind = 'job' GROUP BY node_name ORDER BY node_name" 2>&1)
diag "instances per node: $(paste -sd, <<<"$per_node")"
like "$per_node" "^$LOOM_NODE_NAME [1-9]" "node $LOOM_NODE_NAME ran part of the job"
like "$per_node" "^$node2 [1-9]" "node $node2 ran part of the job"

all_logs() {
	logs=$(loom jobrun logs spread 2>&1)
	[ "$(grep -c 'index [0-5]' <<<"$logs")" -eq 6 ]
}
ok "the logs of all six indices arrive (both logshippers)" wait_for 15 all_logs || diag "$logs"

# --- drain: an app's instance moves to the other node without a gap -------------
out=$(loom app create moving --image "$LOOM_REGISTRY/loom/busybox:latest" \
	--cmd 'httpd -f -p 8080 -h /etc' --port 8080 --min-scale 1 --max-scale 1 --cpu 0.125 \
	--memory 256M 2>&1)
is "$?" 0 "app create moving (1 instance)" || diag "$out"
sql() { psql "$LOOM_PG_DSN" -XAtq -F' ' -c "$1" 2>&1; }
moving_on() {
	from=$(sql "SELECT i.node_name FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'moving' AND i.state = 'running' AND i.desired = 'run'")
	[ -n "$from" ] && { [ -z "${1:-}" ] || [ "$from" = "$1" ]; }
}
ok "moving: an instance runs" wait_for 60 moving_on
first=$from
other=$node2
[ "$first" != "$node2" ] || other=$LOOM_NODE_NAME
ok "loom-admin nodes drain $first" "$bin/loom-admin" nodes drain "$first"
ok "moving: the instance now runs on $other" wait_for 60 moving_on "$other"
left_drained() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'moving' AND i.node_name = '$first'
		AND i.state IN ('assigned','pulling','starting','running')")" = 0 ]
}
ok "moving: nothing of it is left on $first" wait_for 60 left_drained
gapless=$(sql "SELECT (SELECT min(i.started_at) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'moving' AND i.node_name = '$other')
	<= (SELECT max(i.finished_at) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'moving' AND i.node_name = '$first')")
is "$gapless" t "moving: the replacement ran before the drained instance ended"
ok "loom-admin nodes uncordon $first" "$bin/loom-admin" nodes uncordon "$first"

finish
