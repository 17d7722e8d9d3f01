#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Placement and the assign contract with real agents (two nodes, the second
# labelled zone=b): node_selector places only on the labelled node; binpack
# fills one node, spread uses both; a gang that cannot be placed fails once
# its gang_timeout has passed; a project quota holds a run and an app back
# with reason quota until it is raised; env from a secret and a config map reaches the
# container, and both mounted as read-only files; a missing secret fails
# the index for good, naming it.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

export LOOM_AGENT_CPU_MILLIS=2000
platform_up
node2=it$$-2
image=$LOOM_REGISTRY/loom/busybox:latest

run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }
sql() { psql "$LOOM_PG_DSN" -XAtq -F' ' -c "$1" 2>&1; }
run_over() { local s; s=$(run_field "$1" .status); [ "$s" = completed ] || [ "$s" = failed ]; }
# submit NAME CMD [EXTRA_JSON]: POST a run of a small valid shape (0.125 vCPU, 256M)
submit() {
	local body x=${3:-}
	[ -n "$x" ] || x='{}'
	body=$(jq -nc --arg n "$1" --arg cmd "$2" --arg img "$image" --argjson x "$x" \
		'{name: $n, image_reference: $img, run_commands: ["/bin/sh", "-c", $cmd],
		scale_cpu_limit: "0.125", scale_memory_limit: "256M"} + $x')
	api POST "/v1/projects/$LOOM_PROJECT/job_runs" "$body"
}
nodes_of() {
	sql "SELECT string_agg(DISTINCT i.node_name, ',' ORDER BY i.node_name) FROM instances i
		JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = '$1'"
}

out=$("$loom_dev" add-node "$node2" --labels zone=b,disk=ssd 2>&1)
is "$?" 0 "loom-dev add-node $node2 --labels zone=b,disk=ssd" || diag "$out"
two_ready() { [ "$(sql "SELECT count(*) FROM nodes WHERE state = 'ready'")" = 2 ]; }
ok "two nodes are ready" wait_for 20 two_ready
is "$(sql "SELECT labels->>'zone' FROM nodes WHERE name = '$node2'")" b \
	"$node2 registered its labels"

# --- node_selector --------------------------------------------------------------------
submit picky 'true' '{"scale_array_spec": "0-3", "node_selector": {"zone": "b"}}'
is "$http_status" 201 "submit picky (node_selector zone=b, 4 indices)" || diag "$http_body"
ok "picky ends" wait_for 60 run_over picky || diag "$(run_json picky)"
is "$(run_field picky .status)" completed "picky: completed"
is "$(nodes_of picky)" "$node2" "picky: every index ran on the labelled node"
submit nowhere 'true' '{"node_selector": {"zone": "mars"}}'
is "$http_status" 201 "submit nowhere (node_selector zone=mars)" || diag "$http_body"
waits_nowhere() { [ -n "$(run_field nowhere '.status_details.waiting_reason // empty')" ]; }
ok "nowhere waits" wait_for 15 waits_nowhere
like "$(run_field nowhere .status_details.waiting_reason)" 'node_selector' \
	"nowhere: the reason names the node selector ($(run_field nowhere .status_details.waiting_reason))"
ok "cancel nowhere" loom jobrun cancel nowhere

# --- binpack and spread (both nodes idle; one transaction places both indices) ----------------
idle() { [ "$(sql "SELECT count(*) FROM instances WHERE state IN ('assigned','pulling','starting','running')")" = 0 ]; }
ok "the cluster is idle" wait_for 30 idle
submit packed 'true' '{"scale_array_spec": "0-1"}'
is "$http_status" 201 "submit packed (binpack, 2 indices)" || diag "$http_body"
ok "packed ends" wait_for 60 run_over packed
is "$(nodes_of packed | tr ',' '\n' | wc -l)" 1 "packed: both indices on one node ($(nodes_of packed))"
ok "the cluster is idle again" wait_for 30 idle
# four indices: the leader's view of the nodes may still count packed's two
# for up to a second (it reloads it at most once a second), and spread must
# still use both nodes
submit spread 'true' '{"scale_array_spec": "0-3", "placement": "spread"}'
is "$http_status" 201 "submit spread (placement spread, 4 indices)" || diag "$http_body"
ok "spread ends" wait_for 60 run_over spread
is "$(nodes_of spread | tr ',' '\n' | wc -l)" 2 "spread: the indices on two nodes ($(nodes_of spread))"

# --- gang timeout: three members never fit two nodes -----------------------------------
submit trio 'true' '{"scale_nodes": 3, "gang_timeout": 1}'
is "$http_status" 201 "submit trio (scale_nodes 3 on two nodes, gang_timeout 1)" || diag "$http_body"
ok "trio ends" wait_for 30 run_over trio || diag "$(run_json trio)"
is "$(run_field trio .status)" failed "trio: failed"
like "$(run_field trio '.status_details.indices_details[0].last_failure_reason // .status_details.waiting_reason')" \
	'gang_timeout' "trio: the index's reason names gang_timeout"
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'trio'")" 0 "trio: no member was placed"

# --- quota --------------------------------------------------------------------------------
pid=$(sql "SELECT id FROM projects WHERE name = '$LOOM_PROJECT'")
sql "INSERT INTO project_quotas (project_id, instances) VALUES ($pid, 0)
	ON CONFLICT (project_id) DO UPDATE SET instances = 0" >/dev/null
submit held 'true' '{"scale_array_spec": "0-1"}'
is "$http_status" 201 "submit held (project quota: 0 instances)" || diag "$http_body"
waits_quota() { [[ "$(run_field held '.status_details.waiting_reason // empty')" == quota* ]]; }
ok "held waits with reason quota" wait_for 15 waits_quota || diag "$(run_json held)"
is "$(sql "SELECT count(*) FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'held'")" 0 "held: nothing placed while the quota is reached"
out=$(loom app create quiet --image "$image" --cmd 'httpd -f -p 8080 -h /etc' --port 8080 \
	--min-scale 1 --cpu 0.125 --memory 256M --no-wait 2>&1)
is "$?" 0 "app create quiet (the same quota)" || diag "$out"
app_waits() { [[ "$(sql "SELECT waiting_reason FROM apps WHERE name = 'quiet'")" == quota* ]]; }
ok "quiet waits with reason quota" wait_for 15 app_waits ||
	diag "$(sql "SELECT waiting_reason FROM apps WHERE name = 'quiet'")"
sql "UPDATE project_quotas SET instances = NULL WHERE project_id = $pid" >/dev/null
ok "held ends once the quota is raised" wait_for 60 run_over held || diag "$(run_json held)"
is "$(run_field held .status)" completed "held: completed"
app_runs() {
	[ "$(sql "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'quiet' AND i.state = 'running'")" = 1 ]
}
ok "quiet runs once the quota is raised" wait_for 60 app_runs
api DELETE "/v1/projects/$LOOM_PROJECT/apps/quiet"
ok "DELETE app quiet ($http_status)" test "$http_status" = 202 -o "$http_status" = 204

# --- env from a secret and a config map ------------------------------------------------------
out=$(loom secret create creds --from-literal PASSWORD=hunter2 --from-literal USER=ada 2>&1)
is "$?" 0 "secret create creds" || diag "$out"
out=$(loom configmap create colors --from-literal COLOR=blue 2>&1)
is "$?" 0 "configmap create colors" || diag "$out"
# shellcheck disable=SC2016 # for the container's shell
submit envy 'echo "pw=$PASSWORD u=$S_USER c=$COLOR lit=$LIT"' '{"run_env_variables": [
	{"type": "literal", "name": "LIT", "value": "x"},
	{"type": "secret_key_reference", "reference": "creds", "key": "PASSWORD", "name": "PASSWORD"},
	{"type": "secret_full_reference", "reference": "creds", "prefix": "S_"},
	{"type": "config_map_key_reference", "reference": "colors", "key": "COLOR", "name": "COLOR"}]}'
is "$http_status" 201 "submit envy (env from a secret and a config map)" || diag "$http_body"
ok "envy ends" wait_for 60 run_over envy || diag "$(run_json envy)"
is "$(run_field envy .status)" completed "envy: completed"
envy_logs() { logs=$(loom jobrun logs envy 2>&1); grep -q 'pw=hunter2 u=ada c=blue lit=x' <<<"$logs"; }
ok "envy: the container saw the secret's and the config map's values" wait_for 20 envy_logs ||
	diag "$logs"

# shellcheck disable=SC2016 # for the container's shell
submit mounty 'echo "pw=$(cat /run/creds/PASSWORD) c=$(cat /etc/colors/COLOR)";
	if touch /run/creds/new /etc/colors/new 2>/dev/null; then echo writable; else echo read-only; fi' \
	'{"run_volume_mounts": [
	{"type": "secret", "reference": "creds", "mount_path": "/run/creds"},
	{"type": "config_map", "reference": "colors", "mount_path": "/etc/colors"}]}'
is "$http_status" 201 "submit mounty (a secret and a config map mounted)" || diag "$http_body"
ok "mounty ends" wait_for 60 run_over mounty || diag "$(run_json mounty)"
is "$(run_field mounty .status)" completed "mounty: completed" ||
	diag "$(run_field mounty '.status_details.indices_details')"
mounty_logs() { logs=$(loom jobrun logs mounty 2>&1); grep -q 'pw=hunter2 c=blue' <<<"$logs"; }
ok "mounty: the files hold the secret's and the config map's values" wait_for 20 mounty_logs ||
	diag "$logs"
# once they ended, the node keeps no secret of theirs: only the container's
# own output (container.log) may say it; instance.json's assign (hex) does not
secret_dirs=$(sql "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name IN ('envy', 'mounty')" | sed "s|^|$LOOM_HOME/agent/instances/|")
torn_down() { local d; for d in $secret_dirs; do [ -e "$d/done" ] || return 1; done; }
ok "envy's and mounty's instances are torn down" wait_for 30 torn_down
# shellcheck disable=SC2086 # one path each
left=$(grep -rl --exclude=container.log -e hunter2 -e "$(printf hunter2 | od -An -tx1 | tr -d ' \n')" \
	$secret_dirs 2>&1)
is "$left" "" "no file of theirs left on the node holds the secret (plain or hex)"
# shellcheck disable=SC2086
ok "instance.json is still there" ls $(sed 's|$|/instance.json|' <<<"$secret_dirs")
like "$logs" 'read-only' "mounty: the mounts are read-only"
unlike "$logs" 'writable' "mounty: nothing could be written to them"

submit ghost 'true' '{"scale_retry_limit": 2, "run_env_variables": [
	{"type": "secret_key_reference", "reference": "nosuch", "key": "K", "name": "K"}]}'
# a reference to a missing secret is accepted at create time (the secret may
# come later, as in Code Engine); the index then fails for good, naming it
is "$http_status" 201 "submit ghost (names a missing secret): accepted" || diag "$http_body"
ok "ghost ends" wait_for 30 run_over ghost || diag "$(run_json ghost)"
is "$(run_field ghost .status)" failed "ghost: failed"
like "$(run_field ghost '.status_details.indices_details[0].last_failure_reason')" 'secret "nosuch" not found' \
	"ghost: the index's reason names the missing secret"
is "$(run_field ghost '.status_details.indices_details[0].retries')" 0 "ghost: no retry"

finish
