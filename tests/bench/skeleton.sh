#!/usr/bin/env bash
# The walking skeleton's figures, on a platform of its own:
#   - `loom-dev up` (everything built) until every service answers /readyz
#   - `loom jobrun submit` of a 3-index array until all three succeeded: the
#     first run pulls the image, the next RUNS find it cached
#   - assignment to the container's process running (from the agent's log),
#     over every start of the cached runs, slow ones included
# A run that fails or takes over 60 s, and a start that never reaches
# running, are counted apart, not mixed into the times.
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
# no function runtimes (loom-dev builds them by default): nothing here runs functions
export LOOM_DEV_RUNTIMES=${LOOM_DEV_RUNTIMES:-none}
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
first_ms=- run_failures=0
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
			break
		fi
		sleep 0.05
	done
	if [ "$st" != completed ]; then
		[ "$i" -eq 0 ] || run_failures=$((run_failures + 1))
		continue
	fi
	if [ "$i" -eq 0 ]; then first_ms=$(($(now_ms) - t0)); else submit_times+=($(($(now_ms) - t0))); fi
done

# "instance ID: process running N ms after assign" of each instance of the
# cached runs (bench-1 ...), whatever its image step took
starts=() no_start=0
for id in $(psql "$LOOM_PG_DSN" -XAtc "SELECT i.id FROM instances i JOIN job_runs r
	ON r.id = i.job_run_id WHERE r.name LIKE 'bench-%' AND r.name <> 'bench-0'"); do
	ms=$(sed -n "s/.*instance $id: process running \([0-9]*\) ms after assign.*/\1/p" \
		"$LOOM_HOME"/logs/agent*.log | head -n1)
	if [ -n "$ms" ]; then starts+=("$ms"); else no_start=$((no_start + 1)); fi
done
cached=$(printf '%s\n' "${starts[@]}")
ok_runs=${#submit_times[@]}

printf '\n%-66s %10s\n' "walking skeleton ($(nproc) cores, PostgreSQL ${LOOM_DEV_PG_DURABILITY:-fast}, runtimes $LOOM_DEV_RUNTIMES)" "ms"
printf '%-66s %10s\n' "------------------------------------------------------------------" "----------"
printf '%-66s %10d\n' "loom-dev up (built) to every service ready" "$up_ms"
printf '%-66s %10s\n' "jobrun submit to 3/3 succeeded, first run (image pull)" "$first_ms"
printf '%-66s %10s\n' "jobrun submit to 3/3 succeeded, cached, p50 of $ok_runs" \
	"$(printf '%s\n' "${submit_times[@]}" | pct 50)"
printf '%-66s %10s\n' "jobrun submit to 3/3 succeeded, cached, max of $ok_runs" \
	"$(printf '%s\n' "${submit_times[@]}" | pct 100)"
printf '%-66s %10s\n' "cached runs that failed or took over 60 s (not in the times)" "$run_failures of $runs"
printf '%-66s %10s\n' "assign to process running, cached runs, p50 (${#starts[@]} starts)" "$(pct 50 <<<"$cached")"
printf '%-66s %10s\n' "assign to process running, cached runs, p99" "$(pct 99 <<<"$cached")"
printf '%-66s %10s\n' "assign to process running, cached runs, max" "$(pct 100 <<<"$cached")"
printf '%-66s %10s\n' "instances of cached runs that never logged process running" "$no_start"
cat <<EOF
(submit to succeeded: from \`loom jobrun submit\` to the run's status completed, polled every
50 ms, CLI start-up included. Process running: the agent's own count, from the assign it
received to its shim's runc run --detach returned; every start of runs bench-1..$runs counts,
slow ones included.)
EOF
