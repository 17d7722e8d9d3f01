# shellcheck shell=bash
# shellcheck disable=SC2034 # http_*, waited_ms, tmp and friends are for the tests
# Shared by the integration tests (sourced by each .t file, which prove runs).
#
# Each test starts its own platform with tools/loom-dev: its own LOOM_HOME (a
# mktemp directory), free ports, bridge, subnet, node name and cgroup parent,
# so that it runs alone, beside other tests and beside a `make up` platform.
#
#   . "$(dirname "$0")/lib.sh"
#   platform_up          # LOOM_HOME, LOOM_API, LOOM_KEY, LOOM_REGISTRY... exported
#   ok "what" CMD...     # passes when CMD succeeds
#   is "$got" "$want" "what"; like "$got" 'ERE' "what"; unlike ...; diag "text"
#   skip "reason"        # a test that cannot run here: "ok N # SKIP reason"
#   wait_for SECONDS CMD...      # polls CMD until it succeeds; sets waited_ms
#   api METHOD PATH [BODY] [KEY] # the API; sets http_status, http_type, http_body
#   get [CURL_ARGS...] URL       # a GET (or curl's -X...); sets the same, prints nothing
#   image_build_busybox REF --add DIR --cmd JSON   # an image of the test's own
#   finish               # stops the platform, checks for leaks, prints the plan
#
# TAP: the plan comes last ("1..N"), so a test need not count its asserts.
# A failed test prints the end of the service logs and keeps its LOOM_HOME.

set -uo pipefail

it_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$it_dir/../.." && pwd)
loom_dev=$repo/tools/loom-dev
loom_prog=$(basename "$0")
# shellcheck source=tools/lib/common.sh
. "$repo/tools/lib/common.sh"
# shellcheck source=tools/lib/image.sh
. "$repo/tools/lib/image.sh"

build=${LOOM_BUILD:-build}
case "$build" in
/*) bin=$build/bin ;;
*) bin=$repo/$build/bin ;;
esac
export LOOM_BUILD=$build

tap_n=0
tap_failed=0
tap_finished=0

# --- TAP ---------------------------------------------------------------------

diag() {
	local line
	while IFS= read -r line; do printf '# %s\n' "$line"; done <<<"$*"
}

# pass/fail DESCRIPTION
pass() {
	tap_n=$((tap_n + 1))
	printf 'ok %d - %s\n' "$tap_n" "$1"
}
fail() {
	tap_n=$((tap_n + 1))
	tap_failed=$((tap_failed + 1))
	printf 'not ok %d - %s\n' "$tap_n" "$1"
}

# ok DESCRIPTION CMD...: passes when CMD succeeds.
ok() {
	local desc=$1
	shift
	if "$@"; then pass "$desc"; else
		fail "$desc"
		diag "  command failed: $*"
		return 1
	fi
}

# is GOT WANT DESCRIPTION
is() {
	if [ "$1" = "$2" ]; then pass "$3"; else
		fail "$3"
		diag "       got: '$1'"
		diag "  expected: '$2'"
		return 1
	fi
}

# like GOT REGEX DESCRIPTION (extended regular expression, grep -E)
like() {
	if grep -qE -- "$2" <<<"$1"; then pass "$3"; else
		fail "$3"
		diag "            got: '$(printf '%s' "$1" | head -c 2000)'"
		diag "  doesn't match: '$2'"
		return 1
	fi
}

# unlike GOT REGEX DESCRIPTION
unlike() {
	if ! grep -qE -- "$2" <<<"$1"; then pass "$3"; else
		fail "$3"
		diag "      got: '$(printf '%s' "$1" | head -c 2000)'"
		diag "  matches: '$2'"
		return 1
	fi
}

# skip REASON: a test that this host cannot run, counted and shown as
# skipped (TAP's "# SKIP"), never passed in silence.
skip() {
	tap_n=$((tap_n + 1))
	printf 'ok %d # SKIP %s\n' "$tap_n" "$1"
}

skip_all() {
	echo "1..0 # SKIP $*"
	tap_finished=1
	exit 0
}

bail_out() {
	echo "Bail out! $*"
	tap_finished=1
	exit 255
}

# wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds; fails
# after SECONDS. Sets waited_ms to the time it took.
waited_ms=0
wait_for() {
	local limit=$1 start deadline
	shift
	start=$(now_ms)
	deadline=$((start + limit * 1000))
	while :; do
		if "$@"; then
			waited_ms=$(($(now_ms) - start))
			return 0
		fi
		[ "$(now_ms)" -lt $deadline ] || break
		sleep 0.2
	done
	waited_ms=$(($(now_ms) - start))
	return 1
}

# seconds MS: "1.234"
seconds() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# --- HTTP --------------------------------------------------------------------

# api METHOD PATH [BODY] [KEY]: calls the API; sets http_status, http_type and
# http_body. KEY defaults to $LOOM_KEY; "-" sends no Authorization header.
api() {
	local method=$1 path=$2 body=${3:-} key=${4:-$LOOM_KEY} out
	local -a args=(-sS -m 20 -X "$method" -o "$tmp/http_body" -w '%{http_code} %{content_type}')
	rm -f "$tmp/http_body"
	[ "$key" = - ] || args+=(-H "Authorization: Bearer $key")
	[ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data-binary "$body")
	out=$(curl "${args[@]}" "$LOOM_API$path" 2>&1) || out="000 $out"
	http_status=${out%% *}
	http_type=${out#* }
	http_type=${http_type%%;*}
	http_body=$(cat "$tmp/http_body" 2>/dev/null || true)
}

# get [CURL_ARGS...] URL: one request with curl (extra arguments such as -H,
# -X, --data-binary pass through; not -o or -w, which get uses itself). Sets
# http_status, http_type and http_body; prints nothing.
get() {
	local out
	rm -f "$tmp/http_body"
	out=$(curl -sS -m 20 -o "$tmp/http_body" -w '%{http_code} %{content_type}' "$@" 2>&1) || out="000 $out"
	http_status=${out%% *}
	http_type=${out#* }
	http_type=${http_type%%;*}
	http_body=$(cat "$tmp/http_body" 2>/dev/null || true)
}

# --- the platform ------------------------------------------------------------

# can_run_platform: root, runc and the services built; otherwise skip_all.
can_run_platform() {
	[ "$(id -u)" -eq 0 ] || skip_all "needs root"
	command -v runc >/dev/null || skip_all "needs runc"
	[ -x "$bin/loom-admin" ] || skip_all "loom-admin is not built ($bin)"
}

# platform_up: a fresh platform for this test; exports what the CLI needs.
platform_up() {
	can_run_platform
	local n=$(($$ % 1000))
	LOOM_HOME=$(mktemp -d /tmp/loom-it.XXXXXX)
	export LOOM_HOME
	export LOOM_NODE_NAME=it$$
	export LOOM_AGENT_BRIDGE=lt$n
	# 10.90.0.0 - 10.93.255.0: never loom0's 10.88.0.0/24
	export LOOM_AGENT_SUBNET=10.$((90 + n / 250)).$((n % 250)).0/24
	export LOOM_AGENT_CGROUP_PARENT=loom-it$$
	# (a node added with add-node NAME gets loom-NAME: name it it$$-<something>)
	# no function runtimes (nor their stem cells) unless the test asks for some
	export LOOM_DEV_RUNTIMES=${LOOM_DEV_RUNTIMES:-none}
	# nor build stacks
	export LOOM_DEV_STACKS=${LOOM_DEV_STACKS:-none}
	tmp=$LOOM_HOME/test
	mkdir -p "$tmp"
	trap 'platform_trap' EXIT
	# a signal ends the test through exit, so that the platform still stops
	trap 'exit 130' INT TERM HUP PIPE
	leak_baseline
	local start
	start=$(now_ms)
	if ! "$loom_dev" up >"$tmp/up.out" 2>&1; then
		# on stderr too: prove drops what follows a bail out on stdout
		diag "$(cat "$tmp/up.out")" | tee /dev/stderr
		platform_down_quiet
		diag "state and logs kept in $LOOM_HOME" | tee /dev/stderr
		bail_out "tools/loom-dev up failed"
	fi
	up_ms=$(($(now_ms) - start))
	diag "platform up in $(seconds $up_ms) s (LOOM_HOME=$LOOM_HOME)"
	eval "$("$loom_dev" env)"
	export LOOM_API LOOM_KEY LOOM_PROJECT LOOM_REGISTRY
	# the CLI reads ~/.config/loom/config after the environment: keep a user's out
	export XDG_CONFIG_HOME=$tmp/config
}

platform_down_quiet() {
	"$loom_dev" down >"$tmp/down.out" 2>&1 || diag "$(cat "$tmp/down.out")"
}

# dump_logs: the end of each service's log, for a failed test.
dump_logs() {
	local f
	for f in "$LOOM_HOME"/logs/*.log; do
		[ -f "$f" ] || continue
		case "${f##*/}" in registry.log | nats.log | initdb.log) continue ;; esac
		diag "--- ${f##*/} (last 12 lines)"
		diag "$(tail -n 12 "$f" | cut -c1-400)"
	done
}

# finish: stops the platform, checks that nothing is left behind, prints the
# plan. The exit status is the number of failed tests.
finish() {
	if [ -n "${LOOM_HOME:-}" ]; then
		[ $tap_failed -eq 0 ] || dump_logs
		platform_down_checked
	fi
	tap_finished=1
	echo "1..$tap_n"
	if [ $tap_failed -eq 0 ] && [ -n "${LOOM_HOME:-}" ]; then
		rm -rf --one-file-system "$LOOM_HOME"
	elif [ -n "${LOOM_HOME:-}" ]; then
		diag "state and logs kept in $LOOM_HOME"
	fi
	trap - EXIT
	exit $((tap_failed > 254 ? 254 : tap_failed))
}

platform_trap() {
	local rc=$?
	[ $tap_finished -eq 1 ] && return
	diag "test ended early (exit $rc); stopping the platform"
	[ $tap_n -eq 0 ] || dump_logs
	platform_down_quiet
	echo "1..$tap_n"
	diag "state and logs kept in $LOOM_HOME"
	exit 1
}

platform_down_checked() {
	local out
	if out=$("$loom_dev" down 2>&1); then pass "loom-dev down"; else
		fail "loom-dev down"
		diag "$out"
	fi
	leak_checks
}

# --- leaks -------------------------------------------------------------------

# What exists before the platform starts, so that leaks are told apart from a
# `make up` platform's things.
leak_baseline() {
	ip -o link show type veth 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1 | sort >"$tmp/veths.before"
	ip netns list 2>/dev/null | awk '{ print $1 }' | sort >"$tmp/netns.before"
}

# descends_from_us PID: PID is this test or one of its children.
descends_from_us() {
	local p=$1
	while [ -n "$p" ] && [ "$p" -gt 1 ]; do
		[ "$p" = $$ ] && return 0
		p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null)
	done
	return 1
}

# runc_leftovers: every container in this platform's runc roots, one
# "ROOT: ID" a line. Each agent runs runc with --root <state dir>/runc (the
# platform's under $LOOM_HOME/agent, add-node's under $LOOM_HOME/nodes/*/agent);
# a root that is missing or that runc cannot list is a line too, so that a
# check that looks nowhere cannot pass.
runc_leftovers() {
	local state root out id
	for state in "$LOOM_HOME/agent" "$LOOM_HOME"/nodes/*/agent; do
		# (the glob stays as it is when no node was added)
		[ "$state" = "$LOOM_HOME/agent" ] || [ -d "$state" ] || continue
		root=$state/runc
		if [ ! -d "$root" ]; then
			echo "$root: missing (the agent creates it when it starts)"
		elif ! out=$(runc --root "$root" list -q 2>&1); then
			echo "$root: runc list failed: $out"
		else
			for id in $out; do echo "$root: $id"; done
		fi
	done
}

leak_checks() {
	local procs mounts cgs veths netns pgdir ids p c
	# processes: any whose command line or environment names our state dir (or
	# PostgreSQL's), but this test and its children
	pgdir=/var/tmp/loom-pg-$(printf '%s' "$LOOM_HOME" | sha256sum | cut -c1-12)
	procs=$(grep -lsaF -e "$LOOM_HOME" -e "$pgdir" /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null |
		cut -d/ -f3 | sort -un | while read -r p; do
			descends_from_us "$p" && continue
			c=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | cut -c1-200)
			# gone meanwhile (a short-lived process of ours) or a kernel thread
			[ -n "$c" ] && echo "$p $c"
		done)
	is "$procs" "" "no process left that mentions $LOOM_HOME"
	mounts=$(awk '{ print $5 }' /proc/self/mountinfo | grep -F "$LOOM_HOME" || true)
	is "$mounts" "" "nothing left mounted under $LOOM_HOME"
	# the platform's bridge and those of nodes added with add-node (<bridge>n<k>)
	is "$(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1 |
		grep -E "^$LOOM_AGENT_BRIDGE(n[0-9]+)?\$" || true)" "" "bridge $LOOM_AGENT_BRIDGE is gone"
	# a veth of ours loses its master when the bridge goes; new masterless veths leak
	veths=$(ip -o link show type veth 2>/dev/null | grep -v ' master ' |
		awk -F': ' '{ print $2 }' | cut -d@ -f1 | sort | comm -13 "$tmp/veths.before" - || true)
	is "$veths" "" "no veth left behind"
	ids=$(find "$LOOM_HOME/agent/instances" "$LOOM_HOME"/nodes/*/agent/instances -mindepth 1 \
		-maxdepth 1 -printf "%f\n" 2>/dev/null | paste -sd"|" || true)
	netns=$(ip netns list 2>/dev/null | awk '{ print $1 }' | sort | comm -13 "$tmp/netns.before" - |
		grep -E "${ids:-^$}|$LOOM_NODE_NAME" || true)
	is "$netns" "" "no network namespace of ours left"
	cgs=$(find /sys/fs/cgroup/ -mindepth 1 -type d \( -name "$LOOM_AGENT_CGROUP_PARENT" -o \
		-name "$LOOM_AGENT_CGROUP_PARENT-*" \) -prune 2>/dev/null || true)
	is "$cgs" "" "no cgroup named $LOOM_AGENT_CGROUP_PARENT left"
	is "$(runc_leftovers)" "" "no container left in the agents' runc roots"
	ok "PostgreSQL's directory $pgdir is gone" test ! -e "$pgdir"
}

# --- stopping and restarting a component -------------------------------------

# halt NAME [SIGNAL]: stops a component of the platform (run/NAME.pid: a
# service, or nats) with SIGNAL (KILL by default) and waits until it is gone,
# keeping its command line and environment for unhalt.
halt() {
	local name=$1 sig=${2:-KILL} pid
	pid=$(cat "$LOOM_HOME/run/$name.pid") || return 1
	cp "/proc/$pid/environ" "$tmp/$name.environ" && cp "/proc/$pid/cmdline" "$tmp/$name.cmdline" ||
		return 1
	kill -"$sig" "$pid" || return 1
	wait_for 30 eval '! kill -0 '"$pid"' 2>/dev/null'
}

# unhalt NAME [VAR=VALUE...]: starts what halt stopped again, the same way
# (plus VARs), logging to logs/NAME.log.
unhalt() {
	local name=$1
	shift
	local -a env_ cmd_
	mapfile -d '' -t env_ <"$tmp/$name.environ" || return 1
	mapfile -d '' -t cmd_ <"$tmp/$name.cmdline" || return 1
	(cd / && exec setsid env -i "${env_[@]}" "$@" "${cmd_[@]}" >>"$LOOM_HOME/logs/$name.log" 2>&1 \
		</dev/null 9>&-) &
	echo $! >"$LOOM_HOME/run/$name.pid"
	disown $! # its end, a later halt, is no news for the shell
}

# respawn NAME [SIGNAL [VAR=VALUE...]]: halt, then unhalt.
respawn() {
	local name=$1 sig=${2:-KILL}
	shift $(($# < 2 ? $# : 2))
	halt "$name" "$sig" && unhalt "$name" "$@"
}
