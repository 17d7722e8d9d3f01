# Building small OCI images without a container engine (sourced, not run).
# shellcheck shell=bash
#
#   image_build_busybox REF [--cmd JSON] [--env K=V]... [--add DIR] [--layout DIR]
#
# makes a one-layer image from busybox-static (/bin/busybox and a symlink per
# applet, /etc/passwd, /etc/group, /etc/hostname, /etc/index.html, /tmp), writes
# it as an OCI image layout and pushes it to REF ("127.0.0.1:PORT/repo:tag",
# over plain http). --add copies DIR's contents over the root filesystem (for
# tests that need their own scripts in the image); --cmd sets the image's Cmd
# (a JSON array, default ["sh"]). The layer is deterministic: the same inputs
# give the same digests. Needs busybox-static, jq, skopeo, GNU tar and gzip.
#
# The pieces are usable alone: image_busybox_layout LAYOUT [options] (build,
# no push), image_busybox_rootfs DIR, image_oci_layout ROOTFS LAYOUT
# [CMD_JSON [ENV_JSON]], image_push LAYOUT REF.

IMAGE_PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_HOSTNAME="loom-busybox"

# image_busybox_rootfs DIR: a busybox root filesystem in DIR (created). A
# subshell, for a fixed umask: modes end up in the layer.
image_busybox_rootfs() (
	umask 022
	local root=$1 applet
	local busybox=/bin/busybox
	# ldd fails on a static binary; a dynamic busybox would not run in the image
	if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
		echo "image: $busybox is missing or not statically linked (install busybox-static)" >&2
		return 1
	fi
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,proc,sys,dev,var/www}
	mkdir -p "$root/tmp"
	chmod 1777 "$root/tmp"
	install -m 0755 "$busybox" "$root/bin/busybox"
	# A symlink to /bin/busybox for each applet, in its usual place (bin/sh,
	# sbin/ifconfig, usr/bin/env...): busybox does it in one go inside a chroot;
	# without chroot rights, one ln per applet.
	if ! chroot "$root" /bin/busybox --install -s 2>/dev/null; then
		while read -r applet; do
			[ "$applet" = bin/busybox ] && continue
			mkdir -p "$root/${applet%/*}"
			ln -sfn /bin/busybox "$root/$applet"
		done < <("$busybox" --list-full)
	fi
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	printf '%s\n' "$IMAGE_HOSTNAME" >"$root/etc/hostname"
	printf '<!doctype html>\n<title>Loom</title>\n<p>Hello from a Loom busybox container.</p>\n' \
		>"$root/etc/index.html"
	cp "$root/etc/index.html" "$root/var/www/index.html"
	chmod 0644 "$root"/etc/{passwd,group,hostname,index.html} "$root/var/www/index.html"
)

# _image_blob LAYOUT FILE: moves FILE into LAYOUT's blobs, prints "sha256:HEX SIZE".
_image_blob() {
	local layout=$1 file=$2 hex size
	hex=$(sha256sum "$file" | cut -d' ' -f1)
	size=$(stat -c %s "$file")
	mkdir -p "$layout/blobs/sha256"
	mv -f "$file" "$layout/blobs/sha256/$hex"
	echo "sha256:$hex $size"
}

_image_arch() {
	case "$(uname -m)" in
	x86_64) echo amd64 ;;
	aarch64) echo arm64 ;;
	*) uname -m ;;
	esac
}

# image_oci_layout ROOTFS LAYOUT [CMD_JSON [ENV_JSON]]: writes an OCI image
# layout in LAYOUT (created) with one gzip layer made from ROOTFS, tagged
# "latest" in index.json. ENV_JSON is a JSON array of "K=V" strings.
image_oci_layout() {
	local root=$1 layout=$2 cmd=${3:-'["sh"]'} env=${4:-"[\"$IMAGE_PATH_ENV\"]"}
	local tmp diff_id layer layer_digest layer_size config config_digest config_size
	local manifest manifest_digest manifest_size
	local -a entries
	mkdir -p "$layout"
	tmp=$(mktemp -d "$layout/.tmp.XXXXXX")

	# Layer: entries without a leading "./", sorted, owned by 0:0, mtime 0.
	mapfile -t entries < <(find "$root" -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
	LC_ALL=C tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		--format=gnu -C "$root" -cf "$tmp/layer.tar" -- "${entries[@]}"
	diff_id="sha256:$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
	gzip -n -9 "$tmp/layer.tar"
	layer=$(_image_blob "$layout" "$tmp/layer.tar.gz")
	layer_digest=${layer% *}
	layer_size=${layer#* }

	jq -cn --arg arch "$(_image_arch)" --arg diff "$diff_id" \
		--argjson cmd "$cmd" --argjson env "$env" '{
		created: "1970-01-01T00:00:00Z",
		architecture: $arch,
		os: "linux",
		config: { Env: $env, Cmd: $cmd, WorkingDir: "/" },
		rootfs: { type: "layers", diff_ids: [$diff] },
		history: [{ created: "1970-01-01T00:00:00Z", created_by: "loom image_oci_layout" }]
	}' | tr -d '\n' >"$tmp/config.json"
	config=$(_image_blob "$layout" "$tmp/config.json")
	config_digest=${config% *}
	config_size=${config#* }

	jq -cn --arg cd "$config_digest" --argjson cs "$config_size" \
		--arg ld "$layer_digest" --argjson ls "$layer_size" '{
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs },
		layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $ld, size: $ls }]
	}' | tr -d '\n' >"$tmp/manifest.json"
	manifest=$(_image_blob "$layout" "$tmp/manifest.json")
	manifest_digest=${manifest% *}
	manifest_size=${manifest#* }

	printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
	jq -cn --arg md "$manifest_digest" --argjson ms "$manifest_size" '{
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.index.v1+json",
		manifests: [{
			mediaType: "application/vnd.oci.image.manifest.v1+json",
			digest: $md, size: $ms,
			annotations: { "org.opencontainers.image.ref.name": "latest" }
		}]
	}' | tr -d '\n' >"$layout/index.json"
	rm -rf "$tmp"
}

# image_push LAYOUT REF: pushes the layout's "latest" to REF over plain http.
image_push() {
	local layout=$1 ref=$2 out
	if ! out=$(skopeo copy --quiet --dest-tls-verify=false "oci:$layout:latest" "docker://$ref" 2>&1); then
		echo "image: could not push $ref: $out" >&2
		return 1
	fi
}

# image_busybox_layout LAYOUT [--cmd JSON] [--env K=V]... [--add DIR]: the
# busybox image as an OCI layout in LAYOUT, without pushing it.
image_busybox_layout() {
	local layout=$1 cmd='["sh"]' add="" work env_json rc=0
	local -a envs=("$IMAGE_PATH_ENV")
	shift
	while [ $# -gt 0 ]; do
		case "$1" in
		--cmd) cmd=$2 && shift 2 ;;
		--env) envs+=("$2") && shift 2 ;;
		--add) add=$2 && shift 2 ;;
		*) echo "image: unknown option $1" >&2 && return 2 ;;
		esac
	done
	work=$(mktemp -d "${TMPDIR:-/tmp}/loom-image.XXXXXX")
	env_json=$(printf '%s\n' "${envs[@]}" | jq -R . | jq -cs .)
	image_busybox_rootfs "$work/rootfs" &&
		{ [ -z "$add" ] || cp -a "$add/." "$work/rootfs/"; } &&
		image_oci_layout "$work/rootfs" "$layout" "$cmd" "$env_json" || rc=1
	rm -rf "$work"
	return $rc
}

# image_build_busybox REF [--layout DIR] [image_busybox_layout's options]:
# builds the image and pushes it to REF. The layout goes to DIR (kept) or to
# a temporary directory.
image_build_busybox() {
	local ref=$1 layout="" tmp="" rc=0
	local -a opts=()
	shift
	while [ $# -gt 0 ]; do
		case "$1" in
		--layout) layout=$2 && shift 2 ;;
		*) opts+=("$1") && shift ;;
		esac
	done
	if [ -z "$layout" ]; then
		tmp=$(mktemp -d "${TMPDIR:-/tmp}/loom-layout.XXXXXX")
		layout=$tmp/layout
	fi
	image_busybox_layout "$layout" "${opts[@]}" && image_push "$layout" "$ref" || rc=1
	[ -z "$tmp" ] || rm -rf "$tmp"
	return $rc
}
