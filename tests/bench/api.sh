#!/usr/bin/env bash
# The API's figures with wrk on loopback, PostgreSQL in the loop, on a
# platform of its own (`tools/loom-dev up --simulate-nodes 1`) whose API runs
# with LOOM_API_RATE_LIMIT=0 (no per-key limit: one key sends everything):
#   - GET of one app: requests/s and p99 latency, with a project key (write
#     role, what a user holds) and with the operator's admin key
#   - create app with the project key: POSTs of distinct names (wrk with a
#     Lua script), created/s (201s only; the apps are counted in PostgreSQL
#     afterwards)
# Both next to the machine's nginx serving a static file of the same bytes as
# the GET's answer (nginx runs as our own process, from a config in a temp
# directory, on a free loopback port), measured in the same run.
# Every request's status and latency come from tests/bench/wrk-latency.lua
# (matched by an X-Request-Id the server echoes): req/s counts the 2xx
# answers, p50 and p99 are over the 2xx answers only, and non-2xx answers
# and socket errors are counted in columns of their own.
# Prints a table; never fails on a time.
#   tests/bench/api.sh [SECONDS]        (default 10 per measurement)
#   BENCH_CONNS (32) and BENCH_THREADS (2) are wrk's -c and -t.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${LOOM_BUILD:-build}
case "$build" in /*) bin=$build/bin ;; *) bin=$repo/$build/bin ;; esac
secs=${1:-10}
conns=${BENCH_CONNS:-32}
threads=${BENCH_THREADS:-2}
loom_dev=$repo/tools/loom-dev
# shellcheck disable=SC2034 # used by say() and die() in common.sh
loom_prog=bench-api
# shellcheck source=tools/lib/common.sh
. "$repo/tools/lib/common.sh"

for t in wrk nginx curl psql; do
	command -v "$t" >/dev/null || { echo "bench-api: $t is not installed" >&2; exit 1; }
done

export LOOM_HOME
LOOM_HOME=$(mktemp -d /tmp/loom-bench.XXXXXX)
n=$(($$ % 1000))
export LOOM_NODE_NAME=bapi$$ LOOM_AGENT_BRIDGE=lba$n LOOM_AGENT_CGROUP_PARENT=loom-bapi$$
export LOOM_AGENT_SUBNET=10.$((94 + n / 250)).$((n % 250)).0/24
export XDG_CONFIG_HOME=$LOOM_HOME/config LOOM_BUILD=$build
# no function runtimes (loom-dev builds them by default): nothing here runs functions
export LOOM_DEV_RUNTIMES=${LOOM_DEV_RUNTIMES:-none}
export LOOM_API_RATE_LIMIT=0
export PATH=$bin:$PATH
# nginx's workers run as nobody: its directory must be reachable
ngx=$(mktemp -d /tmp/loom-bench-nginx.XXXXXX)
chmod 755 "$ngx"
ngx_pid=""
cleanup() {
	if [ -n "$ngx_pid" ]; then
		kill -TERM "$ngx_pid" 2>/dev/null || true
		wait "$ngx_pid" 2>/dev/null || true
	fi
	"$loom_dev" down >/dev/null 2>&1 || true
	rm -rf --one-file-system "$LOOM_HOME" "$ngx"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "# $*" >&2; }
sql() { psql "$LOOM_PG_DSN" -XAtq -c "$1"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

load_before=$(load)
t0=$(now_ms)
"$loom_dev" up --simulate-nodes 1 >"$LOOM_HOME/up.out" 2>&1 ||
	{ cat "$LOOM_HOME/up.out" >&2; exit 1; }
eval "$("$loom_dev" env)"
say "platform up in $(($(now_ms) - t0)) ms (API at $LOOM_API, LOOM_API_RATE_LIMIT=0)"

apps=$LOOM_API/v1/projects/$LOOM_PROJECT/apps
pkey=$(env LOOM_PG_DSN="$LOOM_PG_DSN" "$bin/loom-admin" keys create --project "$LOOM_PROJECT" \
	--role write --description bench 2>/dev/null | grep -o 'loom_[0-9a-f]\{12\}_[A-Za-z0-9_-]\{43\}')
auth="Authorization: Bearer $pkey"
admin_auth="Authorization: Bearer $LOOM_KEY"
app_body='{"name":"bench","image_reference":"127.0.0.1:1/sim:1","image_port":8080,
	"scale_cpu_limit":"0.125","scale_memory_limit":"256M"}'
curl -sSf -o /dev/null -H "$auth" -H 'Content-Type: application/json' --data-binary "$app_body" \
	"$apps"
curl -sSf -H "$auth" -o "$ngx/app.json" "$apps/bench"
say "GET $apps/bench answers $(wc -c <"$ngx/app.json") bytes"

# --- nginx: the ceiling ------------------------------------------------------------
ngx_port=""
free_port ngx_port
mkdir -p "$ngx/html" "$ngx/logs"
cp "$ngx/app.json" "$ngx/html/app.json"
chmod -R a+rX "$ngx/html"
cat >"$ngx/nginx.conf" <<EOF
worker_processes auto;
pid $ngx/nginx.pid;
error_log $ngx/logs/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	default_type application/json;
	client_body_temp_path $ngx/body;
	proxy_temp_path $ngx/proxy;
	fastcgi_temp_path $ngx/fastcgi;
	uwsgi_temp_path $ngx/uwsgi;
	scgi_temp_path $ngx/scgi;
	keepalive_requests 1000000;
	server {
		listen 127.0.0.1:$ngx_port;
		root $ngx/html;
		# as Loom's API does, for wrk-latency.lua
		add_header X-Request-Id \$http_x_request_id always;
	}
}
EOF
nginx -p "$ngx" -c "$ngx/nginx.conf" -g 'daemon off;' >"$ngx/logs/stdout.log" 2>&1 &
ngx_pid=$!
for _ in $(seq 100); do
	[ "$(http_code "http://127.0.0.1:$ngx_port/app.json")" = 200 ] && break
	sleep 0.05
done
[ "$(http_code "http://127.0.0.1:$ngx_port/app.json")" = 200 ] ||
	{ echo "bench-api: nginx does not answer" >&2; cat "$ngx/logs/"* >&2; exit 1; }

# --- wrk -----------------------------------------------------------------------------
lat_lua=$repo/tests/bench/wrk-latency.lua

# run_wrk NAME URL [WRK_ARGS...]: runs wrk with wrk-latency.lua; keeps wrk's
# output in LOOM_HOME/NAME.wrk and the script's line in LOOM_HOME/NAME.lat
run_wrk() {
	local name=$1 url=$2
	shift 2
	BENCH_LAT_OUT=$LOOM_HOME/$name.lat wrk -t"$threads" -c"$conns" -d"${secs}s" \
		-s "$lat_lua" "$@" "$url" >"$LOOM_HOME/$name.wrk" 2>&1
	sed 's/^/#   /' "$LOOM_HOME/$name.wrk" "$LOOM_HOME/$name.lat" >&2
}

# lat NAME FIELD: a field of NAME's line (ok, secs, p50_ms, p99_ms, bad, unmatched, errors)
lat() { tr ' ' '\n' <"$LOOM_HOME/$1.lat" | sed -n "s/^$2=//p"; }
# ok_rps NAME: 2xx answers per second
ok_rps() { awk -v n="$(lat "$1" ok)" -v t="$(lat "$1" secs)" 'BEGIN { printf "%.0f\n", n / t }'; }
# failed NAME: the non-2xx answers by status, and wrk's socket errors
failed() {
	local bad errors
	bad=$(lat "$1" bad)
	errors=$(lat "$1" errors)
	[ "$bad" = - ] && bad=none
	[ "$errors" = 0/0/0/0 ] && errors=none
	# answers whose request id matched no request sent (none expected)
	[ "$(lat "$1" unmatched)" = 0 ] || errors+=" unmatched $(lat "$1" unmatched)"
	echo "$bad; $errors"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }'; }

say "wrk -t$threads -c$conns -d${secs}s --latency (a 2 s warm-up first)"
wrk -t"$threads" -c"$conns" -d2s "http://127.0.0.1:$ngx_port/app.json" >/dev/null
wrk -t"$threads" -c"$conns" -d2s -H "$auth" "$apps/bench" >/dev/null
wrk -t"$threads" -c"$conns" -d2s -H "$admin_auth" "$apps/bench" >/dev/null
say "nginx, static file:"
run_wrk nginx "http://127.0.0.1:$ngx_port/app.json"
say "API, GET of one app, project key:"
run_wrk get "$apps/bench" -H "$auth"
say "API, GET of one app, admin key:"
run_wrk getadmin "$apps/bench" -H "$admin_auth"
before=$(sql "SELECT count(*) FROM apps")
say "API, create app:"
BENCH_LAT_BODY=create run_wrk create "$apps" -H "$auth" -H 'Content-Type: application/json'
after=$(sql "SELECT count(*) FROM apps")
created=$((after - before))
load_after=$(load)

ngx_rps=$(ok_rps nginx)
get_rps=$(ok_rps get)
getadmin_rps=$(ok_rps getadmin)
create_rps=$(ok_rps create)
row() { printf '| %-28s | %-8s | %-8s | %-8s | %-22s | %-8s | %-14s |\n' "$@"; }

cat <<EOF

Loom API with wrk on loopback (-t$threads -c$conns, ${secs} s each), PostgreSQL in the loop
(${LOOM_DEV_PG_DURABILITY:-fast} mode), $(nproc) CPUs, LOOM_API_RATE_LIMIT=0; load average before
$load_before, after $load_after
EOF
row figure "2xx/s" "p50 ms" "p99 ms" "failed: non-2xx; errors" "vs nginx" target
row "----------------------------" -------- -------- -------- ---------------------- -------- --------------
row "nginx, static file (ceiling)" "$ngx_rps" "$(lat nginx p50_ms)" "$(lat nginx p99_ms)" \
	"$(failed nginx)" 1.00 -
row "GET one app, project key" "$get_rps" "$(lat get p50_ms)" "$(lat get p99_ms)" "$(failed get)" \
	"$(ratio "$get_rps" "$ngx_rps")" ">=5000, p99<20"
row "GET one app, admin key" "$getadmin_rps" "$(lat getadmin p50_ms)" "$(lat getadmin p99_ms)" \
	"$(failed getadmin)" "$(ratio "$getadmin_rps" "$ngx_rps")" ">=5000, p99<20"
row "create app, project key" "$create_rps" "$(lat create p50_ms)" "$(lat create p99_ms)" \
	"$(failed create)" "$(ratio "$create_rps" "$ngx_rps")" ">=1000"
echo "(2xx/s, p50 and p99: the answers with a 2xx status only; failed: non-2xx answers by status"
echo " (STATUS:COUNT) and wrk's connect/read/write/timeout errors; $created apps in PostgreSQL"
echo " after the create run, $(lat create ok) created answers; binaries from $bin)"
