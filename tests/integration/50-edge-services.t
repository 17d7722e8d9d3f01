#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# The edge services alone, against their own PostgreSQL and nats-server (no
# agent, no scheduler: instance rows are written by hand, upstreams are a
# Python echo server):
#   loom-activator   path and Host routing, proxying (method, body, headers,
#                    status), 404s, hold + 503 with Retry-After, a held request
#                    released by a new instance, per-instance concurrency limit
#   loom-logshipper  CRI lines into log_lines once (restart: no duplicates),
#                    malformed lines skipped, partial lines wait, LogBatch out
#   loom-metering    LOOM_USAGE samples stored once per (instance, seq)
#   loom-builder     refuses build requests with an Ack that says why
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

for b in loom-activator loom-logshipper loom-metering loom-builder; do
	[ -x "$bin/$b" ] || skip_all "$b is not built ($bin)"
done
[ "$(id -u)" -eq 0 ] || skip_all "needs root (PostgreSQL runs as the postgres user)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$pgbin/initdb" ] || skip_all "needs PostgreSQL"
command -v nats-server >/dev/null || skip_all "needs nats-server"
command -v python3 >/dev/null || skip_all "needs python3"

tmp=$(mktemp -d /tmp/loom-edge.XXXXXX)
chmod 755 "$tmp"
helper="python3 $it_dir/edge_helper.py"
pids=()
free_port pg_port
free_port nats_port
free_port act_port
free_port act2_port
free_port up1_port
free_port up2_port
free_port dead_port
free_port ls_port
free_port met_port
free_port bld_port
export EDGE_NATS_PORT=$nats_port
export LOOM_PG_DSN="host=127.0.0.1 port=$pg_port user=loom dbname=loom"
export LOOM_NATS_URL=nats://127.0.0.1:$nats_port

cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	runuser -u postgres -- "$pgbin/pg_ctl" -D "$tmp/pg/data" -m immediate stop >/dev/null 2>&1 || true
}
on_exit() {
	local rc=$?
	cleanup
	if [ $tap_finished -eq 0 ]; then
		diag "test ended early (exit $rc); logs kept in $tmp"
		echo "1..$tap_n"
	fi
}
trap on_exit EXIT

# start NAME CMD...: runs CMD in the background, logging to $tmp/NAME.log
start() {
	local name=$1
	shift
	"$@" >>"$tmp/$name.log" 2>&1 &
	pids+=($!)
	eval "${name}_pid=$!"
}
psql_q() { psql -X -qAt -h 127.0.0.1 -p "$pg_port" -U loom -d loom -v ON_ERROR_STOP=1 "$@"; }
# listens PORT...: something accepts connections on each port of 127.0.0.1
listens() {
	local p
	for p; do (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || return 1; done
}
# ready URL: the service at URL answers /readyz with 200
ready() { [ "$(http_code "$1/readyz")" = 200 ]; }

# --- PostgreSQL and NATS -------------------------------------------------------
mkdir -p "$tmp/pg" "$tmp/nats"
chown postgres "$tmp/pg"
runuser -u postgres -- "$pgbin/initdb" -D "$tmp/pg/data" -A trust -U loom -E UTF8 --no-locale \
	>"$tmp/initdb.log" 2>&1 || bail_out "initdb failed: $(tail -3 "$tmp/initdb.log")"
runuser -u postgres -- "$pgbin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/log" -w \
	-o "-p $pg_port -k $tmp/pg -c listen_addresses=127.0.0.1" start >/dev/null ||
	bail_out "PostgreSQL did not start"
psql -X -q -h 127.0.0.1 -p "$pg_port" -U loom -d postgres -c 'CREATE DATABASE loom'
for f in "$repo"/migrations/*.sql; do
	psql_q -f "$f" >/dev/null || bail_out "migration $f failed"
done
start nats nats-server -js -sd "$tmp/nats" -a 127.0.0.1 -p "$nats_port"
ok "nats-server listens" wait_for 10 listens "$nats_port" || bail_out "nats-server did not start"

# --- the activator ---------------------------------------------------------------
# app_row NAME CONCURRENCY [DESIRED]: the SQL of an app in project p as the
# API stores it (its spec, and the spec's integers in their columns)
app_row() {
	echo "INSERT INTO apps (project_id, name, spec, cpu_millis, memory_bytes, ephemeral_bytes,
	gpus, port, concurrency, target, desired_instances)
	SELECT id, '$1', '{\"image_reference\":\"x\",\"scale_concurrency\":$2}', 1000, 4000000000,
	400000000, 0, 8080, $2, $2, ${3:-0} FROM projects WHERE name = 'p';"
}
start up1 $helper upstream "$up1_port"
start up2 $helper upstream "$up2_port"
psql_q <<SQL
INSERT INTO projects (name) VALUES ('p');
INSERT INTO nodes (name, address, boot_id, cpu_millis, memory_bytes) VALUES ('n1', '127.0.0.1', 'b', 1000, 1000000000);
$(app_row a 100)
$(app_row cold 100)
$(app_row two 1)
INSERT INTO instances (project_id, kind, app_id, node_name, epoch, cpu_millis, memory_bytes, state, address)
  SELECT a.project_id, 'app', a.id, 'n1', 1, 100, 1000, 'running', '127.0.0.1:$up1_port' FROM apps a WHERE a.name = 'a';
-- 'two': two live instances and one that refuses connections
INSERT INTO instances (project_id, kind, app_id, node_name, epoch, cpu_millis, memory_bytes, state, address)
  SELECT a.project_id, 'app', a.id, 'n1', 1, 100, 1000, 'running', x FROM apps a,
  unnest(ARRAY['127.0.0.1:$up1_port', '127.0.0.1:$up2_port', '127.0.0.1:$dead_port']) x WHERE a.name = 'two';
-- an instance that is not running yet does not count
INSERT INTO instances (project_id, kind, app_id, node_name, epoch, cpu_millis, memory_bytes, state, address)
  SELECT a.project_id, 'app', a.id, 'n1', 1, 100, 1000, 'starting', '127.0.0.1:$up1_port' FROM apps a WHERE a.name = 'cold';
SQL
start act "$bin/loom-activator" --http-addr "127.0.0.1:$act_port" --hold-timeout 2s
act=http://127.0.0.1:$act_port
ok "the activator is ready" wait_for 10 ready "$act" ||
	bail_out "the activator did not become ready: $(tail -5 "$tmp/act.log")"
ok "both upstreams listen" wait_for 10 listens "$up1_port" "$up2_port"

jq_body() { jq -r "$1" <<<"$http_body"; }

get -D "$tmp/h" -H 'X-Foo: bar' -H 'X-Request-Id: edge-test-1' "$act/apps/p/a/hello/w%20x?q=1&y=a%20b&flag"
is "$http_status" 200 "path form: GET answers 200"
is "$(jq_body .path)" "/hello/w%20x?q=1&y=a%20b&flag" "path form: upstream path is / + rest + query, still encoded"
is "$(jq_body '.headers["x-foo"]')" bar "request headers are forwarded"
is "$(jq_body '.headers["x-forwarded-for"]')" 127.0.0.1 "X-Forwarded-For is set"
is "$(jq_body '.headers["x-forwarded-proto"]')" http "X-Forwarded-Proto is set"
is "$(jq_body '.headers["x-forwarded-host"]')" "127.0.0.1:$act_port" "X-Forwarded-Host is the client's Host"
is "$(jq_body '.headers["x-request-id"]')" edge-test-1 "the request id goes upstream"
like "$(cat "$tmp/h")" 'X-Upstream: yes' "response headers come back"
like "$(cat "$tmp/h")" 'X-Request-Id: edge-test-1' "the response carries the request id"

get -X POST -H 'Content-Type: text/plain' --data-binary 'hello body' "$act/apps/p/a/status/201"
is "$http_status" 201 "POST: the upstream's status comes back"
is "$(jq_body .method)/$(jq_body .body)" "POST/hello body" "POST: method and body reach the upstream"
get -X PUT --data-binary 'x' "$act/apps/p/a/status/404"
is "$http_status/$(jq_body .method)" "404/PUT" "an upstream 404 passes through"

get -H "Host: a.p.loom.localhost:$act_port" "$act/deep/path?k=v"
is "$http_status/$(jq_body .path)" "200//deep/path?k=v" "Host form: the full path goes upstream"
get -H "Host: a.p.loom.localhost" "$act/apps/p/cold/"
is "$(jq_body .path)" "/apps/p/cold/" "Host form wins over the path form"
get -H "Host: a.p.loom.localhost" "$act/metrics?x=1"
is "$http_status/$(jq_body .path)" "200//metrics?x=1" "Host form: the app's own /metrics is the app's"

get "$act/apps/p/nope/"
is "$http_status/$http_type" "404/application/problem+json" "an unknown app is a 404 problem"
get -H "Host: nope.p.loom.localhost" "$act/"
is "$http_status" 404 "an unknown app by Host is a 404"
get "$act/elsewhere"
is "$http_status" 404 "a request for no app is a 404"
is "$(http_code "$act/livez")/$(http_code "$act/metrics")" 200/200 "/livez and /metrics still answer"

# scaled to zero: held, a ScaleDecision goes out, 503 + Retry-After at the deadline
start scalesub $helper sub 'loom.>' 30
ok "a subscriber to loom.> is subscribed" wait_for 5 grep -q subscribed "$tmp/scalesub.log"
t0=$(now_ms)
get -D "$tmp/h" "$act/apps/p/cold/"
held_ms=$(($(now_ms) - t0))
is "$http_status" 503 "no ready instance: 503 after the hold"
ok "held for about the hold timeout (${held_ms} ms)" test $held_ms -ge 1900 -a $held_ms -lt 4000
like "$(cat "$tmp/h")" 'Retry-After: [0-9]+' "the 503 has Retry-After"
like "$(jq_body .detail)" 'no instance' "the 503 says why"
ok "a ScaleDecision for p/cold was published" wait_for 3 grep -qE '^loom.scale.decision .*cold' "$tmp/scalesub.log"
ok "the scheduler was woken" grep -q '^loom.sched.wake 0' "$tmp/scalesub.log"

# a held request goes through once an instance is running
curl -s -m 10 -o "$tmp/held.body" -w '%{http_code}' "$act/apps/p/cold/released" >"$tmp/held.code" 2>&1 &
held_pid=$!
sleep 0.7
psql_q -c "UPDATE instances SET state = 'running' WHERE app_id = (SELECT id FROM apps WHERE name = 'cold')"
$helper pub loom.app.p.cold
wait $held_pid
is "$(cat "$tmp/held.code")" 200 "the held request is answered when an instance becomes ready"
is "$(jq -r .path "$tmp/held.body")" /released "and it reached the instance"

# concurrency limit 1 on two live instances (and a dead one): nothing is lost,
# no instance ever has two requests at once
cpids=()
for i in 1 2 3 4 5 6; do
	curl -s -m 10 -o "$tmp/c$i.out" "$act/apps/p/two/sleep/300" &
	cpids+=($!)
done
wait "${cpids[@]}"
ports=$(jq -r .port "$tmp"/c?.out | sort -u | paste -sd,)
is "$ports" "$(printf '%s\n' "$up1_port" "$up2_port" | sort -u | paste -sd,)" "requests are spread over both live instances"
is "$(jq -r .max_conc "$tmp"/c?.out | sort -u | paste -sd,)" 1 "no instance got more than its concurrency"
is "$(grep -c '"port"' "$tmp"/c?.out | awk -F: '{ s += $2 } END { print s }')" 6 "every request was served"
like "$(curl -s "$act/metrics")" 'loom_activator_requests_total\{code="503"\} 1' "metrics count requests by code"

# the autoscaler's windows count in ticks of the configured length: with
# --tick 200ms, an idle app keeps its instance for the whole 2 s stable
# window (not one 200 ms tick, as when the tick length was a constant 2 s)
psql_q -c "$(app_row idle 100 1)"
start act2 "$bin/loom-activator" --http-addr "127.0.0.1:$act2_port" --tick 200ms \
	--stable-window 2s --panic-window 2s
ok "the second activator is ready" wait_for 10 ready "http://127.0.0.1:$act2_port" ||
	bail_out "the second activator did not become ready: $(tail -5 "$tmp/act2.log")"
t0=$(now_ms)
ok "the idle app is scaled to zero" wait_for 10 grep -q 'scale p/idle to 0' "$tmp/act2.log"
idle_ms=$(($(now_ms) - t0))
ok "an idle app scales to zero after the stable window, not after one tick ($(seconds $idle_ms) s)" \
	test $idle_ms -ge 1000 -a $idle_ms -lt 8000

# a request held (scaled to zero) while its app is deleted: a 404, and the
# held-requests gauge goes back to 0 (it kept counting the request before)
act2=http://127.0.0.1:$act2_port
psql_q -c "$(app_row gone 100)"
curl -s -m 20 -o "$tmp/gone.body" -w '%{http_code}' "$act2/apps/p/gone/" >"$tmp/gone.code" 2>&1 &
gone_pid=$!
held_gauge() { curl -s "$act2/metrics" | sed -n 's/^loom_activator_held_requests //p'; }
held_is() { [ "$(held_gauge)" = "$1" ]; }
ok "the request for the scaled-to-zero app is held" wait_for 10 held_is 1
psql_q -c "DELETE FROM apps WHERE name = 'gone'"
wait $gone_pid
is "$(cat "$tmp/gone.code")" 404 "a request held while its app is deleted gets a 404"
is "$(held_gauge)" 0 "the held-requests gauge is back to 0"
kill "$act2_pid" 2>/dev/null

# --- the logshipper -----------------------------------------------------------------
id=22222222-2222-4222-8222-222222222222
idir=$tmp/agent/instances/$id
mkdir -p "$idir"
echo "{\"id\":\"$id\",\"project\":\"p\",\"kind\":\"app\",\"app\":\"a\"}" >"$idir/instance.json"
printf '2026-11-28T04:25:32.123456789Z stdout F hello\n2026-11-28T04:25:33Z stderr F err "q" \\ {x,y}\nnot a cri line\n2026-11-28T04:25:34Z stdout F part' >"$idir/container.log"
start logsub $helper sub "loom.logs.p.$id" 30
ok "a subscriber to the instance's logs is subscribed" wait_for 5 grep -q subscribed "$tmp/logsub.log"
start ls "$bin/loom-logshipper" --http-addr "127.0.0.1:$ls_port" --agent-state-dir "$tmp/none,$tmp/agent"
lines() { psql_q -F '|' -c "SELECT \"offset\", stream, line FROM log_lines WHERE instance_id = '$id' ORDER BY 1"; }
count2() { [ "$(lines | wc -l)" -ge 2 ]; }
ok "complete lines are shipped" wait_for 5 count2
is "$(lines)" "0|stdout|hello
46|stderr|err \"q\" \\ {x,y}" "offsets, streams and text are stored; the partial line waits"
ok "a malformed line is skipped with a warning" grep -q 'skipping malformed line at offset 92' "$tmp/ls.log"
printf 'ial\n2026-11-28T04:25:35Z stdout F caf\xc3\xa9 \xff\n' >>"$idir/container.log"
count4() { [ "$(lines | wc -l)" -ge 4 ]; }
ok "the rest of the partial line ships" wait_for 5 count4
is "$(lines | tail -n2)" "107|stdout|partial
145|stdout|café �" "the completed line and an invalid byte replaced"
kill "$ls_pid"
wait "$ls_pid"
is "$?" 0 "the logshipper stops cleanly"
printf '2026-11-28T04:25:36Z stdout F after restart\n' >>"$idir/container.log"
start ls "$bin/loom-logshipper" --http-addr "127.0.0.1:$ls_port" --agent-state-dir "$tmp/agent"
count5() { [ "$(lines | wc -l)" -ge 5 ]; }
ok "after a restart the new line ships" wait_for 5 count5
sleep 0.5
is "$(lines | cut -d'|' -f1 | paste -sd,)" "0,46,107,145,183" "each line is stored exactly once"
ok "LogBatch messages were published" grep -qE "^loom.logs.p.$id .*hello" "$tmp/logsub.log"
ok "the later lines were published too" grep -qE "^loom.logs.p.$id .*after restart" "$tmp/logsub.log"
rm -rf "$idir"
ok "a vanished instance is forgotten" wait_for 5 grep -q "instance $id is gone" "$tmp/ls.log"
psql_q -c "UPDATE log_lines SET ts = now() - interval '8 days' WHERE \"offset\" < 100" >/dev/null
kill "$ls_pid"
wait "$ls_pid"
start ls "$bin/loom-logshipper" --http-addr "127.0.0.1:$ls_port" --agent-state-dir "$tmp/agent" \
	--retention-interval 1s
retained() { [ "$(lines | wc -l)" = 3 ]; }
ok "retention deletes lines older than 7 days" wait_for 5 retained

# --- metering ------------------------------------------------------------------------
start met "$bin/loom-metering" --http-addr "127.0.0.1:$met_port"
ok "metering is ready" wait_for 10 ready "http://127.0.0.1:$met_port"
inst=11111111-1111-4111-8111-111111111111
$helper usage $inst 1 2 2 garbage 3
samples() { psql_q -c "SELECT seq FROM usage_samples WHERE instance_id = '$inst' ORDER BY 1" | paste -sd,; }
has3() { [ "$(samples)" = 1,2,3 ]; }
ok "samples are stored (a resend with the same Nats-Msg-Id is dropped)" wait_for 5 has3
ok "an undecodable message is terminated with a warning" grep -q 'dropping usage message' "$tmp/met.log"
# the same (instance, seq) under another message id reaches metering: a no-op
$helper usage $inst 2:again 4
has4() { [ "$(samples)" = 1,2,3,4 ]; }
ok "a redelivered sample does not add a row" wait_for 5 has4
dup() { curl -s "http://127.0.0.1:$met_port/metrics" | grep -q '^loom_metering_samples_duplicate_total 1'; }
ok "and is counted as a duplicate" wait_for 3 dup
is "$(psql_q -c "SELECT project_id, project, node, cpu_usage_ns FROM usage_samples WHERE instance_id = '$inst' AND seq = 2")" \
	"1|p|n1|10000000" "the row holds the sample and the project id"
kill "$met_pid"
wait "$met_pid"
is "$?" 0 "metering stops cleanly"
$helper usage $inst 5
start met "$bin/loom-metering" --http-addr "127.0.0.1:$met_port"
has5() { [ "$(samples)" = 1,2,3,4,5 ]; }
ok "the durable consumer picks up what came while it was down" wait_for 10 has5
stored1() { curl -s "http://127.0.0.1:$met_port/metrics" | grep -q '^loom_metering_samples_stored_total 1$'; }
ok "and nothing acknowledged before is delivered again" wait_for 3 stored1

# --- builder --------------------------------------------------------------------------
start bld "$bin/loom-builder" --http-addr "127.0.0.1:$bld_port"
ok "the builder is ready" wait_for 10 ready "http://127.0.0.1:$bld_port"
like "$($helper request loom.build.request)" 'builds are not implemented yet' "the builder refuses build requests, saying why"

kill "$act_pid"
wait "$act_pid"
is "$?" 0 "the activator stops cleanly"
kill "$bld_pid" "$met_pid" "$ls_pid"
ok "the others stop cleanly" wait "$bld_pid" "$met_pid" "$ls_pid"

cleanup
pids=()
tap_finished=1
echo "1..$tap_n"
if [ $tap_failed -eq 0 ]; then rm -rf "$tmp"; else diag "logs kept in $tmp"; fi
exit $((tap_failed > 254 ? 254 : tap_failed))
