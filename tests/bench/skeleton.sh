#!/usr/bin/env bash
# The walking skeleton's figures, on a platform of its own:
#   - `loom-dev up` (everything built) until every service answers /readyz
#   - `loom jobrun submit` of a 3-index array until all three succeeded
#   - assignment to the container's process running (from the agent's log)
# Prints a table; never fails on a time.
#   tests/bench/skeleton.sh [RUNS]      (default 5 job runs)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${LOOM_BUILD:-build}
case "$build" in /*) bin=$build/bin ;; *) bin=$repo/$build/bin ;; esac
runs=${1:-5}

export LOOM_HOME
LOOM_HOME=$(mktemp -d /tmp/loom-bench.XXXXXX)
n=$(($$ % 1000))
export LOOM_NODE_NAME=bench$$ LOOM_AGENT_BRIDGE=lb$n LOOM_AGENT_CGROUP_PARENT=loom-bench$$
export LOOM_AGENT_SUBNET=10.$((94 + n / 250)).$((n % 250)).0/24
export XDG_CONFIG_HOME=$LOOM_HOME/config LOOM_BUILD=$build
trap '"$repo/tools/loom-dev" down >/dev/null 2>&1 || true; rm -rf "$LOOM_HOME"' EXIT

now_ms() { date +%s%3N; }
# pct P < numbers: the P-th percentile (nearest rank)
pct() { sort -n | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
	i = int((p / 100) * NR + 0.999); if (i < 1) i = 1; print v[i] }'; }

t0=$(now_ms)
"$repo/tools/loom-dev" up >"$LOOM_HOME/up.out" 2>&1
up_ms=$(($(now_ms) - t0))
eval "$("$repo/tools/loom-dev" env)"
export PATH=$bin:$PATH
image=$LOOM_REGISTRY/loom/busybox:latest

# the first run pulls the image; the rest find it cached
submit_times=()
for i in $(seq 0 "$runs"); do
	t0=$(now_ms)
	# shellcheck disable=SC2016 # for the container's shell
	loom jobrun submit --name "bench-$i" --image "$image" --cmd 'echo hello from $JOB_INDEX' \
		--array-indices 0-2 >/dev/null
	deadline=$(($(now_ms) + 60000))
	while :; do
		st=$(loom jobrun get "bench-$i" -o json | jq -r .status)
		[ "$st" = completed ] && break
		if [ "$st" = failed ] || [ "$(now_ms)" -gt $deadline ]; then
			echo "bench-$i ended $st" >&2
			exit 1
		fi
		sleep 0.05
	done
	[ "$i" -gt 0 ] && submit_times+=($(($(now_ms) - t0)))
	[ "$i" -eq 0 ] && first_ms=$(($(now_ms) - t0))
done

# "process running N ms after assign (image M ms, ...)" per instance
grep -ho 'process running [0-9]* ms after assign (image [0-9]*' "$LOOM_HOME"/logs/agent*.log |
	awk '{ print $3, $8 }' >"$LOOM_HOME/starts"
cached=$(awk '$2 < 20 { print $1 }' "$LOOM_HOME/starts")

printf '\n%-58s %10s\n' "walking skeleton ($(nproc) cores)" "ms"
printf '%-58s %10s\n' "----------------------------------------------------------" "----------"
printf '%-58s %10d\n' "loom-dev up (built) to every service ready" "$up_ms"
printf '%-58s %10d\n' "jobrun submit to 3/3 succeeded, first run (image pull)" "$first_ms"
printf '%-58s %10s\n' "jobrun submit to 3/3 succeeded, cached, p50 of $runs" \
	"$(printf '%s\n' "${submit_times[@]}" | pct 50)"
printf '%-58s %10s\n' "jobrun submit to 3/3 succeeded, cached, max of $runs" \
	"$(printf '%s\n' "${submit_times[@]}" | pct 100)"
printf '%-58s %10s\n' "assign to process running, image cached, p50 ($(wc -l <<<"$cached") starts)" \
	"$(pct 50 <<<"$cached")"
printf '%-58s %10s\n' "assign to process running, image cached, p99" "$(pct 99 <<<"$cached")"
