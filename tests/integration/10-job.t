#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Job runs end to end: an array job runs every index in a container and its
# output reaches `loom jobrun logs`; an image that does not exist fails the run
# with a reason naming it; a malformed body is refused and creates nothing.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

platform_up
image=$LOOM_REGISTRY/loom/busybox:latest

run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }

# --- hello: three indices, each says hello --------------------------------
start=$(now_ms)
# shellcheck disable=SC2016 # $JOB_INDEX is for the container's shell
out=$(loom jobrun submit --name hello --image "$image" --cmd 'echo hello from $JOB_INDEX' \
	--array-indices 0-2 2>&1)
is "$?" 0 "jobrun submit hello" || diag "$out"

hello_done() { [ "$(run_field hello .status)" = completed ]; }
if wait_for 60 hello_done; then
	pass "hello completes"
else
	fail "hello completes within 60 s"
	diag "$(run_json hello)"
fi
submit_ms=$(($(now_ms) - start))
diag "submit to all 3 succeeded: $(seconds $submit_ms) s"
is "$(run_field hello .status_details.succeeded)" 3 "hello: 3 indices succeeded"
is "$(run_field hello .status_details.failed)" 0 "hello: none failed"
is "$(run_field hello .status_details.succeeded_indices)" 0-2 "hello: succeeded indices are 0-2"

# the logshipper ships within its poll interval; give it a moment
hello_logs() {
	logs=$(loom jobrun logs hello 2>&1)
	grep -q 'hello from 0' <<<"$logs" && grep -q 'hello from 1' <<<"$logs" &&
		grep -q 'hello from 2' <<<"$logs"
}
wait_for 15 hello_logs
diag "logs appeared $(seconds "$waited_ms") s after the run completed"
for i in 0 1 2; do
	like "$logs" "hello from $i" "jobrun logs hello has index $i's line"
done

# --- an image that does not exist ---------------------------------------------
missing=$LOOM_REGISTRY/loom/does-not-exist:latest
out=$(loom jobrun submit --name nope --image "$missing" --cmd 'true' 2>&1)
is "$?" 0 "jobrun submit with a missing image is accepted" || diag "$out"
nope_failed() { [ "$(run_field nope .status)" = failed ]; }
if wait_for 20 nope_failed; then
	pass "a run with a missing image fails"
	diag "failed $(seconds "$waited_ms") s after submit"
else
	fail "a run with a missing image fails within 20 s"
fi
reason=$(run_field nope '.status_details.indices_details[0].last_failure_reason')
like "$reason" 'loom/does-not-exist' "the failure reason names the image"
is "$(run_field nope '.status_details.indices_details[0].retries')" 0 \
	"a missing image is not retried"

# --- retries, with an image of our own -------------------------------------------
# odd indices fail every time: each is tried 1 + retrylimit times, then the
# run fails with exactly those indices failed
mkdir -p "$tmp/jobimg/usr/bin"
cat >"$tmp/jobimg/usr/bin/odd-fails" <<'SCRIPT'
#!/bin/sh
echo "index $JOB_INDEX try $JOB_INDEX_RETRY_COUNT"
[ $((JOB_INDEX % 2)) -eq 0 ]
SCRIPT
chmod 755 "$tmp/jobimg/usr/bin/odd-fails"
ok "build and push loom/oddfails:1 with tools/lib/image.sh" \
	image_build_busybox "$LOOM_REGISTRY/loom/oddfails:1" --add "$tmp/jobimg" --cmd '["odd-fails"]'
out=$(loom jobrun submit --name odd --image "$LOOM_REGISTRY/loom/oddfails:1" --array-indices 0-3 \
	--retrylimit 1 2>&1)
is "$?" 0 "jobrun submit odd (image Cmd, 4 indices, retrylimit 1)" || diag "$out"
odd_over() { [ "$(run_field odd .status)" = failed ]; }
ok "odd ends failed" wait_for 60 odd_over || diag "$(run_json odd)"
is "$(run_field odd .status_details.succeeded_indices)" "0,2" "even indices succeeded"
is "$(run_field odd .status_details.failed_indices)" "1,3" "odd indices failed"
is "$(run_field odd '[.status_details.indices_details[] | select(.index % 2 == 1) | .retries] | join(",")')" \
	"1,1" "each failed index was retried once"
is "$(run_field odd '[.status_details.indices_details[] | select(.index % 2 == 1) | .exit_code] | join(",")')" \
	"1,1" "the failed indices' exit code is 1"
odd_logs() {
	logs=$(loom jobrun logs odd --index 3 2>&1)
	grep -q 'index 3 try 0' <<<"$logs" && grep -q 'index 3 try 1' <<<"$logs"
}
ok "index 3's logs show both tries" wait_for 15 odd_logs || diag "$logs"

# --- a malformed body -----------------------------------------------------------
# count_runs: how many job runs the project has; "HTTP <status>" and a
# failure unless the API answers the list with 200
count_runs() {
	api GET /v1/projects/default/job_runs
	if [ "$http_status" != 200 ]; then
		echo "HTTP $http_status"
		return 1
	fi
	jq -e '.job_runs | length' <<<"$http_body"
}
is "$(count_runs)" 3 "the project lists the 3 runs submitted above"
api POST /v1/projects/default/job_runs '{"name": "broken", "image_reference": '
is "$http_status" 400 "a malformed body gets 400"
is "$http_type" application/problem+json "the error is application/problem+json"
is "$(jq -r .status <<<"$http_body" 2>/dev/null)" 400 "the problem's status is 400"
like "$(jq -r .detail <<<"$http_body" 2>/dev/null)" 'JSON' "the problem's detail says the JSON is invalid"
is "$(count_runs)" 3 "a malformed body creates nothing (still 3 runs)"
api GET /v1/projects/default/job_runs/broken
is "$http_status" 404 "no job run named broken exists"

finish
