#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# The app fields the activator honours, end to end with a real agent:
# scale_concurrency (an instance never gets more requests at once; the rest
# wait, boundedly), scale_request_timeout (504), visibility (private and
# project apps are a 404 on the public listener and answer on the internal
# one, project apps only to the project's own instances) and
# scale_initial_instances (a new app starts with them, with no request).
# Nothing here decides on timing: durations are only bounds and diagnostics.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

export LOOM_ACTIVATOR_STABLE_WINDOW=10s
# one request in flight and two waiting per app; a third waiting one is 503
export LOOM_ACTIVATOR_MAX_HELD=2
iport=
free_port iport
# the internal listener: containers reach it at their bridge's gateway
export LOOM_ACTIVATOR_INTERNAL_ADDR=0.0.0.0:$iport
platform_up
# host-local's gateway, the bridge's address: the subnet's .1
gw=${LOOM_AGENT_SUBNET%/*}
gw=${gw%.*}.1
internal=$gw:$iport

# An image with busybox httpd and CGI scripts:
#   slow?S   sleeps S seconds and answers "seen=N", N the requests this
#            instance was serving at once while it ran (itself included)
#   hello    answers "hello"
#   fetch?U  GETs http://U from inside the container: "rc=<wget's status> <body>"
dir=$tmp/image
mkdir -p "$dir/www/cgi-bin"
cat >"$dir/www/cgi-bin/slow" <<'EOF'
#!/bin/sh
case "$QUERY_STRING" in [0-9] | [0-9][0-9]) s=$QUERY_STRING ;; *) s=1 ;; esac
mkdir -p /tmp/inflight
# a file per request while it runs: a request that overlaps another one
# always sees the other's file, whoever counts first
: >/tmp/inflight/$$
n=$(ls /tmp/inflight | wc -l)
echo "$n" >>/tmp/seen
sleep "$s"
rm -f /tmp/inflight/$$
printf 'Content-Type: text/plain\r\n\r\n'
echo "seen=$n"
EOF
cat >"$dir/www/cgi-bin/max" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
sort -n /tmp/seen 2>/dev/null | tail -n 1
EOF
cat >"$dir/www/cgi-bin/hello" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\nhello\n'
EOF
cat >"$dir/www/cgi-bin/fetch" <<'EOF'
#!/bin/sh
# (no -T: busybox 1.35's static wget crashes with it; the activator bounds the wait)
out=$(wget -q -O - "http://$QUERY_STRING" 2>&1)
rc=$?
printf 'Content-Type: text/plain\r\n\r\n'
echo "rc=$rc $out"
EOF
chmod 755 "$dir/www/cgi-bin/"*
image=$LOOM_REGISTRY/test/serving:1
out=$(image_build_busybox "$image" --add "$dir" 2>&1)
is "$?" 0 "build and push the test image" || diag "$out"

# create_app PROJECT NAME EXTRA_JSON: an app of the test image (0.125 vCPU,
# 256M) through the REST API
create_app() {
	local body
	body=$(jq -cn --arg name "$2" --arg image "$image" --argjson extra "$3" \
		'{name: $name, image_reference: $image, image_port: 8080,
		  run_commands: ["httpd", "-f", "-p", "8080", "-h", "/www"],
		  scale_cpu_limit: "0.125", scale_memory_limit: "256M"} + $extra')
	api POST "/v1/projects/$1/apps" "$body"
	like "$http_status" '^20[01]$' "create app $1/$2 $3" || diag "$http_body"
}

# app_url PROJECT NAME
app_url() { echo "$LOOM_ACTIVATOR_URL/apps/$1/$2/"; }

# serves PROJECT NAME: a GET of hello through the public listener answers
serves() {
	get "$(app_url "$1" "$2")cgi-bin/hello"
	[ "$http_status" = 200 ]
}

# --- scale_concurrency ---------------------------------------------------------

create_app default one '{"scale_concurrency": 1, "scale_min_instances": 1,
	"scale_max_instances": 1}'
if wait_for 90 serves default one; then pass "app one answers"; else
	fail "app one answers within 90 s"
	diag "last answer: $http_status $http_body"
fi

# three slow requests at once against one instance that takes one at a time
one=$(app_url default one)
start=$(now_ms)
for i in 1 2 3; do
	curl -sS -m 60 -o "$tmp/par.$i" -w '%{http_code}' "${one}cgi-bin/slow?2" >"$tmp/par.$i.code" 2>&1 &
done
wait
diag "three 2 s requests at concurrency 1 took $(seconds $(($(now_ms) - start))) s"
for i in 1 2 3; do
	is "$(cat "$tmp/par.$i.code")" 200 "parallel request $i answers 200"
	is "$(cat "$tmp/par.$i")" "seen=1" "parallel request $i was the only one in its instance"
done
get "${one}cgi-bin/max"
is "$http_body" 1 "the instance never served more than one request at once"

# the queue is bounded: one in flight and two waiting, so of four at once
# (the first one busy for 4 s) at least one is refused with 503 and none of
# the others ever shares the instance
for i in 1 2 3 4; do
	curl -sS -m 60 -o "$tmp/q.$i" -w '%{http_code}' "${one}cgi-bin/slow?4" >"$tmp/q.$i.code" 2>&1 &
done
wait
codes=$(cat "$tmp"/q.?.code | sort | tr '\n' ' ')
like "$codes" '503' "a request beyond the queue's bound is refused with 503 ($codes)"
unlike "$codes" '(000|502|504)' "the others are answered"
shared=0
for i in 1 2 3 4; do
	[ "$(cat "$tmp/q.$i.code")" = 200 ] || continue
	[ "$(cat "$tmp/q.$i")" = "seen=1" ] || shared=1
done
is "$shared" 0 "every answered request had its instance to itself"
get "${one}cgi-bin/max"
is "$http_body" 1 "and the instance still never served two at once"

# requests waiting at the limit are load: they make the app scale up (here
# at once, without waiting for the autoscaler's windows to fill)
create_app default burst '{"scale_concurrency": 1, "scale_min_instances": 1,
	"scale_max_instances": 3}'
if wait_for 90 serves default burst; then pass "app burst answers"; else
	fail "app burst answers within 90 s"
fi
for i in 1 2 3; do
	curl -sS -m 60 -o "$tmp/b.$i" -w '%{http_code}' "$(app_url default burst)cgi-bin/slow?3" \
		>"$tmp/b.$i.code" 2>&1 &
done
placed() {
	[ "$(psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'burst'" 2>&1)" -ge 3 ]
}
ok "three requests waiting at concurrency 1 scale the app to 3 instances" wait_for 60 placed
wait
for i in 1 2 3; do
	is "$(cat "$tmp/b.$i.code") $(cat "$tmp/b.$i")" "200 seen=1" "burst request $i had an instance to itself"
done

# --- scale_request_timeout ------------------------------------------------------

create_app default slowpoke '{"scale_request_timeout": 1, "scale_min_instances": 1}'
if wait_for 90 serves default slowpoke; then pass "app slowpoke answers"; else
	fail "app slowpoke answers within 90 s"
fi
start=$(now_ms)
get "$(app_url default slowpoke)cgi-bin/slow?8"
took=$(($(now_ms) - start))
is "$http_status" 504 "a request longer than scale_request_timeout gets 504"
is "$http_type" application/problem+json "as a problem+json"
like "$http_body" 'scale_request_timeout' "that names the request timeout"
if [ $took -lt 8000 ]; then pass "the 504 comes before the app would have answered"; else
	fail "the 504 comes before the app would have answered ($took ms)"
fi
get "$(app_url default slowpoke)cgi-bin/hello"
is "$http_status" 200 "a quick request to the same app still answers"

# --- visibility -----------------------------------------------------------------

api POST /v1/projects '{"name": "other"}'
like "$http_status" '^20[01]$' "create project other" || diag "$http_body"
create_app default priv '{"visibility": "private", "scale_min_instances": 1}'
create_app default proj '{"visibility": "project", "scale_min_instances": 1}'
create_app default client '{"scale_min_instances": 1}'
create_app other oclient '{"scale_min_instances": 1}'
for a in default/client other/oclient; do
	if wait_for 90 serves "${a%/*}" "${a#*/}"; then pass "app $a answers"; else
		fail "app $a answers within 90 s"
	fi
done
running() {
	[ "$(psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = '$1' AND i.state = 'running'" 2>&1)" -ge 1 ]
}
ok "app priv has a running instance" wait_for 90 running priv
ok "app proj has a running instance" wait_for 90 running proj

get "$(app_url default nosuch)cgi-bin/hello"
absent=$(jq -c 'del(.request_id, .instance, .detail)' <<<"$http_body")
for a in priv proj; do
	get "$(app_url default $a)cgi-bin/hello"
	is "$http_status" 404 "$a: 404 through the public listener's path"
	is "$(jq -c 'del(.request_id, .instance, .detail)' <<<"$http_body")" "$absent" \
		"$a: the same problem as an app that does not exist"
	like "$(jq -r .detail <<<"$http_body")" "app \"$a\" not found" "$a: and the same detail"
	get -H "Host: $a.default.$LOOM_ACTIVATOR_DOMAIN" "$LOOM_ACTIVATOR_URL/cgi-bin/hello"
	is "$http_status" 404 "$a: 404 through the public listener by host name"
done

# fetch FROM_PROJECT FROM_APP PATH: what FROM_APP's container gets for
# http://<internal listener>PATH
fetch() {
	get "$(app_url "$1" "$2")cgi-bin/fetch?$internal$3"
	echo "$http_body"
}
is "$(fetch default client /apps/default/priv/cgi-bin/hello)" "rc=0 hello" \
	"private: a container reaches it through the internal listener"
is "$(fetch other oclient /apps/default/priv/cgi-bin/hello)" "rc=0 hello" \
	"private: from another project's container too"
is "$(fetch default client /apps/default/proj/cgi-bin/hello)" "rc=0 hello" \
	"project: an instance of the same project reaches it"
like "$(fetch other oclient /apps/default/proj/cgi-bin/hello)" '^rc=1 .*404' \
	"project: another project's instance gets 404"
is "$(fetch default client /apps/default/client/cgi-bin/hello)" "rc=0 hello" \
	"public apps answer on the internal listener too"
get "http://127.0.0.1:$iport/apps/default/priv/cgi-bin/hello"
is "$http_status" 200 "private: the host reaches it through the internal listener"
get "http://127.0.0.1:$iport/apps/default/proj/cgi-bin/hello"
is "$http_status" 404 "project: the host, not an instance of the project, gets 404"

# --- scale_initial_instances ----------------------------------------------------

instances_of() {
	psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = '$1'" 2>&1
}
create_app default init '{"scale_initial_instances": 2, "scale_max_instances": 3}'
two_started() { [ "$(instances_of init)" -ge 2 ]; }
if wait_for 60 two_started; then
	pass "a new app with scale_initial_instances 2 gets 2 instances without a request"
	diag "2 instances placed $(seconds "$waited_ms") s after create"
else
	fail "a new app with scale_initial_instances 2 gets 2 instances within 60 s"
	diag "instances: $(instances_of init)"
fi
create_app default noinit '{"scale_max_instances": 3}'
sleep 3
is "$(instances_of noinit)" 0 "an app with the defaults (min 0, initial 0) starts none"

finish
