#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through ok and wait_for
# The public REST API, resource by resource, against a real platform:
# create, read, list (paging over 250 items, also with inserts between and
# during the pages), update with a matching and a stale ETag, delete; every
# kind of validation error as a 400 problem naming the field; Idempotency-Key
# replays; project isolation (404, the same as absent) and admin routes
# (403); the body cap (413) and the rate limit (429 + Retry-After); secrets
# never readable and encrypted in PostgreSQL; an outbox event per change and
# one CloudEvent seen on NATS; /openapi.json against the served routes.
#
# Nothing here waits on a clock to decide: job runs ask for 12 vCPU / 48G,
# which no dev node has, so they stay pending and no container starts.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# no rate limit for the bulk of the test (a second API replica with a low
# one checks 429 at the end); loom-dev's services inherit the environment
export LOOM_API_RATE_LIMIT=0
platform_up
# the platform's recorded settings (PostgreSQL DSN, NATS URL...)
# shellcheck disable=SC1091
set -a
. "$LOOM_HOME/env"
set +a
export PGCONNECT_TIMEOUT=10

P=/v1/projects/default
image=$LOOM_REGISTRY/loom/busybox:latest
# a shape no dev node can hold: runs stay pending, nothing is started
big='"scale_cpu_limit":"12","scale_memory_limit":"48G"'
N=250

admin() { "$bin/loom-admin" "$@" 2>>"$tmp/admin.err"; }
sql() { psql -qAtX -v ON_ERROR_STOP=1 "$LOOM_PG_DSN" -c "$1" 2>>"$tmp/psql.err"; }

# call METHOD PATH [BODY] [CURL_ARGS...]: like lib.sh's api, and keeps the
# response headers (header NAME reads one). The key is $KEY (default
# $LOOM_KEY; "-" for none).
call() {
	local method=$1 path=$2 body=${3:-} key=${KEY:-$LOOM_KEY}
	shift 2
	[ $# -eq 0 ] || shift
	local -a args=(-sS -m 30 -X "$method" -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}')
	[ "$key" = - ] || args+=(-H "Authorization: Bearer $key")
	[ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data-binary "$body")
	rm -f "$tmp/body" "$tmp/headers"
	http_status=$(curl "${args[@]}" "$@" "$LOOM_API$path" 2>"$tmp/curl.err") || http_status=000
	http_body=$(cat "$tmp/body" 2>/dev/null || true)
	http_headers=$(tr -d '\r' <"$tmp/headers" 2>/dev/null || true)
	http_type=$(header Content-Type)
	http_type=${http_type%%;*}
}
header() { grep -i "^$1:" <<<"$http_headers" | head -n1 | cut -d' ' -f2-; }
jqr() { jq -r "$1" <<<"$http_body" 2>/dev/null; }

# bulk_post PATH PREFIX COUNT BODY_TEMPLATE: COUNT POSTs over one connection
# (a curl config file), the template's @N@ replaced by PREFIX-<nnn>. Prints
# the statuses that were not 201 (nothing when all were created).
bulk_post() {
	local path=$1 prefix=$2 count=$3 tpl=$4 i name cfg=$tmp/bulk.cfg
	: >"$cfg"
	for ((i = 0; i < count; i++)); do
		printf -v name '%s-%03d' "$prefix" "$i"
		[ $i -eq 0 ] || echo next >>"$cfg"
		{
			printf 'url = "%s%s"\n' "$LOOM_API" "$path"
			echo 'request = "POST"'
			printf 'header = "Authorization: Bearer %s"\n' "$LOOM_KEY"
			echo 'header = "Content-Type: application/json"'
			printf 'data = "%s"\n' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"${tpl//@N@/$name}")"
			echo 'output = "/dev/null"'
			printf '%s\n' 'write-out = "%{http_code}\n"'
		} >>"$cfg"
	done
	curl -sS -m 300 -K "$cfg" 2>&1 | grep -v '^201$' || true
}

# list_all PATH KEY_IN_REPLY [HOOK]: pages through PATH with limit=100 and
# prints every name, one a line; HOOK runs after the first page.
list_all() {
	local path=$1 member=$2 hook=${3:-} next="" page=0 sep='?'
	case "$path" in *\?*) sep='&' ;; esac
	while :; do
		call GET "$path${sep}limit=100${next:+&start=$next}"
		[ "$http_status" = 200 ] || {
			echo "LIST-FAILED-$http_status"
			return 1
		}
		jqr ".${member}[].name"
		next=$(jqr '.next // empty')
		page=$((page + 1))
		[ $page -ne 1 ] || [ -z "$hook" ] || $hook >/dev/null
		[ -n "$next" ] || break
		[ $page -lt 100 ] || break
	done
}

# check_paging WHAT PATH MEMBER PREFIX: the N items PREFIX-000.. are all
# listed, each once (with and without inserts between the pages).
check_paging() {
	local what=$1 path=$2 member=$3 prefix=$4 names want
	names=$(list_all "$path" "$member")
	want=$(for ((i = 0; i < N; i++)); do printf '%s-%03d\n' "$prefix" "$i"; done)
	is "$(grep -c "^$prefix-" <<<"$names")" $N "$what: paging by 100 lists all $N"
	is "$(sort <<<"$names" | uniq -d)" "" "$what: no item on two pages"
	is "$(comm -23 <(sort <<<"$want") <(sort <<<"$names"))" "" "$what: none missed"
}

# --- projects, apps, jobs, job runs, secrets, config maps: bulk and paging ---

api GET $P/apps
is "$http_status" 200 "GET apps answers"

bodies=(
	"/v1/projects|pg|{\"name\":\"@N@\"}|projects"
	"$P/apps|app|{\"name\":\"@N@\",\"image_reference\":\"$image\",\"scale_cpu_limit\":\"0.125\",\"scale_memory_limit\":\"256M\"}|apps"
	"$P/jobs|job|{\"name\":\"@N@\",\"image_reference\":\"$image\",\"scale_array_spec\":\"0-9\"}|jobs"
	"$P/job_runs|run|{\"name\":\"@N@\",\"image_reference\":\"$image\",$big}|job_runs"
	"$P/secrets|sec|{\"name\":\"@N@\",\"data\":{\"k\":\"v\"}}|secrets"
	"$P/config_maps|cm|{\"name\":\"@N@\",\"data\":{\"k\":\"v\"}}|config_maps"
)
for b in "${bodies[@]}"; do
	IFS='|' read -r path prefix tpl member <<<"$b"
	is "$(bulk_post "$path" "$prefix" $N "$tpl")" "" "$member: $N creates all answer 201"
	check_paging "$member" "$path" "$member" "$prefix"
done

# inserts between the pages: before the cursor (never shown: keyset paging)
# and after it (shown once); the existing items are all seen, none twice
insert_between() {
	local path=$1 tpl=$2 n
	for n in aa-before zz-after; do
		call POST "$path" "${tpl//@N@/$n}"
	done
}
for b in "${bodies[@]}"; do
	IFS='|' read -r path prefix tpl member <<<"$b"
	hook() { insert_between "$path" "$tpl"; }
	names=$(list_all "$path" "$member" hook)
	is "$(sort <<<"$names" | uniq -d)" "" "$member: inserts between pages: no item twice"
	is "$(grep -c "^$prefix-" <<<"$names")" $N "$member: inserts between pages: all $N seen"
	is "$(grep -c '^zz-after$' <<<"$names")" 1 "$member: the item inserted after the cursor is listed once"
done

# inserts running while paging (a second process), many pages of 10
(
	for ((i = 0; i < 60; i++)); do
		printf -v n 'cc-during-%03d' $i
		curl -sS -m 20 -o /dev/null -H "Authorization: Bearer $LOOM_KEY" \
			-H 'Content-Type: application/json' \
			--data-binary "{\"name\":\"$n\",\"data\":{\"k\":\"v\"}}" "$LOOM_API$P/config_maps"
	done
) &
inserter=$!
names=""
next=""
for ((page = 0; page < 200; page++)); do
	call GET "$P/config_maps?limit=10${next:+&start=$next}"
	names+=$(jqr '.config_maps[].name')$'\n'
	next=$(jqr '.next // empty')
	[ -n "$next" ] || break
done
wait "$inserter"
is "$(grep -v '^$' <<<"$names" | sort | uniq -d)" "" "config maps: concurrent inserts while paging: no item twice"
is "$(grep -c '^cm-' <<<"$names")" $N "config maps: concurrent inserts while paging: all $N existing seen"

# --- read, update with ETags, delete ------------------------------------------

call GET $P/apps/app-007
is "$http_status" 200 "GET an app"
is "$(header ETag)" '"1"' "a new app's ETag is \"1\""
is "$(jqr .scale_concurrency_target)/$(jqr .visibility)/$(jqr .scale_ephemeral_storage_limit)" \
	"100/public/400M" "an app's defaults are filled in"
call PATCH $P/apps/app-007 '{"scale_max_instances":3}' -H 'If-Match: "1"'
is "$http_status" 200 "PATCH an app with the matching ETag: 200"
is "$(header ETag)" '"2"' "and its ETag is now \"2\""
call PATCH $P/apps/app-007 '{"scale_max_instances":4}' -H 'If-Match: "1"'
is "$http_status" 412 "PATCH an app with a stale ETag: 412"
is "$http_type" application/problem+json "the 412 is a problem"
call GET $P/apps/app-007
is "$(jqr .scale_max_instances)" 3 "the stale PATCH changed nothing"
call GET $P/apps/app-007/revisions
is "$(jqr '[.revisions[].generation] | map(tostring) | join(",")')" "2,1" "the app has revisions 2 and 1"
call GET $P/apps/app-007/instances
is "$http_status/$(jqr '.instances | length')" "200/0" "an app at scale zero lists no instances"
call GET $P/apps/no-such-app/instances
is "$http_status" 404 "instances of an absent app: 404"

call PATCH $P/jobs/job-003 '{"scale_retry_limit":1}' -H 'If-Match: "1"'
is "$http_status/$(header ETag)" '200/"2"' "PATCH a job with the matching ETag: 200, ETag \"2\""
call PATCH $P/jobs/job-003 '{"scale_retry_limit":2}' -H 'If-Match: "1"'
is "$http_status" 412 "PATCH a job with a stale ETag: 412"
call GET $P/jobs/job-003
is "$(jqr .scale_retry_limit)/$(header ETag)" '1/"2"' "GET the job: the first change, ETag \"2\""

for kind in secrets config_maps; do
	name=$([ $kind = secrets ] && echo sec-010 || echo cm-010)
	call PUT $P/$kind/"$name" '{"data":{"k":"v2","k2":"x"}}' -H 'If-Match: "1"'
	is "$http_status/$(jqr '.data_keys | sort | join(",")')" "200/k,k2" "PUT a $kind item with the matching ETag: 200"
	call PUT $P/$kind/"$name" '{"data":{"k":"v3"}}' -H 'If-Match: "1"'
	is "$http_status" 412 "PUT a $kind item with a stale ETag: 412"
	call GET $P/$kind/"$name"
	is "$http_status/$(header ETag)" '200/"2"' "GET it: ETag \"2\""
done
call GET $P/config_maps/cm-010
is "$(jqr .data.k2)" x "a config map's values are returned"

call GET /v1/projects/pg-001
is "$http_status/$(jqr .name)" "200/pg-001" "GET a project"

# job runs: read, cancel, resubmit
call GET $P/job_runs/run-001
is "$http_status/$(jqr .status)/$(jqr .status_details.pending_indices)" "200/pending/0" \
	"GET a pending job run"
call POST $P/job_runs/run-001/cancel
is "$http_status/$(jqr .status)" "200/cancelled" "cancel a pending run: 200, cancelled"
call POST $P/job_runs/run-001/cancel
is "$http_status" 409 "cancel it again: 409"
call POST $P/job_runs/run-001/resubmit '{"name":"run-001-again","scale_array_spec":"3,1-2"}'
is "$http_status/$(jqr .name)/$(jqr .scale_array_spec)/$(jqr .status)" \
	"201/run-001-again/1-3/pending" "resubmit chosen indices as a new run"
call POST $P/job_runs/run-002/resubmit '{}'
is "$http_status" 409 "resubmit a run without failed indices and no indices given: 409"
call POST $P/job_runs/no-such-run/resubmit '{}'
is "$http_status" 404 "resubmit an absent run: 404"
call POST $P/job_runs '{"name":"from-job","job_name":"job-003","scale_array_spec":"2",'"$big"'}'
is "$http_status/$(jqr .job_name)/$(jqr .scale_retry_limit)" "201/job-003/1" "a run from a job takes its spec"

# deletes: 204, then 404
for d in /v1/projects/pg-002 $P/apps/app-002 $P/jobs/job-002 $P/job_runs/run-002 \
	$P/secrets/sec-002 $P/config_maps/cm-002; do
	call DELETE "$d"
	is "$http_status" 204 "DELETE $d: 204"
	call GET "$d"
	is "$http_status" 404 "GET $d afterwards: 404"
done

# --- validation: 400 problem+json naming the field, with the request id ------

bad() { # DESCRIPTION PATH BODY FIELD [METHOD]
	call "${5:-POST}" "$2" "$3" -H "X-Request-Id: it-$tap_n"
	local rid
	rid=$(jqr .request_id)
	if [ "$http_status" = 400 ] && [ "$http_type" = application/problem+json ] &&
		grep -qF -- "$4" <<<"$(jqr .detail)" && [ "$rid" = "it-$tap_n" ] &&
		[ "$(header X-Request-Id)" = "$rid" ]; then
		pass "400 naming $4: $1"
	else
		fail "400 naming $4: $1"
		diag "  got $http_status $http_type: $http_body"
	fi
}
app='"image_reference":"'$image'"'
bad "bad name" $P/apps '{"name":"Bad_Name",'"$app"'}' '"name"'
bad "name too long" $P/apps '{"name":"a'"$(printf 'b%.0s' {1..70})"'",'"$app"'}' '"name"'
bad "missing name" $P/jobs '{'"$app"'}' '"name"'
bad "unknown field" $P/apps '{"name":"x",'"$app"',"bogus":1}' '"bogus"'
bad "wrong type" $P/apps '{"name":"x",'"$app"',"image_port":"80"}' '"image_port"'
bad "out of range" $P/apps '{"name":"x",'"$app"',"scale_max_instances":0}' '"scale_max_instances"'
bad "min over max" $P/apps '{"name":"x",'"$app"',"scale_min_instances":5,"scale_max_instances":2}' \
	'"scale_min_instances"'
bad "bad cpu:memory combination" $P/apps '{"name":"x",'"$app"',"scale_cpu_limit":"1","scale_memory_limit":"16G"}' \
	'"scale_memory_limit"'
bad "cpu not a Code Engine size" $P/jobs '{"name":"x",'"$app"',"scale_cpu_limit":"0.3"}' '"scale_cpu_limit"'
bad "bad array spec" $P/job_runs '{"name":"x",'"$app"',"scale_array_spec":"5-2"}' '"scale_array_spec"'
bad "array index over 9999999" $P/job_runs '{"name":"x",'"$app"',"scale_array_spec":"10000000"}' \
	'"scale_array_spec"'
bad "bad image" $P/job_runs '{"name":"x","image_reference":"a b"}' '"image_reference"'
bad "missing image" $P/job_runs '{"name":"x"}' '"image_reference"'
bad "bad env reference" $P/apps '{"name":"x",'"$app"',"run_env_variables":[{"type":"secret_key_reference","reference":"s","name":"N"}]}' \
	'run_env_variables[0].key'
bad "bad env type" $P/apps '{"name":"x",'"$app"',"run_env_variables":[{"type":"vault","name":"N"}]}' \
	'run_env_variables[0].type'
bad "bad mount path" $P/jobs '{"name":"x",'"$app"',"run_volume_mounts":[{"type":"secret","reference":"s","mount_path":"rel"}]}' \
	'run_volume_mounts[0].mount_path'
bad "bad image secret" $P/jobs '{"name":"x",'"$app"',"image_secret":"NO"}' '"image_secret"'
bad "ephemeral storage over 48G" $P/jobs '{"name":"x",'"$app"',"scale_ephemeral_storage_limit":"64G"}' \
	'"scale_ephemeral_storage_limit"'
bad "bad probe" $P/apps '{"name":"x",'"$app"',"probe_readiness":{"type":"exec"}}' 'probe_readiness.type'
bad "target over concurrency" $P/apps '{"name":"x",'"$app"',"scale_concurrency":5,"scale_concurrency_target":6}' \
	'"scale_concurrency_target"'
bad "bad visibility" $P/apps '{"name":"x",'"$app"',"visibility":"world"}' '"visibility"'
bad "bad request timeout" $P/apps '{"name":"x",'"$app"',"scale_request_timeout":601}' '"scale_request_timeout"'
bad "bad node selector" $P/job_runs '{"name":"x",'"$app"',"node_selector":{"zone":7}}' 'node_selector.zone'
bad "bad placement" $P/job_runs '{"name":"x",'"$app"',"placement":"random"}' '"placement"'
bad "bad gang timeout" $P/jobs '{"name":"x",'"$app"',"gang_timeout":0}' '"gang_timeout"'
bad "bad run mode" $P/jobs '{"name":"x",'"$app"',"run_mode":"forever"}' '"run_mode"'
bad "a variable set twice" $P/apps '{"name":"x",'"$app"',"run_env_variables":[{"name":"A","value":"1"},{"name":"A","value":"2"}]}' \
	'run_env_variables[1].name'
bad "bad PATCH field" $P/apps/app-007 '{"scale_down_delay":-1}' '"scale_down_delay"' PATCH
bad "rename in PATCH" $P/jobs/job-003 '{"name":"other"}' '"name"' PATCH
bad "secret without data" $P/secrets '{"name":"x"}' '"data"'
bad "secret data not strings" $P/secrets '{"name":"x","data":{"k":1}}' 'data.k'
bad "registry secret without password" $P/secrets '{"name":"x","format":"registry","data":{"server":"r.io","username":"u"}}' \
	'data.password'
bad "registry secret with a URL" $P/secrets '{"name":"x","format":"registry","data":{"server":"https://r.io/","username":"u","password":"p"}}' \
	'data.server'
bad "tls secret that is not PEM" $P/secrets '{"name":"x","format":"tls","data":{"tls_cert":"hello","tls_key":"world"}}' \
	'data.tls_cert'
bad "unknown secret format" $P/secrets '{"name":"x","format":"ssh","data":{"k":"v"}}' '"format"'
bad "config map key" $P/config_maps '{"name":"x","data":{"a b":"v"}}' '"data"'
bad "resubmit field" $P/job_runs/run-003/resubmit '{"indices":"1"}' '"indices"'
bad "project name" /v1/projects '{"name":"-x"}' '"name"'
bad "bad limit" "$P/apps?limit=0" "" '"limit"' GET
bad "bad page token" "$P/apps?start=zz" "" '"start"' GET
call POST $P/apps '{"name":'
is "$http_status/$http_type" "400/application/problem+json" "malformed JSON: 400 problem"
call POST $P/apps '[1,2]'
is "$http_status" 400 "a body that is not an object: 400"
is "$(sql "SELECT count(*) FROM apps WHERE name = 'x'")" 0 "no refused request created anything"

# valid bodies with the new fields are stored as given
tls_cert=$'-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZm9v\n-----END CERTIFICATE-----\n'
tls_key=$'-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEG\n-----END PRIVATE KEY-----\n'
call POST $P/secrets "$(jq -nc --arg c "$tls_cert" --arg k "$tls_key" \
	'{name:"tls1",format:"tls",data:{tls_cert:$c,tls_key:$k}}')"
is "$http_status/$(jqr .format)" "201/tls" "a tls secret with PEM data is created"
call POST $P/apps '{"name":"full",'"$app"',"scale_cpu_limit":"0.25","scale_memory_limit":"0.5G",
 "scale_initial_instances":0,"scale_concurrency":50,"scale_concurrency_target":40,"scale_down_delay":30,
 "scale_request_timeout":60,"visibility":"project","image_secret":"pull",
 "probe_readiness":{"type":"http","path":"/ready"},"probe_liveness":{"type":"tcp","port":8080},
 "run_env_variables":[{"type":"secret_full_reference","reference":"sec-001","prefix":"S_"},
  {"type":"config_map_key_reference","reference":"cm-001","key":"k","name":"K"}],
 "run_volume_mounts":[{"type":"secret","reference":"tls1","mount_path":"/etc/tls"}]}'
is "$http_status" 201 "an app with every new field is created"
is "$(jqr '[.scale_concurrency_target, .scale_down_delay, .visibility, .probe_readiness.path,
	.probe_readiness.failure_threshold, .run_env_variables[0].prefix, .run_volume_mounts[0].mount_path]
	| map(tostring) | join(" ")')" "40 30 project /ready 3 S_ /etc/tls" "and returns them with defaults"
call PATCH $P/apps/full '{"probe_liveness":null,"scale_down_delay":null,"scale_cpu_limit":"0.5"}'
is "$http_status/$(jqr '.probe_liveness // "gone"')/$(jqr .scale_down_delay)/$(jqr .scale_memory_limit)" \
	"200/gone/0/2G" "PATCH null removes a probe and resets a default; cpu alone takes memory along"
call POST $P/jobs '{"name":"full",'"$app"',"node_selector":{"zone":"a"},"placement":"spread",
 "gang_timeout":60,"scale_nodes":2,"priority":5,"scale_memory_limit":"2G"}'
is "$http_status/$(jqr .scale_cpu_limit)/$(jqr .placement)/$(jqr .node_selector.zone)" "201/0.5/spread/a" \
	"a job with node_selector, placement, gang_timeout; memory alone gets its vCPU"

# --- Idempotency-Key ------------------------------------------------------------

call POST $P/config_maps '{"name":"idem1","data":{"a":"1"}}' -H 'Idempotency-Key: key-1'
first=$http_body
is "$http_status" 201 "POST with an Idempotency-Key: 201"
call POST $P/config_maps '{"name":"idem1","data":{"a":"1"}}' -H 'Idempotency-Key: key-1'
is "$http_status" 201 "the same key and body again: the first status"
is "$http_body" "$first" "and the first body"
is "$(header Idempotent-Replayed)" true "marked Idempotent-Replayed"
call POST $P/config_maps '{"name":"idem1","data":{"a":"2"}}' -H 'Idempotency-Key: key-1'
is "$http_status/$http_type" "422/application/problem+json" "the same key with another body: 422"
call POST $P/job_runs '{"name":"idem-run","image_reference":"'"$image"'",'"$big"'}' -H 'Idempotency-Key: run-1'
first_id=$(jqr .id)
call POST $P/job_runs '{"name":"idem-run","image_reference":"'"$image"'",'"$big"'}' -H 'Idempotency-Key: run-1'
is "$http_status/$(jqr .id)" "201/$first_id" "a job run POST replayed returns the same run"
is "$(sql "SELECT count(*) FROM job_runs WHERE name = 'idem-run'")" 1 "and made one run"
call POST $P/config_maps '{"name":"idem1","data":{"a":"1"}}'
is "$http_status" 409 "without the key the same POST is a conflict (409)"

# the same at once: 6 POSTs with one key and body give one run and one answer;
# 6 PATCHes with one If-Match give one 200 and five 412; 6 creates of one
# name without a key give one 201 and five 409
parallel() { # OUT_PREFIX CURL_ARGS...: 6 requests at once; prints "status id" each
	local i
	for ((i = 0; i < 6; i++)); do
		curl -sS -m 30 -o "$tmp/$1.$i" -w '%{http_code}\n' -H "Authorization: Bearer $LOOM_KEY" \
			-H 'Content-Type: application/json' "${@:2}" >"$tmp/$1.$i.status" &
	done
	wait
	for ((i = 0; i < 6; i++)); do
		echo "$(cat "$tmp/$1.$i.status") $(jq -r '.id // empty' "$tmp/$1.$i" 2>/dev/null)"
	done | sort | uniq -c | awk '{ $1 = $1; print }' | paste -sd';'
}
out=$(parallel idem -X POST -H 'Idempotency-Key: par-1' \
	--data-binary '{"name":"par-run","image_reference":"'"$image"'",'"$big"'}' "$LOOM_API$P/job_runs")
like "$out" '^6 201 [0-9]+$' "6 POSTs at once with one Idempotency-Key: one answer ($out)"
is "$(sql "SELECT count(*) FROM job_runs WHERE name = 'par-run'")" 1 "and one run"
call GET $P/jobs/job-004
etag=$(header ETag)
out=$(parallel patch -X PATCH -H "If-Match: $etag" --data-binary '{"scale_retry_limit":0}' \
	"$LOOM_API$P/jobs/job-004")
like "$out" '^1 200 [0-9]+;5 412 ?$' "6 PATCHes at once with one If-Match: one 200, five 412 ($out)"
out=$(parallel dup -X POST --data-binary '{"name":"par-cm","data":{"a":"b"}}' "$LOOM_API$P/config_maps")
like "$out" '^1 201 [0-9]+;5 409 ?$' "6 creates of one name at once: one 201, five 409 ($out)"

# --- keys: project isolation, admin routes, read keys ---------------------------

quiet_admin() { admin "$@" >>"$tmp/admin.out"; }
ok "create project other" quiet_admin projects create other
other_key=$(admin keys create --project other --role write)
read_key=$(admin keys create --project default --role read)
like "$other_key" '^loom_' "a write key for other"
for path in $P/apps/app-001 $P/jobs/job-001 $P/job_runs/run-003 $P/secrets/sec-001 \
	$P/config_maps/cm-001 $P/apps/app-001/instances $P/apps/app-001/revisions $P; do
	KEY=$other_key call GET "$path"
	got="$http_status $(jqr '[.type, .title, .status, .detail] | map(tostring) | join("|")')"
	KEY=$other_key call GET "${path/default/nodefault}"
	want="$http_status $(jqr '[.type, .title, .status, .detail] | map(tostring) | join("|")')"
	is "$got" "${want//nodefault/default}" "another project's key: $path is 404 exactly as if absent"
done
KEY=$other_key call PATCH $P/apps/app-001 '{"scale_max_instances":2}'
is "$http_status" 404 "another project's key cannot PATCH (404)"
KEY=$other_key call DELETE $P/secrets/sec-001
is "$http_status" 404 "another project's key cannot DELETE (404)"
call GET $P/secrets/sec-001
is "$http_status" 200 "and the secret is still there"
for path in /v1/admin/nodes /v1/admin/keys; do
	KEY=$other_key call GET $path
	is "$http_status/$http_type" "403/application/problem+json" "a project key on $path: 403"
done
KEY=$other_key call POST /v1/projects '{"name":"p-by-key"}'
is "$http_status" 403 "a project key cannot create projects (403)"
KEY=$read_key call POST $P/config_maps '{"name":"by-reader","data":{"a":"b"}}'
is "$http_status" 403 "a read key cannot write (403)"

# --- secrets: never readable, encrypted at rest ---------------------------------

plain=s3cr3t-$$-plaintext
call POST $P/secrets '{"name":"hidden","data":{"password":"'$plain'"}}'
is "$http_status/$(jqr '.data_keys | join(",")')" "201/password" "create a secret: 201 with its keys"
unlike "$http_body" "$plain" "the create reply does not hold the value"
call PUT $P/secrets/hidden '{"data":{"password":"'$plain'","user":"'$plain'"}}'
unlike "$http_body" "$plain" "the replace reply does not hold it"
for k in "$LOOM_KEY" "$read_key"; do
	KEY=$k call GET $P/secrets/hidden
	is "$http_status/$(jqr '.data_keys | sort | join(",")')/$(jqr '.data // "none"')" \
		"200/password,user/none" "GET shows the keys and no data (key ${k:5:4}...)"
	unlike "$http_body" "$plain" "no read returns the value (GET, key ${k:5:4}...)"
	KEY=$k call GET "$P/secrets?limit=1000"
	unlike "$http_body" "$plain" "no read returns the value (list, key ${k:5:4}...)"
done
call POST $P/secrets '{"name":"hidden2","data":{"password":"'$plain'"}}' -H 'Idempotency-Key: sec-1'
call POST $P/secrets '{"name":"hidden2","data":{"password":"'$plain'"}}' -H 'Idempotency-Key: sec-1'
is "$(header Idempotent-Replayed)" true "a secret POST replayed"
unlike "$http_body" "$plain" "the replay does not hold the value"
call GET $P/secrets/hidden
etag=$(header ETag)
call PUT $P/secrets/hidden '{"data":{"password":"'$plain'"}}' -H "If-Match: $etag"
is "$http_status/$(jqr .format)" 200/generic "PUT with the ETag from GET: 200"
call PUT $P/secrets/tls1 "$(jq -nc --arg c "$tls_cert" --arg k "$tls_key" '{data:{tls_cert:$c,tls_key:$k}}')"
is "$http_status/$(jqr .format)" 200/tls "PUT without format keeps a tls secret tls"
call PUT $P/secrets/tls1 '{"data":{"tls_cert":"x"}}'
is "$http_status" 400 "and checks its data as tls"
is "$(sql "SELECT count(*) FROM secrets WHERE name IN ('hidden', 'hidden2')")" 2 "the secrets are stored"
is "$(sql "SELECT count(*) FROM secrets WHERE position(convert_to('$plain', 'UTF8') IN data_enc) > 0
	OR position(convert_to(encode(convert_to('$plain', 'UTF8'), 'base64'), 'UTF8') IN data_enc) > 0")" 0 \
	"data_enc in PostgreSQL holds no plaintext"
is "$(sql "SELECT octet_length(data_enc) > 28 FROM secrets WHERE name = 'hidden'")" t "data_enc holds ciphertext"
is "$(sql "SELECT (SELECT count(*) FROM outbox WHERE event::text LIKE '%$plain%')
	+ (SELECT count(*) FROM idempotency_keys WHERE response LIKE '%$plain%')")" 0 \
	"neither events nor kept replies hold the value"

# --- events: an outbox row per change, one CloudEvent on NATS -------------------

cat >"$tmp/natsub.py" <<'EOF'
# A minimal NATS subscriber: prints the first message on SUBJECT whose
# payload contains NEEDLE; touches READY once subscribed.
import socket, sys
url, subject, needle, ready = sys.argv[1:5]
host, port = url.split("//")[1].split(":")
s = socket.create_connection((host, int(port)), timeout=60)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB ' + subject.encode() + b' 1\r\nPING\r\n')
while True:
    line = f.readline()
    if not line:
        sys.exit(1)
    if line.startswith(b"PONG"):
        open(ready, "w").close()
    elif line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith(b"MSG"):
        n = int(line.split()[-1])
        data = f.read(n + 2)[:n]
        if needle.encode() in data:
            sys.stdout.write(data.decode())
            sys.exit(0)
EOF
python3 "$tmp/natsub.py" "$LOOM_NATS_URL" "loom.events.default.>" '"ev-cm"' "$tmp/nats.ready" \
	>"$tmp/nats.out" 2>"$tmp/nats.err" &
natsub=$!
ok "a NATS subscriber is ready" wait_for 20 test -e "$tmp/nats.ready"
call POST $P/config_maps '{"name":"ev-cm","data":{"a":"1"}}'
call PUT $P/config_maps/ev-cm '{"data":{"a":"2"}}'
call DELETE $P/config_maps/ev-cm
nats_done() { ! kill -0 "$natsub" 2>/dev/null; }
ok "a CloudEvent arrives on NATS" wait_for 30 nats_done
ev=$(cat "$tmp/nats.out")
is "$(jq -r '[.specversion, .type, .source, .subject] | join(" ")' <<<"$ev" 2>/dev/null)" \
	"1.0 dev.loom.config_map.created /v1/projects/default ev-cm" "it is a CloudEvent for the create"
kill "$natsub" 2>/dev/null
wait "$natsub" 2>/dev/null
is "$(sql "SELECT string_agg(event->>'type', ',' ORDER BY id) FROM outbox WHERE event->>'subject' = 'ev-cm'")" \
	"dev.loom.config_map.created,dev.loom.config_map.updated,dev.loom.config_map.deleted" \
	"one outbox row per create, update and delete"
for k in app:app-007 job:job-003 secret:sec-010 config_map:cm-010 job_run:run-001 project:pg-002; do
	is "$(sql "SELECT count(*) > 0 FROM outbox WHERE subject = 'loom.events.' ||
		CASE WHEN '${k%%:*}' = 'project' THEN 'pg-002' ELSE 'default' END || '.${k%%:*}'
		AND event->>'subject' = '${k#*:}'")" t "the outbox has ${k%%:*} events"
done
is "$(sql "SELECT string_agg(DISTINCT event->>'type', ',') FROM outbox WHERE event->>'subject' IN ('app-007', 'app-002')")" \
	"dev.loom.app.created,dev.loom.app.deleted,dev.loom.app.updated" "an app's create, update and delete events"
published() { [ "$(sql "SELECT count(*) FROM outbox WHERE published_at IS NULL")" = 0 ]; }
ok "the outbox is published" wait_for 30 published
is "$(sql "SELECT count(*) FROM outbox o WHERE event->>'subject' = 'x' OR event->>'subject' = 'by-reader'")" 0 \
	"no event for refused requests"

# --- body cap, OpenAPI ----------------------------------------------------------

head -c 1100000 /dev/zero | tr '\0' 'a' >"$tmp/big.txt"
printf '{"name":"big","data":{"k":"%s"}}' "$(cat "$tmp/big.txt")" >"$tmp/big.json"
call POST $P/config_maps "" --data-binary @"$tmp/big.json" -H 'Content-Type: application/json'
is "$http_status" 413 "a body over the cap: 413"
call GET $P/config_maps/big
is "$http_status" 404 "and nothing was created"

KEY=- call GET /openapi.json
is "$http_status" 200 "GET /openapi.json without a key"
jq -r '.paths | to_entries[] | .key as $p | .value | keys[] | "\(ascii_upcase) \($p)"' <<<"$http_body" |
	sed 's/{[a-z_]*}/{}/g' | sort >"$tmp/documented"
grep -oE '\{"(GET|POST|PUT|PATCH|DELETE)", "[^"]+"' "$repo/services/api/routes.c" |
	sed -E 's/\{"([A-Z]+)", "([^"]+)"/\1 \2/' | sort >"$tmp/routes"
is "$(diff "$tmp/routes" "$tmp/documented")" "" "openapi.json's operations equal routes.c's routes"
unserved=""
while read -r m p; do
	[ "$p" = /openapi.json ] && continue
	KEY=- call "$m" "${p//\{\}/x}"
	[ "$http_status" = 401 ] || unserved+="$m $p -> $http_status; "
done <"$tmp/documented"
is "$unserved" "" "every documented operation is served (401 without a key, not 404 or 405)"
KEY=- call GET /v1/not-a-route
is "$http_status" 404 "an undocumented path is not served"
KEY=- call GET /openapi.json
is "$(jqr '.components.schemas.JobFields.properties | has("scale_nodes") and has("priority")
	and has("node_selector") and has("placement") and has("gang_timeout")')" true \
	"the document has the job fields"
is "$(jqr '.components.schemas.AppFields.properties | has("scale_initial_instances") and
	has("scale_concurrency_target") and has("probe_readiness") and has("visibility")')" true \
	"the document has the app fields"

# every member of a reply is in the document (top level and status_details)
# (the document is larger than one argument may be: jq reads it from a file)
printf '%s' "$http_body" >"$tmp/openapi.json"
undocumented() { # SCHEMA JSON: the members of JSON that SCHEMA does not describe
	jq -rn --slurpfile docs "$tmp/openapi.json" --argjson obj "$2" --arg s "$1" '
		$docs[0] as $doc
		| def props(x): (if x["$ref"] then props($doc.components.schemas[x["$ref"] | split("/") | last])
			else {} end) + ([x.allOf[]? | props(.)] | add // {}) + (x.properties // {});
		props($doc.components.schemas[$s]) as $p
		| ([$obj | keys[]] - [$p | keys[]])
		+ ([($obj.status_details // {}) | keys[]] - [($p.status_details.properties // {}) | keys[]]
			| map("status_details." + .))
		| join(",")' || echo "(jq could not compare)"
}
for r in App:apps/full Job:jobs/full JobRun:job_runs/run-003 Secret:secrets/tls1 \
	ConfigMap:config_maps/cm-010; do
	call GET "$P/${r#*:}"
	is "$(undocumented "${r%%:*}" "$http_body")" "" "GET ${r#*:}: every member is in schema ${r%%:*}"
done
call GET /v1/projects/pg-001
is "$(undocumented Project "$http_body")" "" "GET a project: every member is in schema Project"

# --- 429: a second API replica with a limit of 1 a second ----------------------

rl_port=""
free_port rl_port
(
	export LOOM_API_ADDR=127.0.0.1:$rl_port LOOM_API_RATE_LIMIT=1
	exec "$bin/loom-api" >"$tmp/api-rl.log" 2>&1 </dev/null
) &
rl_pid=$!
rl_ready() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$rl_port/readyz"; }
ok "a second API replica with LOOM_API_RATE_LIMIT=1 is ready" wait_for 30 rl_ready
# a burst of 2 is allowed, so at most the third quick request is refused;
# send up to 20 and look at the first refusal
limited=""
for ((i = 0; i < 20; i++)); do
	LOOM_API=http://127.0.0.1:$rl_port call GET $P/apps/app-001
	if [ "$http_status" = 429 ]; then
		limited=$http_status
		break
	fi
done
is "$limited/$http_type" "429/application/problem+json" "over the rate limit: 429 problem"
like "$(header Retry-After)" '^[1-9][0-9]*$' "with Retry-After in seconds"
kill "$rl_pid" 2>/dev/null
wait "$rl_pid" 2>/dev/null

finish
