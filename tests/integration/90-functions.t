#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# shellcheck disable=SC2016 # the functions' code is in single quotes on purpose
# Functions end to end, in real runtime containers: Python and Node.js code
# inline and in bundles, called through the activator by path and host name;
# parameters from the query and the body; a web-action dict with its status
# and headers; an exception (502 with the message) and a time limit (504, the
# instance recycled); concurrency 1 under 5 parallel calls; scale to zero and
# a cold call after it; two projects never sharing an instance; an update
# while calls are in flight; one activation per call; the function's output
# in its logs with the activation id; bad inputs refused, nothing created.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

export LOOM_DEV_RUNTIMES=python-3.11,nodejs-18
platform_up
code=$tmp/code
mkdir -p "$code"

# sql QUERY: one psql answer, unaligned
sql() { psql "$LOOM_PG_DSN" -Atc "$1" 2>&1; }

# call [CURL_ARGS...] URL: get, with the answer's headers in $tmp/headers;
# sets activation to its X-Loom-Activation-Id
call() {
	get -D "$tmp/headers" "$@"
	activation=$(sed -n 's/^[Xx]-[Ll]oom-[Aa]ctivation-[Ii]d: *\([0-9a-f-]*\).*/\1/p' "$tmp/headers")
}
header() { sed -n "s/^$1: *//Ip" "$tmp/headers" | tr -d '\r'; }

# --- the runtimes and their stem cells ---------------------------------------

out=$(loom fn runtimes -o json 2>&1)
is "$(jq -r '[.[].name] | sort | join(" ")' <<<"$out")" "nodejs-18 python-3.11" \
	"loom fn runtimes lists the runtimes make up registered" || diag "$out"
stems() {
	sql "SELECT count(*) FROM instances WHERE kind = 'function' AND claimed_at IS NULL
		AND state = 'running' AND runtime = '$1'"
}
stems_ready() { [ "$(stems python-3.11)" -ge 1 ] && [ "$(stems nodejs-18)" -ge 1 ]; }
if wait_for 120 stems_ready; then
	pass "each runtime has a running stem cell on the node"
else
	fail "each runtime has a running stem cell within 120 s"
	diag "$(sql "SELECT runtime, state, reason FROM instances WHERE kind = 'function'")"
fi

# operators see them, per runtime: free, starting, claimed, calls waiting
out=$(loom-admin runtimes list 2>&1)
like "$(awk '$1 == "python-3.11" { print $5 }' <<<"$out")" '^[1-9]' \
	"loom-admin runtimes list counts python-3.11's free stem cells" || diag "$out"

# --- an OpenWhisk action, unchanged ------------------------------------------

cat >"$code/hello.py" <<'EOF'
def main(args):
    name = args.get("name", "stranger")
    print("hello was called for " + name)
    return {"greeting": "Hello " + name + "!"}
EOF
out=$(loom fn create hello --runtime python-3.11 --inline-code "$code/hello.py" 2>&1)
is "$?" 0 "fn create hello (python, inline)" || diag "$out"
url=$(loom fn get hello -o json | jq -r .endpoint)
is "$url" "$LOOM_ACTIVATOR_URL/fns/default/hello" "its endpoint is on the activator"
like "$(loom fn get hello 2>&1)" "URL: *$url" "fn get shows the URL"

start=$(now_ms)
call "$url?name=Ann"
cold_ms=$(($(now_ms) - start))
is "$http_status" 200 "the first call (cold) answers 200" || diag "$http_body"
is "$(jq -c . <<<"$http_body" 2>&1)" '{"greeting":"Hello Ann!"}' "with the action's dict, the query as parameters"
is "$http_type" "application/json" "as JSON"
like "$activation" '^[0-9a-f-]{36}$' "the answer names its activation in X-Loom-Activation-Id"
first_activation=$activation
diag "first call of hello, a stem cell claimed: $cold_ms ms"

call -H 'Content-Type: application/json' --data-binary '{"name":"Bob"}' "$url"
is "$(jq -r .greeting <<<"$http_body" 2>&1)" "Hello Bob!" "a POSTed JSON body becomes the parameters"
start=$(now_ms)
call "$url?name=Warm"
diag "a warm call: $(($(now_ms) - start)) ms"
is "$http_status" 200 "a warm call answers 200"

call -H "Host: hello.default.fn.$LOOM_ACTIVATOR_DOMAIN" "$LOOM_ACTIVATOR_URL/?name=Dee"
is "$(jq -r .greeting <<<"$http_body" 2>&1)" "Hello Dee!" \
	"by host name: hello.default.fn.$LOOM_ACTIVATOR_DOMAIN"

out=$(loom fn invoke hello --data '{"name":"Cy"}' 2>&1)
is "$(jq -r .greeting <<<"$out" 2>&1)" "Hello Cy!" "loom fn invoke prints the answer body" || diag "$out"
hello_calls=5

# --- a web-action dict, an exception, a time limit ----------------------------

cat >"$code/web.py" <<'EOF'
def main(args):
    return {"statusCode": 201, "headers": {"X-Answer": "42"}, "body": {"items": [1, 2]}}
EOF
loom fn create web --runtime python-3.11 --inline-code "$code/web.py" >/dev/null 2>&1
call "$LOOM_ACTIVATOR_URL/fns/default/web"
is "$http_status" 201 "a dict with statusCode sets the status"
is "$(header X-Answer)" 42 "and its headers"
is "$http_type" application/json "an object body is sent as JSON"
is "$(jq -c . <<<"$http_body" 2>&1)" '{"items":[1,2]}' "the body is the dict's body"

cat >"$code/boom.py" <<'EOF'
def main(args):
    raise ValueError("the widget is not here")
EOF
loom fn create boom --runtime python-3.11 --inline-code "$code/boom.py" >/dev/null 2>&1
start=$(now_ms)
call "$LOOM_ACTIVATOR_URL/fns/default/boom"
is "$http_status" 502 "an exception in the code is a 502"
is "$http_type" application/problem+json "a problem"
like "$(jq -r .detail <<<"$http_body" 2>&1)" "the widget is not here" "with the runtime's message"
diag "the exception's answer came after $(($(now_ms) - start)) ms"

cat >"$code/slow.py" <<'EOF'
import time
def main(args):
    time.sleep(float(args.get("s", "30")))
    return {"slept": True}
EOF
loom fn create slow --runtime python-3.11 --inline-code "$code/slow.py" --timeout 2 >/dev/null 2>&1
start=$(now_ms)
call "$LOOM_ACTIVATOR_URL/fns/default/slow"
is "$http_status" 504 "a call past the time limit (2 s) is a 504"
diag "answered after $(($(now_ms) - start)) ms (the code sleeps 30 s)"
recycled() {
	slow_inst=$(sql "SELECT instance_id FROM function_activations WHERE id = '$activation'")
	[ -n "$slow_inst" ] &&
		[ "$(sql "SELECT desired FROM instances WHERE id = '$slow_inst'")" = stop ]
}
if wait_for 20 recycled; then
	pass "the instance that ran over its limit is told to stop"
else
	fail "the instance that ran over its limit is told to stop within 20 s"
	diag "its activation: $(sql "SELECT * FROM function_activations WHERE id = '$activation'")"
fi
call "$LOOM_ACTIVATOR_URL/fns/default/slow?s=0"
is "$http_status" 200 "the next call answers"
# activations are written in batches: the record of a call may lag its answer
activation_field() {
	wait_for 10 activation_has "$1" "$2"
	sql "SELECT $2 FROM function_activations WHERE id = '$1'"
}
activation_has() { [ -n "$(sql "SELECT $2 FROM function_activations WHERE id = '$1'")" ]; }
next_inst=$(activation_field "$activation" instance_id)
if [ -n "$next_inst" ] && [ "$next_inst" != "$slow_inst" ]; then
	pass "on another instance"
else
	fail "on another instance"
	diag "late call's instance: $slow_inst, next call's: $next_inst"
fi
is "$(sql "SELECT status FROM function_activations WHERE instance_id = '$slow_inst'")" timeout \
	"the activation of the late call says timeout"

# --- bundles: Python and Node.js ----------------------------------------------

mkdir -p "$code/pybundle" "$code/nodebundle/lib"
cat >"$code/pybundle/__main__.py" <<'EOF'
from helper import shout
def main(args):
    return {"said": shout(args.get("word", "hi"))}
EOF
cat >"$code/pybundle/helper.py" <<'EOF'
def shout(w):
    return w.upper() + "!"
EOF
cat >"$code/nodebundle/package.json" <<'EOF'
{"name": "greeter", "main": "main.js"}
EOF
cat >"$code/nodebundle/main.js" <<'EOF'
const { greet } = require('./lib/greet');
function main(params) {
  console.log('node greeter called');
  return { greeting: greet(params.name || 'world'), method: params.__ow_method };
}
exports.main = main;
EOF
cat >"$code/nodebundle/lib/greet.js" <<'EOF'
exports.greet = (n) => `Hi ${n} from a bundle`;
EOF
out=$(loom fn create pyb --runtime python-3.11 --code-bundle "$code/pybundle" 2>&1)
is "$?" 0 "fn create pyb (a Python bundle of two files)" || diag "$out"
is "$(loom fn get pyb -o json | jq -r .code_binary)" true "it is stored as a bundle"
call "$LOOM_ACTIVATOR_URL/fns/default/pyb?word=loom"
is "$(jq -r .said <<<"$http_body" 2>&1)" "LOOM!" "the bundle's module imports its neighbour" ||
	diag "$http_status $http_body"

out=$(loom fn create nodeb --runtime nodejs-18 --code-bundle "$code/nodebundle" 2>&1)
is "$?" 0 "fn create nodeb (a Node.js bundle with package.json)" || diag "$out"
call -X PUT -H 'Content-Type: application/json' --data-binary '{"name":"Eve"}' \
	"$LOOM_ACTIVATOR_URL/fns/default/nodeb"
is "$(jq -c . <<<"$http_body" 2>&1)" '{"greeting":"Hi Eve from a bundle","method":"put"}' \
	"the Node.js bundle answers, with the method among the parameters" || diag "$http_status"

cat >"$code/inline.js" <<'EOF'
async function main(params) {
  return { sum: (params.a || 0) + (params.b || 0) };
}
EOF
loom fn create add --runtime nodejs-18 --inline-code "$code/inline.js" >/dev/null 2>&1
call -H 'Content-Type: application/json' --data-binary '{"a":2,"b":40}' \
	"$LOOM_ACTIVATOR_URL/fns/default/add"
is "$(jq -r .sum <<<"$http_body" 2>&1)" 42 "an inline async Node.js function answers"

# --- concurrency 1: five calls at once, never two on one instance -------------

cat >"$code/busy.py" <<'EOF'
import time, uuid
INSTANCE = uuid.uuid4().hex  # once per instance: the code loads once
def main(args):
    start = time.time()
    time.sleep(1)
    return {"instance": INSTANCE, "start": start, "end": time.time()}
EOF
loom fn create busy --runtime python-3.11 --inline-code "$code/busy.py" --concurrency 1 \
	>/dev/null 2>&1
for i in 1 2 3 4 5; do
	curl -sS -m 60 -o "$tmp/busy.$i" -w '%{http_code}' "$LOOM_ACTIVATOR_URL/fns/default/busy" \
		>"$tmp/busy.$i.status" 2>&1 &
done
wait
codes=$(for i in 1 2 3 4 5; do
	cat "$tmp/busy.$i.status"
	echo
done | tr '\n' ' ')
is "$codes" "200 200 200 200 200 " "five parallel calls of a concurrency-1 function all answer"
overlap=$(jq -s -r 'group_by(.instance)[] | sort_by(.start) |
	[range(1; length) as $i | select(.[$i].start < .[$i - 1].end)] | length' "$tmp"/busy.? |
	awk '{s += $1} END {print s + 0}')
is "$overlap" 0 "no call started on an instance while another ran there"
diag "instances used: $(jq -s -r '[.[].instance] | unique | length' "$tmp"/busy.?)"
is "$(sql "SELECT count(*) FROM (SELECT instance_id FROM function_activations a
	JOIN functions f ON f.id = a.function_id WHERE f.name = 'busy'
	GROUP BY instance_id HAVING count(*) > 1 AND
	bool_or(EXISTS (SELECT 1 FROM function_activations b WHERE b.instance_id = a.instance_id
		AND b.id <> a.id AND b.started_at >= a.started_at
		AND b.started_at + interval '1 ms' < a.started_at + a.duration_us * interval '1 us'))) x")" 0 \
	"the activations agree: none began on an instance before the one there ended (1 ms rounding)"

# --- scale to zero, and a cold call after it ----------------------------------

loom fn create nap --runtime python-3.11 --inline-code "$code/hello.py" --scale-down-delay 2 \
	>/dev/null 2>&1
call "$LOOM_ACTIVATOR_URL/fns/default/nap"
is "$http_status" 200 "nap answers"
live_nap() {
	sql "SELECT count(*) FROM instances i JOIN functions f ON f.id = i.function_id
		WHERE f.name = 'nap' AND i.state IN $(live_states_sql) AND i.desired = 'run'"
}
live_states_sql() { echo "('assigned', 'pulling', 'starting', 'running')"; }
no_nap() { [ "$(live_nap)" = 0 ]; }
if wait_for 40 no_nap; then
	pass "an idle function goes to zero instances after its scale-down delay"
	diag "zero $(seconds "$waited_ms") s after the call (delay 2 s)"
else
	fail "an idle function goes to zero instances within 40 s"
fi
call "$LOOM_ACTIVATOR_URL/fns/default/nap?name=again"
is "$(jq -r .greeting <<<"$http_body" 2>&1)" "Hello again!" "the next call answers"
is "$(activation_field "$activation" cold)" t "and was cold"

# --- two projects never share an instance -------------------------------------

loom-admin projects create other >/dev/null 2>&1
other_key=$(loom-admin keys create --project other --role write |
	grep -o 'loom_[0-9a-f]\{12\}_[A-Za-z0-9_-]\{43\}')
other() { LOOM_PROJECT=other LOOM_KEY=$other_key loom "$@"; }
out=$(other fn create hello --runtime python-3.11 --inline-code "$code/hello.py" 2>&1)
is "$?" 0 "project other creates a function of the same name" || diag "$out"
for i in 1 2 3; do
	call "$LOOM_ACTIVATOR_URL/fns/other/hello?name=o$i"
	o_answer=$http_body
	call "$LOOM_ACTIVATOR_URL/fns/default/hello?name=d$i"
done
is "$(jq -r .greeting <<<"$o_answer")/$(jq -r .greeting <<<"$http_body")" "Hello o3!/Hello d3!" \
	"both answer, each with its own function"
hello_calls=$((hello_calls + 3))
count_of() {
	sql "SELECT count(*) FROM function_activations a JOIN functions f ON f.id = a.function_id
		JOIN projects p ON p.id = f.project_id WHERE f.name = '$2' AND p.name = '$1'"
}
counted() { [ "$(count_of default hello)" = "$hello_calls" ] && [ "$(count_of other hello)" = 3 ]; }
wait_for 10 counted
is "$(sql "SELECT count(*) FROM (SELECT instance_id FROM function_activations
	GROUP BY instance_id HAVING count(DISTINCT project_id) > 1
	OR count(DISTINCT function_id) > 1) x")" 0 \
	"no instance served two projects, nor two functions (activations)"
is "$(sql "SELECT count(*) FROM instances i JOIN function_activations a ON a.instance_id = i.id
	WHERE i.project_id IS DISTINCT FROM a.project_id
	OR i.function_id IS DISTINCT FROM a.function_id")" 0 \
	"each instance record names the project and function its calls were for"
# the containers: each project's instances are runc containers of their own
containers() {
	local root
	for root in "$LOOM_HOME"/agent/runc "$LOOM_HOME"/agent/*/runc; do
		[ -d "$root" ] && runc --root "$root" list -q 2>/dev/null
	done | sort -u
}
ids_of() {
	sql "SELECT DISTINCT a.instance_id FROM function_activations a JOIN projects p
		ON p.id = a.project_id JOIN functions f ON f.id = a.function_id
		WHERE p.name = '$1' AND f.name = 'hello' ORDER BY 1"
}
running=$(containers)
a_ids=$(ids_of default)
b_ids=$(ids_of other)
a_run=$(comm -12 <(echo "$a_ids") <(echo "$running") | head -n1)
b_run=$(comm -12 <(echo "$b_ids") <(echo "$running") | head -n1)
if [ -n "$a_run" ] && [ -n "$b_run" ]; then
	pass "both projects' hello run in containers ($a_run, $b_run)"
else
	fail "both projects' hello run in containers"
	diag "default: $a_ids / other: $b_ids / running: $running"
fi
is "$(comm -12 <(echo "$a_ids") <(echo "$b_ids") | grep -c .)" 0 \
	"no container served both projects"
# and in user namespaces of their own when the agent uses them
uid_base() {
	local pid root
	for root in "$LOOM_HOME"/agent/runc "$LOOM_HOME"/agent/*/runc; do
		pid=$(runc --root "$root" state "$1" 2>/dev/null | jq -r .pid) && break
	done
	awk 'NR == 1 {print $2}' "/proc/$pid/uid_map" 2>/dev/null
}
if grep -q '"user namespaces on' "$LOOM_HOME/logs/agent.log"; then
	a_base=$(uid_base "$a_run")
	b_base=$(uid_base "$b_run")
	if [ -n "$a_base" ] && [ "$a_base" != 0 ] && [ -n "$b_base" ] && [ "$a_base" != "$b_base" ]; then
		pass "their root maps to different host ids ($a_base, $b_base)"
	else
		fail "their root maps to different host ids"
		diag "default's: '$a_base', other's: '$b_base'"
	fi
else
	echo "ok $((tap_n += 1)) # SKIP user namespaces are off on this kernel"
fi
# the network: a function of other reaches its own project's instance, not default's
cat >"$code/probe.py" <<'EOF'
import socket
def main(args):
    s = socket.socket()
    s.settimeout(float(args.get("timeout", 2)))
    try:
        s.connect((args["ip"], 8080))
        return {"reached": True}
    except OSError as e:
        return {"reached": False, "why": str(e)}
    finally:
        s.close()
EOF
other fn create probe --runtime python-3.11 --inline-code "$code/probe.py" >/dev/null 2>&1
ip_of() { sql "SELECT split_part(address, ':', 1) FROM instances WHERE id = '$1'"; }
call "$LOOM_ACTIVATOR_URL/fns/other/probe?ip=$(ip_of "$b_run")"
is "$(jq -r .reached <<<"$http_body" 2>&1)" true "other's function reaches other's instance" ||
	diag "$http_status $http_body"
call "$LOOM_ACTIVATOR_URL/fns/other/probe?ip=$(ip_of "$a_run")"
is "$(jq -r .reached <<<"$http_body" 2>&1)" false "but not default's" || diag "$http_status $http_body"

# --- the first call waits for the node to confirm the claim --------------------
# A claimed stem cell joins its project's network only when its node says so;
# the first call must not run before. The agent is held (SIGSTOP) while a new
# function's first call claims a stem cell: a call that ran at once would
# still be in the stem cell's own network, and not reach another instance of
# other's (one SYN, no retry). Held longer than the activator waits for the
# node, the instance is not used at all, and the call takes another.
# the instance reached: one of other's, kept busy by a long call (a busy
# instance is never evicted for a cold call's room)
cat >"$code/sleeper.py" <<'EOF'
import time
def main(args):
    time.sleep(float(args.get("s", 0)))
    return {"slept": True}
EOF
other fn create sleeper --runtime python-3.11 --inline-code "$code/sleeper.py" >/dev/null 2>&1
get "$LOOM_ACTIVATOR_URL/fns/other/sleeper"
target=$(sql "SELECT i.id FROM instances i JOIN functions f ON f.id = i.function_id
	WHERE f.name = 'sleeper' AND i.state = 'running' AND i.desired = 'run' LIMIT 1")
curl -s -o /dev/null -m 60 "$LOOM_ACTIVATOR_URL/fns/other/sleeper?s=25" &
sleeping=$!
agent_pid=$(cat "$LOOM_HOME/run/agent.pid")
free_python() { [ "$(stems python-3.11)" -ge 1 ]; }
# held_call NAME HOLD_S: NAME's first call while the agent is held HOLD_S seconds
held_call() {
	other fn create "$1" --runtime python-3.11 --inline-code "$code/probe.py" --cpu 0.125 \
		--memory 0.5G >/dev/null 2>&1
	wait_for 120 free_python || diag "no free python stem cell before $1's call"
	kill -STOP "$agent_pid"
	(
		sleep "$2"
		kill -CONT "$agent_pid"
	) &
	call "$LOOM_ACTIVATOR_URL/fns/other/$1?ip=$(ip_of "$target")&timeout=0.5"
	wait "$!"
}
held_call reach1 0.4
is "$(jq -r .reached <<<"$http_body" 2>&1)" true \
	"a first call waits for the node's confirmation: it runs in its project's network" ||
	diag "$http_status $http_body"
held_call reach2 2
is "$(jq -r .reached <<<"$http_body" 2>&1)" true \
	"a first call confirmed too late runs on another instance, in its project's network" ||
	diag "$http_status $http_body"
unconfirmed=$(sql "SELECT i.id FROM instances i JOIN functions f ON f.id = i.function_id
	WHERE f.name = 'reach2' AND i.reason = 'its specialization was not confirmed'")
used=$(sql "SELECT a.instance_id FROM function_activations a JOIN functions f
	ON f.id = a.function_id WHERE f.name = 'reach2'")
if [ -n "$unconfirmed" ] && [ -n "$used" ] && [ "$unconfirmed" != "$used" ]; then
	pass "the unconfirmed instance is stopped, not used ($unconfirmed; the call ran on $used)"
else
	fail "the unconfirmed instance is stopped, not used"
	diag "unconfirmed: '$unconfirmed', used: '$used'"
fi
wait "$sleeping"

# --- an update while calls are in flight --------------------------------------

cat >"$code/v1.py" <<'EOF'
import time
def main(args):
    time.sleep(5)  # over two of the activator's ticks, which stop old instances
    return {"v": 1}
EOF
cat >"$code/v2.py" <<'EOF'
def main(args):
    return {"v": 2}
EOF
loom fn create rev --runtime python-3.11 --inline-code "$code/v1.py" --concurrency 5 \
	>/dev/null 2>&1
call "$LOOM_ACTIVATOR_URL/fns/default/rev"
for i in 1 2 3; do
	curl -sS -m 60 -o "$tmp/rev.$i" "$LOOM_ACTIVATOR_URL/fns/default/rev" 2>&1 &
done
sleep 0.5
out=$(loom fn update rev --inline-code "$code/v2.py" 2>&1)
is "$?" 0 "fn update rev while three calls run" || diag "$out"
like "$out" "generation 2" "makes generation 2"
# a new call, while those three still run, runs revision 2: past its cache
# TTL (1 s) the activator reads the function again before it serves a call
sleep 1.5
call "$LOOM_ACTIVATOR_URL/fns/default/rev"
is "$(jq -c . <<<"$http_body" 2>&1)" '{"v":2}' "a new call runs revision 2 while the old calls run"
running=$(jobs -r | wc -l)
is "$running" 3 "(the three old calls were still running then)"
wait
is "$(cat "$tmp"/rev.? | jq -s -c 'map(.v)')" "[1,1,1]" "the calls in flight finish on revision 1"
is "$(activation_field "$activation" generation)" 2 \
	"its activation says generation 2"

# --- activations: exactly one per call ----------------------------------------

count_hello() {
	sql "SELECT count(*) FROM function_activations a JOIN functions f ON f.id = a.function_id
		JOIN projects p ON p.id = f.project_id WHERE f.name = 'hello' AND p.name = 'default'"
}
settled() { [ "$(count_hello)" = "$hello_calls" ]; }
wait_for 10 settled
is "$(count_hello)" "$hello_calls" "hello's $hello_calls calls are $hello_calls activations"
is "$(sql "SELECT count(*) FROM function_activations WHERE id = '$first_activation'")" 1 \
	"the first call's activation id is recorded once"
out=$(loom fn activations hello -o json 2>&1)
is "$(jq -r '.activations | length' <<<"$out" 2>&1)" "$hello_calls" \
	"loom fn activations lists them" || diag "$out"
is "$(jq -r --arg id "$first_activation" '.activations[] | select(.id == $id) | .cold' <<<"$out")" \
	true "the first one was cold"
like "$(loom fn activations hello 2>&1)" "$first_activation" "and the table shows its id"

# --- logs carry the activation id ---------------------------------------------

has_log() { loom fn logs hello 2>/dev/null | grep -q "$first_activation hello was called for Ann"; }
if wait_for 20 has_log; then
	pass "the function's print is in its logs, after its activation id"
else
	fail "the function's print is in its logs within 20 s"
	diag "$(loom fn logs hello 2>&1 | tail -n 5)"
fi
unlike "$(cat "$LOOM_HOME"/logs/*.log)" 'Hello " \+ name' "no service log holds the code"

# --- bad inputs: refused, nothing created -------------------------------------

before=$(sql "SELECT (SELECT count(*) FROM functions) || '/' || (SELECT count(*) FROM function_code)")
out=$(loom fn create nope --runtime cobol-85 --inline-code "$code/hello.py" 2>&1)
is "$?" 1 "an unknown runtime is refused"
like "$out" "runtime" "naming the runtime field" || diag "$out"

mkdir -p "$tmp/evil/a"
echo 'def main(a): return {}' >"$tmp/evil/a/__main__.py"
tar -czf "$tmp/evil.tgz" -C "$tmp/evil" --transform 's,^a/__main__.py,../escape.py,' a/__main__.py
body=$(jq -n --arg c "data:application/gzip;base64,$(base64 -w0 "$tmp/evil.tgz")" \
	'{name: "evil", runtime: "python-3.11", code_reference: $c}')
api POST /v1/projects/default/functions "$body"
is "$http_status" 400 "a bundle with ../ in a path is a 400"
like "$http_body" "\\.\\./escape.py" "naming the path" || diag "$http_body"

# over the 512 KiB cap, under the API's 1 MiB limit on a request body
head -c 405000 /dev/urandom | base64 -w0 | sed 's/^/#/' >"$tmp/big.py"
out=$(loom fn create big --runtime python-3.11 --inline-code "$tmp/big.py" 2>&1)
is "$?" 1 "code over the size cap is refused"
like "$out" "code_reference.*512 KiB" "naming the field and the cap" || diag "$out"

api POST /v1/projects/default/functions '{"name": "Bad Name", "runtime": "python-3.11"}'
is "$http_status" 400 "a bad name is a 400"
is "$(sql "SELECT (SELECT count(*) FROM functions) || '/' || (SELECT count(*) FROM function_code)")" \
	"$before" "none of them created a function or stored code"
api GET /v1/projects/default/functions/evil
is "$http_status" 404 "the refused bundle's function does not exist"

# --- delete -------------------------------------------------------------------

out=$(loom fn delete nap 2>&1)
is "$?" 0 "fn delete nap" || diag "$out"
call "$LOOM_ACTIVATOR_URL/fns/default/nap"
is "$http_status" 404 "a deleted function is a 404"

finish
