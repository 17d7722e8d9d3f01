#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Logs, end to end:
#   - complete at completion: `jobrun logs` right after `--wait` has every
#     line, again and again; with the logshipper away, the read says which
#     instances may miss lines, and has them once it is back
#   - lines over 16 KiB come back whole; filters --index, --instance,
#     --stream, --since, --tail; bad ones are 400s naming the parameter
#   - -f follows a run until it ends, and an app, through a kill -9 of the
#     logshipper: every line once, in order
#   - a container writing without end is held to its rate and disk caps,
#     with a marker of what was dropped, while another's lines flow
#   - retention by size and by age, per project
#   - a round whose PostgreSQL connection is cut during its COPY is shipped
#     again: every line once; the LogBatches of many short lines are
#     published whole
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

export LOOM_API_LOGS_WAIT=2s LOOM_LOGSHIPPER_RETENTION_INTERVAL=1s
export LOOM_AGENT_LOG_RATE=256Ki LOOM_AGENT_LOG_BURST=512Ki LOOM_AGENT_LOG_MAX_DISK=4Mi
platform_up
image=$LOOM_REGISTRY/loom/busybox:latest
sql() { psql "$LOOM_PG_DSN" -XAtq -F'|' -c "$1" 2>&1; }
run_status() { loom jobrun get "$1" -o json 2>/dev/null | jq -r .status; }

# --- complete at completion ---------------------------------------------------------
complete=0
for n in 1 2 3 4 5; do
	# shellcheck disable=SC2016
	loom jobrun submit --name done$n --image "$image" --array-indices 0-2 --wait \
		--cmd 'echo first $JOB_INDEX; echo middle $JOB_INDEX >&2; echo last $JOB_INDEX' >/dev/null 2>&1
	got=$(loom jobrun logs done$n 2>"$tmp/done$n.err" | sort | paste -sd,)
	[ "$got" = "[0] first 0,[0] last 0,[0] middle 0,[1] first 1,[1] last 1,[1] middle 1,[2] first 2,[2] last 2,[2] middle 2" ] &&
		complete=$((complete + 1)) || diag "done$n: $got $(cat "$tmp/done$n.err")"
done
is "$complete" 5 "right after --wait, jobrun logs shows every line (5 runs of 3 indices)"
is "$(sql "SELECT count(*) FROM log_streams s JOIN instances i ON i.id = s.instance_id
	JOIN job_runs r ON r.id = i.job_run_id WHERE r.name LIKE 'done%' AND s.eos_at IS NOT NULL")" 15 \
	"each instance's end of stream is marked"

ok "the logshipper is stopped" halt logshipper TERM
# shellcheck disable=SC2016
loom jobrun submit --name unshipped --image "$image" --wait --cmd 'echo not yet' >/dev/null 2>&1
t0=$(now_ms)
out=$(loom jobrun logs unshipped 2>&1)
waited=$(($(now_ms) - t0))
like "$out" "loom: warning: instance [0-9a-f-]+: node $LOOM_NODE_NAME has not shipped the end of this instance's output yet \(waited 2 s\)" \
	"without the logshipper, the read says which instance may miss lines"
ok "after waiting for them about 2 s ($waited ms)" test "$waited" -ge 1800 -a "$waited" -lt 6000
unhalt logshipper
shipped() { [ "$(loom jobrun logs unshipped 2>&1)" = "[0] not yet" ]; }
ok "once the logshipper is back, the line is there and nothing is missing" wait_for 20 shipped

# --- long lines, filters -------------------------------------------------------------------
# shellcheck disable=SC2016
loom jobrun submit --name long --image "$image" --array-indices 0-1 --wait \
	--cmd 'awk -v n=$((40000 + JOB_INDEX * 60000)) "BEGIN { s = \"\"; for (i = 0; i < n; i++) s = s \"x\"; print \"L\" s \"R\"; print \"after\" > \"/dev/stderr\" }"' \
	>/dev/null 2>&1
lens=$(loom jobrun logs long -o json | jq -r 'select(.stream == "stdout") | "\(.index):\(.line | length):\(.line[0:2]):\(.line[-2:])"' | paste -sd,)
is "$lens" "0:40002:Lx:xR,1:100002:Lx:xR" "lines of 40 and 100 KB come back whole (joined from 16 KiB parts)"
is "$(loom jobrun logs long --stream stderr | paste -sd,)" "[0] after,[1] after" "--stream stderr"
is "$(loom jobrun logs long --index 1 --stream stderr)" "[1] after" "--index"
is "$(loom jobrun logs long --index 0 --tail 1)" "[0] after" "--tail 1: the last line"
inst=$(sql "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'long' AND i.array_index = 1")
is "$(loom jobrun logs long --instance "$inst" --stream stderr)" "[1] after" "--instance"
is "$(loom jobrun logs long --since "$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)" | wc -l)" 0 "--since a later time: nothing"
is "$(loom jobrun logs long --since 1h --stream stderr | wc -l)" 2 "--since 1h: everything"
for bad in "stream=both" "tail=0" "since=yesterday" "instance=x" "index=-1" "follow=maybe"; do
	api GET "/v1/projects/default/job_runs/long/logs?$bad"
	like "$http_status $(jq -r .detail <<<"$http_body")" "^400 query parameter \"${bad%%=*}\": " \
		"?$bad is a 400 naming it"
done
api GET "/v1/projects/default/apps/nope/logs?index=1"
like "$http_status $(jq -r .detail <<<"$http_body")" '^400 query parameter "index": only job runs' \
	"an app has no index"

# --- following -----------------------------------------------------------------------------
# shellcheck disable=SC2016
loom jobrun submit --name stream --image "$image" --array-indices 0-1 \
	--cmd 'sleep 1; for i in $(seq 1 20); do echo "$JOB_INDEX/$i"; sleep 0.1; done' >/dev/null 2>&1
timeout 90 loom jobrun logs stream -f >"$tmp/stream.out" 2>"$tmp/stream.err"
is "$?" 0 "jobrun logs -f ends when the run does"
want=$(for x in 0 1; do for i in $(seq 1 20); do echo "[$x] $x/$i"; done; done)
is "$(sort -t/ -k1,1 -k2,2n "$tmp/stream.out")" "$want" "every line once"
is "$(grep '^\[0\]' "$tmp/stream.out" | paste -sd,)" "$(grep '^\[0\]' <<<"$want" | paste -sd,)" \
	"in the order each index wrote them"

# an app writing a numbered line every 50 ms, followed through a kill -9 of the logshipper
# shellcheck disable=SC2016
out=$(loom app create ticker --image "$image" --min-scale 1 --port 8080 --cpu 0.25 --memory 1G \
	--cmd 'i=0; (while :; do i=$((i + 1)); echo "tick $i"; sleep 0.05; done) & exec httpd -f -p 8080 -h /etc' 2>&1)
is "$?" 0 "an app that writes a line every 50 ms" || diag "$out"
loom app logs ticker -f >"$tmp/ticker.out" 2>"$tmp/ticker.err" &
follow_pid=$!
ticks() { grep -c '^\[........\] tick ' "$tmp/ticker.out"; }
some() { [ "$(ticks)" -ge "$1" ]; }
ok "app logs -f shows the lines as they come" wait_for 30 some 20
ok "kill -9 the logshipper, and start it again" respawn logshipper KILL
before=$(ticks)
ok "lines keep coming after the restart" wait_for 30 some $((before + 40))
kill "$follow_pid"
wait "$follow_pid" 2>/dev/null
nums=$(sed -n 's/^\[........\] tick //p' "$tmp/ticker.out")
first=$(head -1 <<<"$nums")
last=$(tail -1 <<<"$nums")
is "$(paste -sd, <<<"$nums")" "$(seq "$first" "$last" | paste -sd,)" \
	"every tick from $first to $last exactly once, in order, across the restart"

# --- a flood ----------------------------------------------------------------------------------
# shellcheck disable=SC2016
# (small requests: the ticker, the flood and the quiet job fit on the node at once)
loom jobrun submit --name flood --image "$image" --maxexecutiontime 300 --retrylimit 0 \
	--cpu 0.25 --memory 1G \
	--cmd 'while :; do echo "flooding flooding flooding flooding flooding flooding flooding"; done' \
	>/dev/null 2>&1
flooding() { [ "$(run_status flood)" = running ]; }
ok "a job floods its output" wait_for 60 flooding
sleep 3
# shellcheck disable=SC2016
loom jobrun submit --name quiet --image "$image" --cpu 0.25 --memory 1G --wait \
	--cmd 'echo still heard' >/dev/null 2>&1
is "$(loom jobrun logs quiet)" "[0] still heard" "another job's line is all there while it floods"
fid=$(sql "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'flood'")
blocks=$(stat -c %b "$LOOM_HOME/agent/instances/$fid/container.log" 2>/dev/null)
written=$(stat -c %s "$LOOM_HOME/agent/instances/$fid/container.log" 2>/dev/null)
disk=$((${blocks:-999999999} * 512))
diag "the flood wrote ${written:-?} bytes to its log; they take $disk bytes on disk"
ok "the flood's log takes at most its 4 MiB cap on disk ($disk bytes)" test "$disk" -le $((5 * 1024 * 1024))
sleep 4
grown=$(($(stat -c %s "$LOOM_HOME/agent/instances/$fid/container.log" 2>/dev/null || echo 0) - ${written:-0}))
ok "it writes at its rate of 256 KiB/s, markers included ($grown bytes in 4 s)" \
	test "$grown" -gt 0 -a "$grown" -le $((4 * 270 * 1024))
marker() { loom jobrun logs flood --stream stderr --tail 5 2>/dev/null | grep -qE '\[loom\] [0-9]+ lines \([0-9]+ bytes\) of output dropped: '; }
ok "a marker line says what was dropped" wait_for 20 marker
loom jobrun cancel flood >/dev/null 2>&1

# --- retention ------------------------------------------------------------------------------
loom-admin projects create other >/dev/null 2>&1
okey=$(loom-admin keys create --project other --role write | grep -o 'loom_[0-9a-f]\{12\}_[A-Za-z0-9_-]\{43\}')
# shellcheck disable=SC2016
LOOM_PROJECT=other LOOM_KEY=$okey loom jobrun submit --name keep --image "$image" --wait \
	--cmd 'for i in $(seq 1 50); do echo "other line $i"; done' >/dev/null 2>&1
other_lines() { sql "SELECT count(*) FROM log_lines l JOIN projects p ON p.id = l.project_id WHERE p.name = 'other'"; }
is "$(other_lines)" 50 "project other has its 50 lines"
before_default=$(sql "SELECT count(*) FROM log_lines WHERE project_id = 1")
out=$(loom-admin logs retention set --project default --max-age 7d --max-size 20K 2>&1)
like "$out" '^default: lines kept 604800 s \(own policy\), at most 20K of text' "a size limit for project default"
small() { [ "$(sql "SELECT coalesce(sum(octet_length(line)), 0) <= 20000 FROM log_lines WHERE project_id = 1")" = t ]; }
ok "retention brings default under 20 KB" wait_for 20 small
is "$(sql "SELECT coalesce(sum(bytes), 0) = (SELECT coalesce(sum(octet_length(line)), 0) FROM log_lines WHERE project_id = 1)
	FROM log_streams WHERE project_id = 1")" t "log_streams counts what is left"
is "$(sql "SELECT count(*) FROM log_lines l JOIN instances i ON i.id = l.instance_id
	JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'done1'")" 0 "the oldest lines went first"
recent() { [ "$(sql "SELECT count(*) FROM log_lines WHERE project_id = 1 AND ts > now() - interval '5 seconds'")" -gt 0 ]; }
ok "the newest stay" wait_for 10 recent
ok "default lost lines ($before_default before)" test "$(sql "SELECT count(*) FROM log_lines WHERE project_id = 1")" -lt "$before_default"
is "$(other_lines)" 50 "and other kept all of its own"
sql "UPDATE log_lines l SET ts = ts - interval '3 days' FROM projects p WHERE p.id = l.project_id
	AND p.name = 'other' AND l.line IN ('other line 1', 'other line 2')" >/dev/null
out=$(loom-admin logs retention set --project other --max-age 2d 2>&1)
like "$out" '^other: lines kept 172800 s' "other keeps 2 days of lines"
aged() { [ "$(other_lines)" = 48 ]; }
ok "its two lines of 3 days ago go" wait_for 20 aged
out=$(loom-admin logs retention set --project nope --max-age 1d 2>&1)
like "$out" 'project nope not found' "retention for an unknown project is refused"
out=$(loom-admin logs retention set --max-age soon 2>&1)
like "$out" '--max-age: "soon" is not a duration' "a bad age is named"

# --- a round cut off in its COPY -------------------------------------------------------------
# A logshipper of its own ships 300,000 lines of an exited instance (of a
# project that does not exist: no retention policy touches them); its
# backend is terminated twice while a COPY runs.
cut=$tmp/cut-agent
cid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$cut/instances/$cid"
echo "{\"id\":\"$cid\",\"project\":\"cutoff\",\"kind\":\"job\"}" >"$cut/instances/$cid/instance.json"
# (and what log_lines must hold: count, sum of offsets, bytes of text)
want=$(awk -v ts="$(date -u +%Y-%m-%dT%H:%M:%S)" -v out="$cut/instances/$cid/container.log" 'BEGIN {
	for (i = 0; i < 300000; i++) {
		text = "cut line " i
		rec = sprintf("%s.%09dZ stdout F %s", ts, i, text)
		print rec >out
		offsets += off; bytes += length(text); off += length(rec) + 1
	}
	printf "%d|%d|%.0f|%.0f|%d", i, i, offsets, bytes, i }')
echo '{"exit_code":0}' >"$cut/instances/$cid/exit.json"
LOOM_PG_DSN="$LOOM_PG_DSN?application_name=cut-logshipper" "$bin/loom-logshipper" \
	--agent-state-dir "$cut" --node-name cutnode --http-addr 127.0.0.1:0 >"$tmp/cut.log" 2>&1 &
cut_pid=$!
copying() { [ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cut-logshipper'
	AND query LIKE 'COPY log_lines%' AND state = 'active'")" = 1 ]; }
cuts=0
for _ in 1 2; do
	wait_for 20 copying &&
		[ "$(sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = 'cut-logshipper' AND state = 'active'")" = t ] &&
		cuts=$((cuts + 1))
	sleep 0.5
done
is "$cuts" 2 "the logshipper's backend is terminated twice during a COPY"
cut_done() { [ "$(sql "SELECT eos_at IS NOT NULL FROM log_streams WHERE instance_id = '$cid'")" = t ]; }
ok "its end of stream is marked all the same" wait_for 60 cut_done
like "$(cat "$tmp/cut.log")" '"could not store log lines: ' "it said it lost a round"
like "$(cat "$tmp/cut.log")" "\"storing log lines of $cid again\"" "and that it stored it again"
unlike "$(cat "$tmp/cut.log")" 'could not publish' "each LogBatch of short lines fits in a NATS message"
is "$(sql "SELECT count(*), count(DISTINCT line), sum(\"offset\"), sum(octet_length(line)),
	(SELECT lines FROM log_streams WHERE instance_id = '$cid') FROM log_lines WHERE instance_id = '$cid'")" \
	"$want" "every line once, at its offset, and log_streams counts them"
kill "$cut_pid"
wait "$cut_pid" 2>/dev/null

finish
