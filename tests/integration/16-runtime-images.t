#!/usr/bin/env bash
# Function runtime images: each one in tools/runtimes/runtimes.json is built
# through the cache (tools/lib/runtimes.sh; the first build takes minutes, a
# cached one under a second), has the command and environment runtimes.json
# gives it, and really works: its layer unpacked and run with runc (read-only
# root, a tmpfs /tmp, the host's network), the proxy answers /health, /init
# and /run of a hello world, prefixes its output with the activation id and
# stops on SIGTERM.
# A Debian runtime is skipped only when it is not cached and the Debian
# archive cannot be reached.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tools/lib/runtimes.sh
. "$repo/tools/lib/runtimes.sh"

[ "$(id -u)" -eq 0 ] || skip_all "needs root (mmdebstrap, runc)"
for c in runc mmdebstrap skopeo jq; do
	command -v "$c" >/dev/null || skip_all "needs $c (tools/install-deps)"
done

tmp=$(mktemp -d /tmp/loom-runtime-images.XXXXXX)
containers=()
cleanup() {
	local c
	for c in "${containers[@]}"; do
		runc --root "$tmp/runc" delete -f "$c" >/dev/null 2>&1
	done
	containers=()
}
trap 'cleanup; rm -rf --one-file-system "$tmp"' EXIT

archive=${LOOM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
archive_reachable() {
	curl -sf -o /dev/null -m 10 "$archive/dists/$RUNTIME_SUITE/Release"
}

listen_port=""
# shellcheck disable=SC2016 # the functions' code is in single quotes on purpose
declare -A hello=(
	[python]='def main(args):
    print("hello from python")
    return {"greeting": "Hello " + args.get("name", "stranger")}'
	[nodejs]='function main(params) {
  console.log("hello from nodejs");
  return { greeting: "Hello " + (params.name || "stranger") };
}'
	[shell]='echo "hello from shell"
echo "{\"greeting\": \"Hello $(echo "$1" | sed -n "s/.*\"name\":\"\([^\"]*\)\".*/\1/p")\"}"'
)

# blob LAYOUT DIGEST: the path of a blob of the layout.
blob() { echo "$1/blobs/sha256/${2#sha256:}"; }

post() {
	get -H 'Content-Type: application/json' --data-binary "$2" "http://127.0.0.1:$port$1"
}

for name in $(runtime_names); do
	language=$(runtime_get "$name" language)
	start=$(now_ms)
	if ! layout=$(runtime_cached "$name" 2>"$tmp/build-$name.log"); then
		if [ "$(runtime_get "$name" base)" = debian ] && ! archive_reachable; then
			pass "$name: built # SKIP the Debian archive ($archive) cannot be reached"
			continue
		fi
		fail "$name: built"
		diag "$(tail -n 20 "$tmp/build-$name.log")"
		continue
	fi
	pass "$name: built (through the cache)"
	diag "$name: $(($(now_ms) - start)) ms; $(cat "$layout/../info")"

	manifest=$(blob "$layout" "$(jq -r '.manifests[0].digest' "$layout/index.json")")
	config=$(blob "$layout" "$(jq -r .config.digest "$manifest")")
	is "$(jq -c .config.Cmd "$config")" "$(runtime_get "$name" command | jq -R . | jq -cs .)" \
		"$name: the image's Cmd is the proxy command of runtimes.json"
	like "$(jq -r '.config.Env[]' "$config")" '^PORT=8080$' "$name: the image sets PORT=8080"

	bundle=$tmp/$name
	mkdir -p "$bundle/rootfs"
	for layer in $(jq -r '.layers[].digest' "$manifest"); do
		tar -xzf "$(blob "$layout" "$layer")" -C "$bundle/rootfs"
	done
	free_port listen_port
	port=$listen_port
	(cd "$bundle" && runc spec)
	jq --argjson args "$(jq -c .config.Cmd "$config")" --argjson env "$(jq -c .config.Env "$config")" \
		--arg port "PORT=$port" --arg cg "loom-rt-$$-$name" '
		.process.args = $args | .process.terminal = false | .process.cwd = "/"
		| .process.env = ($env | map(select(startswith("PORT=") | not))) + [$port]
		| .root.readonly = true
		| .mounts += [{destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=1777"]}]
		| .linux.namespaces |= map(select(.type != "network"))
		| .linux.cgroupsPath = $cg' "$bundle/config.json" >"$bundle/c.json" &&
		mv "$bundle/c.json" "$bundle/config.json"
	id=loom-rt-$$-$name
	containers+=("$id")
	runc --root "$tmp/runc" run -d -b "$bundle" "$id" >"$bundle/out" 2>"$bundle/err" </dev/null
	ok "$name: the proxy answers /health in its container" \
		wait_for 30 curl -sf -o /dev/null "http://127.0.0.1:$port/health"
	diag "$name: /health after $waited_ms ms"
	post /init "$(jq -n --arg code "${hello[$language]}" '{value: {name: "hello", main: "main", code: $code}}')"
	like "$http_status $http_body" '^200 \{"ok": ?true\}' "$name: /init of a hello world"
	post /run '{"value": {"name": "Ada"}, "activation_id": "act-img"}'
	like "$http_status $http_body" '^200 \{"greeting": ?"Hello Ada"\}' "$name: /run answers its greeting"
	ok "$name: its line is logged with the activation id" grep -q "^act-img hello from $language\$" "$bundle/out"
	# as PID 1 a process ignores signals it has no handler for
	runc --root "$tmp/runc" kill "$id" TERM
	stopped() { [ "$(runc --root "$tmp/runc" state "$id" 2>/dev/null | jq -r .status)" = stopped ]; }
	ok "$name: SIGTERM stops the proxy, PID 1 of its container" wait_for 5 stopped
	cleanup
	is "$(awk '{ print $5 }' /proc/self/mountinfo | grep -F "$bundle" || true)" "" \
		"$name: nothing left mounted after runc delete"
done

rm -rf --one-file-system "$tmp"
trap - EXIT
finish
