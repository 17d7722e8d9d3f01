#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through ok and wait_for
# The command-line tools against a real platform: loom login writes a 0600
# config (in a 0700 directory) that later commands use without flags or
# environment; -o json is JSON; an error prints the problem and the request
# id with a non-zero exit status; the spec flags (env and mounts from secrets
# and config maps, registry secret, ephemeral storage, placement, probes,
# visibility...) land in the spec; loom-admin quota set/get and the admin
# quota endpoint round trip; a run beyond the quota waits with a "quota"
# reason; a cordoned node makes new work wait.
#
# Nothing here decides on a clock: waits poll for a state (wait_for), and
# the spec checks read the API's replies.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

platform_up
# shellcheck disable=SC1091
set -a
. "$LOOM_HOME/env"
set +a

loom() { "$bin/loom" "$@"; }
admin() { "$bin/loom-admin" "$@"; }
image=$LOOM_REGISTRY/loom/busybox:latest
api_url=$LOOM_API
admin_key=$LOOM_KEY
cfgdir=$tmp/xdg
# a shape every dev node holds
small=(--cpu 0.125 --memory 256M)

# --- login --------------------------------------------------------------------

# Without the settings in the environment, only the config file can help.
noenv() { env -u LOOM_API -u LOOM_KEY -u LOOM_PROJECT XDG_CONFIG_HOME="$cfgdir" "$bin/loom" "$@"; }

out=$(noenv project list 2>&1)
rc=$?
isnt_zero() { [ "$1" -ne 0 ]; }
ok "without settings a command fails ($rc)" isnt_zero "$rc"
like "$out" 'loom login' "and says to run loom login"

out=$(noenv login --api "$api_url" --key "loom_000000000000_wrongwrongwrongwrongwrongwrongwrongwrongwro" 2>&1)
rc=$?
is "$rc" 4 "login with a wrong key exits 4"
ok "and writes no config" test ! -e "$cfgdir/loom/config"

ok "login with the admin key" noenv login --api "$api_url" --key "$admin_key" --project default
is "$(stat -c %a "$cfgdir/loom/config")" 600 "the config file is 0600"
is "$(stat -c %a "$cfgdir/loom")" 700 "its directory is 0700"
out=$(noenv project list)
like "$out" 'default' "project list works from the config alone"
out=$(noenv -o json jobrun list)
ok "jobrun list -o json is JSON" jq -e '.job_runs | type == "array"' <<<"$out"
out=$(env -u LOOM_API -u LOOM_KEY XDG_CONFIG_HOME="$cfgdir" LOOM_PROJECT=nosuch "$bin/loom" job list 2>&1)
is "$?" 3 "the environment overrides the config file (project nosuch: 404, exit 3)"

# --- errors -----------------------------------------------------------------------

out=$(noenv app get no-such-app 2>&1)
rc=$?
is "$rc" 3 "a missing app exits 3"
like "$out" 'request id: [[:alnum:]-]+' "the error shows the request id"
out=$(noenv app create bad --image "$image" --cpu 0.3 --memory 1G --no-wait 2>&1)
rc=$?
is "$rc" 1 "an invalid spec exits 1"
like "$out" 'scale_cpu_limit|scale_memory_limit' "and names the field"
like "$out" 'request id:' "with the request id"
out=$(noenv app create bad --bogus-flag 2>&1)
is "$?" 2 "an unknown flag exits 2"

# --- spec flags -------------------------------------------------------------

printf 'A=1\n# comment\nB=two\n' >"$tmp/env-file"
printf 'file text\n' >"$tmp/data-file"
ok "secret from literal, file and env file" noenv secret create s1 --from-literal k=v \
	--from-file f="$tmp/data-file" --from-env-file "$tmp/env-file"
out=$(noenv -o json secret get s1)
is "$(jq -r '.data_keys | sort | join(",")' <<<"$out")" "A,B,f,k" "the secret has every key"
ok "registry secret" noenv secret create reg --format registry --server 127.0.0.1:5000 \
	--username u --password p
ok "config map" noenv configmap create cm1 --from-literal x=y

out=$(noenv -o json job create specjob --image "$image" "${small[@]}" --array-indices 0-3 \
	--retrylimit 2 --maxexecutiontime 60 --mode task --parallelism 2 --priority 7 \
	--env A=1 --env-from-secret s1 --env-from-secret s1:k=KAY,f --env-from-configmap cm1 \
	--mount-secret /etc/s1=s1 --mount-configmap /etc/cm=cm1 --registry-secret reg \
	--ephemeral-storage 1G --node-selector zone=a --node-selector disk=ssd --placement spread \
	--gang-timeout 60)
is "$(jq -c '[.scale_array_spec, .scale_retry_limit, .scale_max_execution_time, .run_mode,
	.parallelism, .priority, .image_secret, .scale_ephemeral_storage_limit, .placement,
	.gang_timeout, .node_selector.zone, .node_selector.disk]' <<<"$out")" \
	'["0-3",2,60,"task",2,7,"reg","1G","spread",60,"a","ssd"]' "job flags land in the spec"
want='[{"type":"literal","name":"A","value":"1"},{"type":"secret_full_reference","reference":"s1"},{"type":"secret_key_reference","reference":"s1","key":"k","name":"KAY"},{"type":"secret_key_reference","reference":"s1","key":"f","name":"f"},{"type":"config_map_full_reference","reference":"cm1"}]'
is "$(jq -cS '.run_env_variables' <<<"$out")" "$(jq -cS . <<<"$want")" \
	"env flags land in run_env_variables"
is "$(jq -c '[.run_volume_mounts[] | [.type, .reference, .mount_path]]' <<<"$out")" \
	'[["secret","s1","/etc/s1"],["config_map","cm1","/etc/cm"]]' "mount flags land in run_volume_mounts"

out=$(noenv -o json app create specapp --image "$image" "${small[@]}" --port 8080 \
	--min-scale 0 --max-scale 3 --scale-initial-instances 0 --concurrency 20 \
	--concurrency-target 10 --scale-down-delay 30 --request-timeout 90 --visibility private \
	--probe-ready type=http,path=/ready,port=8080,interval=5 --probe-live type=tcp,port=8080 \
	--no-wait)
is "$(jq -c '[.image_port, .scale_max_instances, .scale_initial_instances, .scale_concurrency,
	.scale_concurrency_target, .scale_down_delay, .scale_request_timeout, .visibility,
	.probe_readiness.type, .probe_readiness.path, .probe_readiness.interval,
	.probe_liveness.type]' <<<"$out")" \
	'[8080,3,0,20,10,30,90,"private","http","/ready",5,"tcp"]' "app flags land in the spec"

# --- quota --------------------------------------------------------------------

out=$(admin quota set --project default --cpu 4 --memory 8G --gpus 0 --instances 10)
like "$out" 'default +4\.000 +8000000000 +0 +10' "loom-admin quota set prints the quota"
api GET /v1/admin/projects/default/quota
is "$(jq -c '[.cpu_millis, .memory_bytes, .gpus, .instances]' <<<"$http_body")" \
	'[4000,8000000000,0,10]' "GET /v1/admin/projects/default/quota reads it"
api PUT /v1/admin/projects/default/quota '{"cpu_millis":2000,"instances":0}'
is "$http_status" 200 "PUT the quota"
out=$(admin quota get --project default)
like "$out" 'default +2\.000 +- +- +0' "loom-admin quota get reads the PUT (absent members: no limit)"
api PUT /v1/admin/projects/default/quota '{"instances":-1}'
is "$http_status" 400 "a negative quota is refused"
api PUT /v1/admin/projects/default/quota "$(jq -c '.gpus = 1' <<<"$(api GET /v1/admin/projects/default/quota && echo "$http_body")")"
is "$http_status/$(jq -c '[.gpus, .instances]' <<<"$http_body")" '200/[1,0]' "a GET reply can be PUT back"
write_key=$(admin keys create --project default --role write | grep -oE 'loom_[0-9a-f]{12}_[A-Za-z0-9_-]{43}')
api GET /v1/admin/projects/default/quota "" "$write_key"
is "$http_status" 403 "a project key cannot read the quota"

run_reason() {
	local j
	j=$(noenv -o json jobrun get "$1") || return 1
	jq -r '.status_details.waiting_reason // ""' <<<"$j"
}
reason_is() { [ "$(run_reason "$1")" = "$2" ]; }
run_instances() {
	psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN job_runs r
		ON r.id = i.job_run_id WHERE r.name = '$1'" 2>&1
}
# stays_pending NAME SECONDS REASON: at every look for SECONDS, NAME is
# pending with REASON and has no instance; says what it saw otherwise
stays_pending() {
	local deadline=$(($(now_ms) + $2 * 1000)) status reason n
	while [ "$(now_ms)" -lt "$deadline" ]; do
		status=$(noenv -o json jobrun get "$1" | jq -r .status)
		reason=$(run_reason "$1")
		n=$(run_instances "$1")
		if [ "$status" != pending ] || [ "$reason" != "$3" ] || [ "$n" != 0 ]; then
			diag "$1: status '$status', reason '$reason', $n instance(s)"
			return 1
		fi
		sleep 0.2
	done
}
# the quota above holds 0 instances
quota_reason="quota: the project's instances limit is reached"
# what a cordoned cluster says of a run of the shape small (and the default
# ephemeral storage)
no_node_reason="no node fits cpu=125m memory=256M ephemeral=400M"

ok "submit a run beyond the quota" noenv jobrun submit --name overquota --image "$image" \
	"${small[@]}" --cmd true
ok "it waits with reason \"$quota_reason\"" wait_for 60 reason_is overquota "$quota_reason"
diag "reason: $(run_reason overquota)"
ok "it stays pending, unplaced, for 3 s" stays_pending overquota 3 "$quota_reason"
ok "cancel it" noenv jobrun cancel overquota

# --- nodes ----------------------------------------------------------------------

# A run held by the quota (a state we can see) while every node is cordoned;
# then the quota is lifted and the run must wait for a node instead.
ok "submit a run while the quota holds it" noenv jobrun submit --name cordoned \
	--image "$image" "${small[@]}" --cmd true
ok "it waits with reason \"$quota_reason\"" wait_for 60 reason_is cordoned "$quota_reason"
nodes=$(admin nodes list | awk 'NR > 1 { print $1 }')
for n in $nodes; do admin nodes cordon "$n" >/dev/null || fail "cordon $n"; done
ok "nodes cordoned" test -n "$nodes"
like "$(admin nodes list)" 'cordoned' "nodes list shows them cordoned"
# loom-admin's wake after a cordon makes the leader re-read the nodes, so the
# lifted quota below meets the cordoned states at once.
ok "remove the limits" admin quota set --project default --cpu none --memory none --gpus none \
	--instances none
ok "the run now waits for a node (\"$no_node_reason\")" wait_for 60 reason_is cordoned "$no_node_reason"
diag "reason: $(run_reason cordoned)"
ok "it stays pending, unplaced, for 5 s while the nodes are cordoned" \
	stays_pending cordoned 5 "$no_node_reason"
for n in $nodes; do admin nodes uncordon "$n" >/dev/null || fail "uncordon $n"; done
run_completed() { [ "$(noenv -o json jobrun get cordoned | jq -r .status)" = completed ]; }
ok "uncordoned, the nodes run it to completion" wait_for 60 run_completed

ok "logout" noenv logout
ok "removes the config" test ! -e "$cfgdir/loom/config"

finish
