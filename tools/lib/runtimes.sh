# Function runtimes: OCI images holding a language and Loom's action proxy
# for it, built offline from Debian packages (sourced, not run; sources
# tools/lib/image.sh; needs jq, skopeo, mmdebstrap, cc).
# shellcheck shell=bash
#
# tools/runtimes/runtimes.json lists them: name, image repository and tag, the
# image's command and environment, and what the image is made of: a Debian
# root (mmdebstrap, variant essential, with `packages`, then the `customize`
# commands run inside it) or busybox-static; the proxy's sources, copied to
# `proxy_path`, or compiled there (static) when they are C.
#
#   runtime_names                    the runtimes, one a line
#   runtime_get NAME FIELD           a field of the runtime; an array one item a line
#   runtime_cached NAME              prints the path of NAME's OCI layout in the cache,
#                                    built first when missing
#   runtime_layout NAME LAYOUT       the layout copied to LAYOUT (created)
#   runtime_ref NAME REGISTRY        REGISTRY/image:tag
#   runtime_push NAME REF            pushes it to REF over plain http; prints REF@DIGEST
#   runtime_build_proxy NAME OUT [CFLAGS...]
#                                    compiles a C proxy with Loom's warning flags
#                                    (-O2 -s -static unless CFLAGS are given)
#
# The cache is $LOOM_RUNTIME_CACHE (default /var/cache/loom/runtimes), one
# directory NAME/KEY per build, KEY a hash of the runtime's entry, its proxy
# sources, this file and image.sh (for a compiled proxy also the compiler,
# the flags and the versions of busybox, libc, zlib and jansson). A build is
# reused as long as its inputs are the same: updates of the Debian archive
# come in with a changed input or LOOM_RUNTIME_REBUILD=1. Builds of a runtime
# unused for a week are removed when it is next built. The layer is
# deterministic for a given root (see image.sh), and mmdebstrap runs with a
# fixed SOURCE_DATE_EPOCH, so the same archive gives the same digests.
# LOOM_DEBIAN_MIRROR and LOOM_DEBIAN_SECURITY_MIRROR choose the archive.

RUNTIME_SUITE=bookworm
# any fixed date: mmdebstrap stamps it where it would write the build's time
RUNTIME_EPOCH=1700000000
runtime_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runtime_json=$runtime_repo/tools/runtimes/runtimes.json
# shellcheck source=tools/lib/image.sh
. "$runtime_repo/tools/lib/image.sh"

runtime_names() {
	jq -r '.runtimes[].name' "$runtime_json"
}

runtime_get() {
	jq -r --arg n "$1" --arg f "$2" \
		'.runtimes[] | select(.name == $n) | .[$f] | if type == "array" then .[] else . end' "$runtime_json"
}

runtime_ref() {
	_runtime_load "$1" && echo "$2/$rt_image:$rt_tag"
}

# _runtime_load NAME: the runtime's fields in rt_* variables, with one jq.
rt_entry="" rt_image="" rt_tag="" rt_base="" rt_command="" rt_env="" rt_packages=""
rt_customize="" rt_proxy_path="" rt_compiled=false
rt_sources=()
_runtime_load() {
	local vars
	vars=$(jq -r --arg n "$1" '.runtimes[] | select(.name == $n) |
		"rt_entry=\(tojson | @sh)",
		"rt_image=\(.image | @sh)", "rt_tag=\(.tag | @sh)", "rt_base=\(.base | @sh)",
		"rt_command=\(.command | tojson | @sh)", "rt_env=\(.env | tojson | @sh)",
		"rt_packages=\(.packages | join(",") | @sh)",
		"rt_customize=\(.customize | join("\n") | @sh)",
		"rt_proxy_path=\(.proxy_path | @sh)",
		"rt_sources=(\(.proxy_sources | map(@sh) | join(" ")))",
		"rt_compiled=\(any(.proxy_sources[]; endswith(".c")))"' "$runtime_json") || return 1
	if [ -z "$vars" ]; then
		echo "runtime: no runtime \"$1\" in tools/runtimes/runtimes.json" >&2
		return 1
	fi
	eval "$vars"
}

# The Makefile's WARN, so that a proxy is held to the same warnings as Loom.
_runtime_warn() {
	# shellcheck disable=SC2016 # $(WARN) is make's to expand
	make -s --no-print-directory -C "$runtime_repo" \
		--eval 'runtime-print-warn: ; @echo $(WARN)' runtime-print-warn
}

runtime_build_proxy() {
	local name=$1 out=$2 src warn
	shift 2
	local -a flags=("$@") sources=()
	[ ${#flags[@]} -gt 0 ] || flags=(-O2 -s -static)
	_runtime_load "$name" && warn=$(_runtime_warn) || return 1
	for src in "${rt_sources[@]}"; do
		case $src in *.c) sources+=("$runtime_repo/$src") ;; esac
	done
	# shellcheck disable=SC2086 # WARN is a list of flags
	"${CC:-cc}" -std=c17 -D_GNU_SOURCE $warn "${flags[@]}" -I"$runtime_repo/common" \
		-o "$out" "${sources[@]}" -ljansson -lz -pthread
}

# _runtime_key: what the build of the loaded runtime depends on, hashed.
_runtime_key() {
	local src
	{
		printf '%s\n' "$rt_entry"
		for src in "${rt_sources[@]}"; do
			printf '%s ' "$src"
			sha256sum <"$runtime_repo/$src"
		done
		sha256sum <"$runtime_repo/tools/lib/runtimes.sh"
		sha256sum <"$runtime_repo/tools/lib/image.sh"
		if [ "$rt_compiled" = true ]; then
			_runtime_warn
			"${CC:-cc}" --version | head -1
			dpkg-query -W libc6-dev libjansson-dev zlib1g-dev 2>/dev/null
		fi
		if [ "$rt_base" = busybox ]; then
			sha256sum </bin/busybox
		fi
	} | sha256sum | cut -c1-16
}

# _runtime_debian_rootfs ROOT: mmdebstrap's root with the loaded runtime's
# packages, without documentation (but the copyright files), manuals,
# translations, logs or device nodes (the container runtime makes /dev).
_runtime_debian_rootfs() {
	local root=$1
	local mirror=${LOOM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
	local security=${LOOM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
	# shellcheck disable=SC2016 # the hooks are mmdebstrap's to expand: $1 is the root
	SOURCE_DATE_EPOCH=$RUNTIME_EPOCH RUNTIME_CUSTOMIZE=$rt_customize \
		mmdebstrap --variant=essential --include="$rt_packages" \
		--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-exclude=/usr/share/lintian/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
		--customize-hook='[ -z "$RUNTIME_CUSTOMIZE" ] || chroot "$1" /bin/sh -ec "$RUNTIME_CUSTOMIZE"' \
		"$RUNTIME_SUITE" "$root" \
		"deb $mirror $RUNTIME_SUITE main" "deb $mirror $RUNTIME_SUITE-updates main" \
		"deb $security $RUNTIME_SUITE-security main" </dev/null || return 1
	rm -rf "${root:?}"/dev/* "$root"/var/log/* "$root"/var/cache/ldconfig/aux-cache \
		"$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
}

# _runtime_build NAME DIR: builds the loaded runtime's layout into DIR/layout.
_runtime_build() {
	local name=$1 dir=$2 work env_json manifest rc=0 start
	start=$(date +%s)
	work=$(mktemp -d "$(dirname "$dir")/.build.XXXXXX") && chmod 755 "$work" || return 1
	echo "runtime: building $name into $dir" >&2
	env_json=$(jq -c --arg path "$IMAGE_PATH_ENV" '[$path] + .' <<<"$rt_env")
	case $rt_base in
	debian) _runtime_debian_rootfs "$work/rootfs" ;;
	busybox) image_busybox_rootfs "$work/rootfs" ;;
	*) echo "runtime: $name: unknown base \"$rt_base\"" >&2 && false ;;
	esac || rc=1
	if [ $rc -eq 0 ]; then
		mkdir -p "$work/rootfs${rt_proxy_path%/*}"
		if [ "$rt_compiled" = true ]; then
			runtime_build_proxy "$name" "$work/rootfs$rt_proxy_path"
		else
			install -m 0644 "$runtime_repo/${rt_sources[0]}" "$work/rootfs$rt_proxy_path"
		fi &&
			image_oci_layout "$work/rootfs" "$work/layout" "$rt_command" "$env_json" &&
			manifest=$(jq -r '.manifests[0].digest' "$work/layout/index.json") &&
			rm -rf "$dir" && mkdir -p "$dir" &&
			printf 'built in %ss; root %s KiB; layer %s bytes\n' "$(($(date +%s) - start))" \
				"$(du -sk "$work/rootfs" | cut -f1)" \
				"$(jq '.layers[0].size' "$work/layout/blobs/sha256/${manifest#sha256:}")" \
				>"$dir/info" &&
			mv "$work/layout" "$dir/layout" || rc=1
	fi
	rm -rf --one-file-system "$work"
	[ $rc -ne 0 ] || echo "runtime: $name: $(cat "$dir/info")" >&2
	return $rc
}

runtime_cached() {
	local name=$1 cache=${LOOM_RUNTIME_CACHE:-/var/cache/loom/runtimes} key
	_runtime_load "$name" && key=$(_runtime_key) || return 1
	mkdir -p "$cache/$name" || return 1
	(
		# one build of a runtime at a time, across checkouts sharing the cache
		# (fd 8: this subshell's own)
		exec 8>"$cache/$name/.lock" && flock 8 || exit 1
		if [ -f "$cache/$name/$key/layout/index.json" ] && [ -z "${LOOM_RUNTIME_REBUILD:-}" ]; then
			touch "$cache/$name/$key"
			exit 0
		fi
		find "$cache/$name" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -mtime +7 \
			-exec rm -rf --one-file-system {} +
		_runtime_build "$name" "$cache/$name/$key"
	) || return 1
	echo "$cache/$name/$key/layout"
}

runtime_layout() {
	local cached
	cached=$(runtime_cached "$1") || return 1
	mkdir -p "$2" && cp -a "$cached/." "$2/"
}

runtime_push() {
	local cached
	cached=$(runtime_cached "$1") || return 1
	image_push "$cached" "$2" || return 1
	echo "$2@$(jq -r '.manifests[0].digest' "$cached/index.json")"
}
