#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through ok and wait_for
# API keys: no key and a wrong key are 401; a read key can read but not write
# (403); a project's key sees nothing of another project (404, as if it did
# not exist).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

platform_up

admin() { "$bin/loom-admin" "$@" 2>>"$tmp/admin.err"; }
quiet_admin() { admin "$@" >>"$tmp/admin.out"; }
runs=/v1/projects/default/job_runs

api GET $runs "" -
is "$http_status" 401 "no key: 401"
is "$http_type" application/problem+json "no key: the error is application/problem+json"

api GET $runs "" "loom_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
is "$http_status" 401 "a key that does not exist: 401"

# the right key id with a wrong secret
key_id=${LOOM_KEY#loom_}
key_id=${key_id%%_*}
api GET $runs "" "loom_${key_id}_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
is "$http_status" 401 "a real key id with a wrong secret: 401"

api GET $runs "" "not-a-loom-key"
is "$http_status" 401 "a malformed key: 401"

# something to read: a job run in default, made with the admin key
body='{"name":"probe","image_reference":"'"$LOOM_REGISTRY"'/loom/busybox:latest","run_commands":["true"]}'
api POST $runs "$body"
like "$http_status" '^20[01]$' "the admin key can create a job run"

read_key=$(admin keys create --project default --role read)
like "$read_key" '^loom_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$' "loom-admin creates a read key"
api GET $runs "" "$read_key"
is "$http_status" 200 "a read key can list job runs"
is "$(jq -r '.job_runs[].name' <<<"$http_body" 2>/dev/null)" probe "and sees the project's run"
api GET $runs/probe "" "$read_key"
is "$http_status" 200 "a read key can get a job run"
api POST $runs '{"name":"by-reader","image_reference":"'"$LOOM_REGISTRY"'/loom/busybox:latest"}' "$read_key"
is "$http_status" 403 "a read key cannot create a job run (403)"
api DELETE $runs/probe "" "$read_key"
is "$http_status" 403 "a read key cannot delete a job run (403)"
api GET $runs/by-reader
is "$http_status" 404 "the refused create made nothing"

# project isolation
ok "loom-admin creates project other" quiet_admin projects create other
other_key=$(admin keys create --project other --role write)
like "$other_key" '^loom_' "loom-admin creates a write key for other"
api GET /v1/projects/other/job_runs "" "$other_key"
is "$http_status" 200 "other's key lists other's job runs"
api GET $runs/probe "" "$other_key"
is "$http_status" 404 "other's key gets 404 for default's job run"
api GET $runs "" "$other_key"
is "$http_status" 404 "other's key gets 404 for default's job run list"
api GET /v1/projects/default "" "$other_key"
is "$http_status" 404 "other's key gets 404 for project default"
api POST $runs '{"name":"intruder","image_reference":"'"$LOOM_REGISTRY"'/loom/busybox:latest"}' "$other_key"
is "$http_status" 404 "other's key cannot create in default (404)"
api GET $runs/intruder
is "$http_status" 404 "and nothing was created"
api GET /v1/projects "" "$other_key"
is "$(jq -r '.projects[].name' <<<"$http_body" 2>/dev/null | paste -sd,)" other \
	"other's key lists only its own project"

# a revoked key stops working (the API caches a valid key for up to 5 s)
ok "loom-admin revokes the read key" quiet_admin keys revoke "$(cut -d_ -f2 <<<"$read_key")"
refused() {
	api GET "$runs" "" "$read_key"
	[ "$http_status" = 401 ]
}
wait_for 10 refused
is "$http_status" 401 "a revoked key: 401 (after $(seconds "$waited_ms") s)"

finish
