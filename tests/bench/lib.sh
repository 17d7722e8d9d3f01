# shellcheck shell=bash
# Shared by the benchmarks that start a platform of their own (sourced):
#   . "$(dirname "$0")/lib.sh"
#   bench_up             # LOOM_HOME, the platform's env, PATH; stopped and removed at exit
#   bench_free_port      # a free TCP port on 127.0.0.1
#   pids+=(PID)          # background processes killed at exit
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${LOOM_BUILD:-build}
case "$build" in /*) bin=$build/bin ;; *) bin=$repo/$build/bin ;; esac
pids=()

now_ms() { date +%s%3N; }
bench_free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# rate N MS: N per second
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.0f", n * 1000 / (ms > 0 ? ms : 1) }'; }
secs() { awk -v m="$1" 'BEGIN { printf "%.1f", m / 1000 }'; }

bench_cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	"$repo/tools/loom-dev" down >/dev/null 2>&1 || true
	rm -rf "$LOOM_HOME"
}

bench_up() {
	export LOOM_HOME
	LOOM_HOME=$(mktemp -d /tmp/loom-bench.XXXXXX)
	local n=$(($$ % 1000))
	export LOOM_NODE_NAME=bench$$ LOOM_AGENT_BRIDGE=lb$n LOOM_AGENT_CGROUP_PARENT=loom-bench$$
	export LOOM_AGENT_SUBNET=10.$((94 + n / 250)).$((n % 250)).0/24
	export XDG_CONFIG_HOME=$LOOM_HOME/config LOOM_BUILD=$build
	trap bench_cleanup EXIT
	"$repo/tools/loom-dev" up >"$LOOM_HOME/up.out" 2>&1
	eval "$("$repo/tools/loom-dev" env)"
	export PATH=$bin:$PATH
}
