#!/usr/bin/env bash
# tools/loom-dev: a platform whose every service answers its health endpoints;
# a second `up` does not start it twice; an `up` after a crash cleans up and
# starts again; `down` leaves nothing behind (checked by finish).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

services=(scheduler api agent activator logshipper metering builder)

platform_up

check_health() {
	local s addr
	for s in "${services[@]}"; do
		addr=$(eval echo "\${LOOM_${s^^}_ADDR}")
		if [ ! -x "$bin/loom-$s" ]; then
			fail "loom-$s is built"
			continue
		fi
		get "http://$addr/livez"
		is "$http_status" 200 "$s /livez answers 200"
		get "http://$addr/readyz"
		is "$http_status" 200 "$s /readyz answers 200"
		get "http://$addr/metrics"
		is "$http_status" 200 "$s /metrics answers 200"
		like "$http_type" '^text/plain' "$s /metrics is text/plain"
		# Prometheus text: comment lines and "name{labels} value" samples
		like "$http_body" '^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$' \
			"$s /metrics has TYPE lines"
		like "$http_body" '^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? ([-+0-9.eE]+|NaN|[-+]Inf)( [0-9]+)?$' \
			"$s /metrics has samples"
	done
}

check_health

status=$("$loom_dev" status 2>&1)
ok "loom-dev status says every component runs" test "$(grep -cE ' (stopped|not built) ' <<<"$status")" -eq 0 ||
	diag "$status"

pids_before=$(cat "$LOOM_HOME"/run/*.pid | sort | paste -sd' ')
out=$("$loom_dev" up 2>&1)
is "$?" 0 "a second up exits 0"
like "$out" 'already running' "a second up says the platform is already running"
is "$(cat "$LOOM_HOME"/run/*.pid | sort | paste -sd' ')" "$pids_before" "a second up starts nothing"

# A crash: the API dies hard. `up` sees the platform is not whole, cleans up
# what is left and starts a new one.
kill -KILL "$(cat "$LOOM_HOME/run/api.pid")"
wait_for 5 bash -c "! kill -0 $(cat "$LOOM_HOME/run/api.pid") 2>/dev/null"
out=$("$loom_dev" up 2>&1)
is "$?" 0 "up after a crash exits 0"
like "$out" 'cleaning up after a previous run' "up after a crash cleans up first"
eval "$("$loom_dev" env)"
check_health
unlike "$(cat "$LOOM_HOME"/run/*.pid | sort | paste -sd' ')" "^$pids_before\$" "up after a crash started new processes"

# down is idempotent (finish runs it once more and checks for leaks)
out=$("$loom_dev" down 2>&1)
is "$?" 0 "down stops the platform"
out=$("$loom_dev" down 2>&1)
is "$?" 0 "a second down exits 0"
like "$out" 'nothing to stop' "a second down has nothing to stop"
out=$("$loom_dev" status 2>&1)
like "$out" '^not running' "status says it is not running"

finish
