# Shell helpers shared by tools/loom-dev and tests/integration (sourced, not run).
# shellcheck shell=bash
# Needs bash; callers set -euo pipefail.

# Messages go to stderr, prefixed with the program's name.
loom_prog=${loom_prog:-$(basename "$0")}

say() { printf '%s: %s\n' "$loom_prog" "$*" >&2; }
die() {
	say "$*"
	exit 1
}

# The local TCP ports in use (listening or connected), one a line.
used_ports() {
	ss -tanH 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -un
}

# free_port VAR: sets VAR to a TCP port that no socket uses and that this
# shell has not handed out before (remembered in loom_ports_taken; not in a
# subshell, hence the variable rather than output). Ports come from below the
# kernel's ephemeral range, so that an outgoing connection cannot take one
# between now and the moment a service binds it.
loom_ports_taken=" "
free_port() {
	local used port tries=0 var=$1 lo=10000 hi
	read -r hi _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || hi=32768
	[ "$hi" -gt $((lo + 1000)) ] || hi=65535
	used=" $(used_ports | tr '\n' ' ') "
	while :; do
		port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
		case "$used$loom_ports_taken" in
		*" $port "*) ;;
		*)
			loom_ports_taken+="$port "
			printf -v "$var" '%s' "$port"
			return 0
			;;
		esac
		tries=$((tries + 1))
		[ $tries -lt 1000 ] || die "no free TCP port found"
	done
}

# http_code URL: prints the HTTP status of a GET (000 when nothing answers).
http_code() {
	curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# pid_alive PID [NAME]: true when PID runs and (if NAME is given) its command
# line mentions NAME, so that a recycled pid is not mistaken for ours.
pid_alive() {
	local pid=$1 name=${2:-}
	[ -n "$pid" ] && pid_running "$pid" || return 1
	[ -z "$name" ] && return 0
	tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$name"
}

# pid_running PID: true while PID runs. A zombie does not count: whoever
# adopted the process (init) reaps it when it gets to it, seconds later at worst.
pid_running() {
	local state
	kill -0 "$1" 2>/dev/null || return 1
	state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$state" ] && [ "$state" != Z ]
}

# now_ms: milliseconds since the epoch.
now_ms() {
	local t
	t=$(date +%s%N)
	echo $((t / 1000000))
}
