#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# Apps end to end: an app with one instance serves HTTP through the activator
# at the URL the API gives; an app that does not exist is a 404.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# a short autoscaler window, so that an idle app goes back to zero quickly
export LOOM_ACTIVATOR_STABLE_WINDOW=3s
platform_up
image=$LOOM_REGISTRY/loom/busybox:latest

start=$(now_ms)
out=$(loom app create web --image "$image" --cmd 'httpd -f -p 8080 -h /etc' --port 8080 \
	--min-scale 1 2>&1)
is "$?" 0 "app create web" || diag "$out"

out=$(loom app get web 2>&1)
is "$?" 0 "app get web"
url=$(grep -oE "$LOOM_ACTIVATOR_URL/apps/default/web/" <<<"$out" | head -n1)
is "$url" "$LOOM_ACTIVATOR_URL/apps/default/web/" "app get prints the app's URL" || diag "$out"
is "$(loom app get web -o json | jq -r .url)" "$url" "the JSON url is the same"

# /etc/hostname in the image holds "loom-busybox" (tools/lib/image.sh)
served() {
	get "${url}hostname"
	[ "$http_status" = 200 ]
}
if wait_for 60 served; then
	pass "GET ${url}hostname answers 200"
else
	fail "GET ${url}hostname answers 200 within 60 s"
	diag "last answer: $http_status $http_body"
	diag "$(loom app get web -o json 2>&1)"
	diag "$(loom app instances web 2>&1)"
fi
diag "create to first 200: $(seconds $(($(now_ms) - start))) s"
is "$http_body" "$IMAGE_HOSTNAME" "the body is the image's /etc/hostname"

# again, now that an instance is ready: through the activator, not held
get "${url}index.html"
is "$http_status" 200 "GET ${url}index.html answers 200"
like "$http_body" 'Hello from a Loom busybox container' "index.html is the image's"

# by name: <app>.<project>.<domain> (curl resolves *.localhost to loopback)
get -H "Host: web.default.$LOOM_ACTIVATOR_DOMAIN" "$LOOM_ACTIVATOR_URL/hostname"
is "$http_status" 200 "Host: web.default.$LOOM_ACTIVATOR_DOMAIN answers 200"
is "$http_body" "$IMAGE_HOSTNAME" "and serves the same app"

# scale from zero: no instance until the first request, which the activator
# holds while one starts
out=$(loom app create zero --image "$image" --cmd 'httpd -f -p 8080 -h /etc' --port 8080 \
	--min-scale 0 --no-wait 2>&1)
is "$?" 0 "app create zero --min-scale 0" || diag "$out"
zero_url=$(loom app get zero -o json | jq -r .url)
sleep 1
is "$(psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
	WHERE a.name = 'zero'" 2>&1)" 0 "an app at scale zero has no instance"
start=$(now_ms)
get "${zero_url}hostname"
cold_ms=$(($(now_ms) - start))
is "$http_status" 200 "the first request to a scaled-to-zero app answers 200"
is "$http_body" "$IMAGE_HOSTNAME" "with the app's answer"
diag "cold start through the activator: $(seconds $cold_ms) s"

live_zero() {
	psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'zero' AND i.state IN ('assigned', 'pulling', 'starting', 'running')" 2>&1
}
back_to_zero() { [ "$(live_zero)" = 0 ]; }
if wait_for 30 back_to_zero; then
	pass "an idle app goes back to zero instances"
	diag "back to zero $(seconds "$waited_ms") s after its last request (stable window 3 s)"
else
	fail "an idle app goes back to zero instances within 30 s"
	diag "live instances of zero: $(live_zero)"
fi
# and web, with --min-scale 1, keeps its instance
get "${url}hostname"
is "$http_status" 200 "an app with --min-scale 1 still answers"

get "$LOOM_ACTIVATOR_URL/apps/default/no-such-app/"
is "$http_status" 404 "an unknown app is 404 through the activator"
get "$LOOM_ACTIVATOR_URL/apps/no-such-project/web/"
is "$http_status" 404 "an app in an unknown project is 404 through the activator"
get -H "Host: nope.default.$LOOM_ACTIVATOR_DOMAIN" "$LOOM_ACTIVATOR_URL/"
is "$http_status" 404 "an unknown app by Host is 404"

finish
