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
# The create script: a POST of a new name each time (thread id and counter).
cat >"$LOOM_HOME/create.lua" <<'EOF'
-- setup() runs in the main state and sets the global tid in each thread's
local counter = 0
local nthreads = 0
function setup(thread)
	nthreads = nthreads + 1
	thread:set("tid", nthreads)
end
request = function()
	counter = counter + 1
	local body = string.format('{"name":"c%d-%d","image_reference":"127.0.0.1:1/sim:1",' ..
		'"image_port":8080,"scale_cpu_limit":"0.125","scale_memory_limit":"256M"}', tid or 0, counter)
	return wrk.format("POST", nil, nil, body)
end
EOF

# run_wrk NAME URL [WRK_ARGS...]: runs wrk, keeps its output in LOOM_HOME/NAME.wrk
run_wrk() {
	local name=$1 url=$2
	shift 2
	wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "$@" "$url" >"$LOOM_HOME/$name.wrk" 2>&1
	sed 's/^/#   /' "$LOOM_HOME/$name.wrk" >&2
}

# wrk_rps NAME: requests/s; wrk_ok_rps NAME: requests/s without non-2xx answers
wrk_rps() { awk '/^Requests\/sec:/ { printf "%.0f\n", $2 }' "$LOOM_HOME/$1.wrk"; }
wrk_ok_rps() {
	awk '/requests in/ { n = $1; t = $4; sub(/,$/, "", t)
			if (t ~ /ms$/) { sub(/ms$/, "", t); t /= 1000 }
			else if (t ~ /m$/) { sub(/m$/, "", t); t *= 60 }
			else sub(/s$/, "", t) }
		/Non-2xx or 3xx responses:/ { bad = $5 }
		END { printf "%.0f\n", (n - bad) / t }' "$LOOM_HOME/$1.wrk"
}
wrk_bad() { awk '/Non-2xx or 3xx responses:/ { b = $5 } END { print b + 0 }' "$LOOM_HOME/$1.wrk"; }
# wrk_p NAME PCT: the latency at PCT ("50%", "99%") in ms
wrk_p() {
	awk -v p="$2" '$1 == p {
			v = $2
			if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
			else if (v ~ /ms$/) sub(/ms$/, "", v)
			else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
			printf "%.2f\n", v }' "$LOOM_HOME/$1.wrk"
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
run_wrk create "$apps" -H "$auth" -H 'Content-Type: application/json' -s "$LOOM_HOME/create.lua"
after=$(sql "SELECT count(*) FROM apps")
created=$((after - before))
load_after=$(load)

ngx_rps=$(wrk_rps nginx)
get_rps=$(wrk_ok_rps get)
getadmin_rps=$(wrk_ok_rps getadmin)
create_rps=$(wrk_ok_rps create)
row() { printf '| %-28s | %-8s | %-8s | %-8s | %-8s | %-14s |\n' "$@"; }

cat <<EOF

Loom API with wrk on loopback (-t$threads -c$conns, ${secs} s each), PostgreSQL in the loop,
$(nproc) CPUs, LOOM_API_RATE_LIMIT=0; load average before $load_before, after $load_after
EOF
row figure "req/s" "p50 ms" "p99 ms" "vs nginx" target
row "----------------------------" -------- -------- -------- -------- --------------
row "nginx, static file (ceiling)" "$ngx_rps" "$(wrk_p nginx 50%)" "$(wrk_p nginx 99%)" 1.00 -
row "GET one app, project key" "$get_rps" "$(wrk_p get 50%)" "$(wrk_p get 99%)" \
	"$(ratio "$get_rps" "$ngx_rps")" ">=5000, p99<20"
row "GET one app, admin key" "$getadmin_rps" "$(wrk_p getadmin 50%)" "$(wrk_p getadmin 99%)" \
	"$(ratio "$getadmin_rps" "$ngx_rps")" ">=5000, p99<20"
row "create app, project key" "$create_rps" "$(wrk_p create 50%)" "$(wrk_p create 99%)" \
	"$(ratio "$create_rps" "$ngx_rps")" ">=1000"
echo "(non-2xx answers: GET $(wrk_bad get) and $(wrk_bad getadmin), create $(wrk_bad create);" \
	"$created apps in PostgreSQL after the create run; binaries from $bin)"
