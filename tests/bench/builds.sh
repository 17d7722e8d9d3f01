#!/usr/bin/env bash
# Builds' figures, on a platform of its own with the stacks cached (built in
# /var/cache/loom/stacks beforehand; a first run builds them, minutes):
#   - a code-only rebuild of a small Node.js app (one npm dependency) and of a
#     small Python app (one vendored wheel): `loom buildrun submit --source
#     DIR --wait`, from the CLI packing and uploading the source to the build
#     run succeeded with its pushed digest (the dependency layer comes from
#     the cache: no step runs); RUNS times each, median and worst
#   - the bytes a code-only rebuild sends: the upload (tar.gz) and the blobs
#     pushed to the registry (the app layer and the image config; the
#     manifest, a few hundred bytes, is put beside them)
#   - a first build with the stack cached: the Node.js app with another
#     version of its dependency (a dependency cache miss: npm ci runs in a
#     step), once with the build stack not yet on the node (it pulls it) and
#     once with it there
#   - `loom app create --build-source` of the Node.js app to its first 200
#     through the activator (build, deploy, a cold start from zero)
#   - a code-only rebuild of the Node.js source as a function's code bundle
#     (--output-type bundle: the source and node_modules, stored by digest;
#     the npm step from the same cache), RUNS times
# Prints a table; never fails on a time.
#   tests/bench/builds.sh [RUNS]      (default 5)
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
export LOOM_DEV_RUNTIMES=none LOOM_DEV_STACKS=busybox,nodejs,nodejs-build,python,python-build
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
	export LOOM_BUILDER_CA_FILE=/etc/ssl/certs/ca-certificates.crt
fi
trap '"$repo/tools/loom-dev" down >/dev/null 2>&1 || true; rm -rf "$LOOM_HOME"' EXIT

now_ms() { date +%s%3N; }
# median and max of the numbers on stdin
stats() { sort -n | awk '{ v[NR] = $1 } END { if (!NR) { print "- -"; exit }
	printf "%d %d\n", v[int((NR + 1) / 2)], v[NR] }'; }
secs() { awk -v ms="$1" 'BEGIN { if (ms == "-") print "-"; else printf "%.2f", ms / 1000 }'; }

echo "starting a platform (the stacks come from their cache)..." >&2
"$repo/tools/loom-dev" up >"$LOOM_HOME/up.out" 2>&1 || {
	cat "$LOOM_HOME/up.out" >&2
	exit 1
}
eval "$("$repo/tools/loom-dev" env)"
export PATH=$bin:$PATH
src=$LOOM_HOME/src
mkdir -p "$src/node" "$src/py/wheels"

# --- the apps ----------------------------------------------------------------------
node_app() { # VERSION of ms: package.json and its lock
	local integrity
	integrity=$(curl -s -m 20 "https://registry.npmjs.org/ms/$1" | jq -r .dist.integrity)
	jq -n --arg v "$1" '{name: "b", version: "1.0.0", main: "server.js", dependencies: {ms: $v}}' \
		>"$src/node/package.json"
	jq -n --arg v "$1" --arg i "$integrity" '{name: "b", version: "1.0.0", lockfileVersion: 3,
		requires: true, packages: {"": {name: "b", version: "1.0.0", dependencies: {ms: $v}},
		"node_modules/ms": {version: $v, resolved: "https://registry.npmjs.org/ms/-/ms-\($v).tgz",
		integrity: $i}}}' >"$src/node/package-lock.json"
}
node_app 2.1.3
echo 'const ms = require("ms"); require("http").createServer((q, s) => s.end(ms(1000) + " v0\n")).listen(process.env.PORT);' \
	>"$src/node/server.js"
python3 - "$src/py/wheels" <<'EOF'
import base64, hashlib, sys, zipfile
files = {"w/__init__.py": "X = 1\n", "w-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: w\nVersion: 1.0\n",
         "w-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: b\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
rec = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b'=').decode()},{len(c)}"
       for n, c in files.items()]
files["w-1.0.dist-info/RECORD"] = "\n".join(rec + ["w-1.0.dist-info/RECORD,,"]) + "\n"
with zipfile.ZipFile(sys.argv[1] + "/w-1.0-py3-none-any.whl", "w") as z:
    for n, c in files.items():
        z.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), c)
EOF
echo w==1.0 >"$src/py/requirements.txt"
echo 'import w; print("v0")' >"$src/py/main.py"

# build NAME DIR [FLAGS...]: submits and waits; prints the milliseconds, or "-" on failure
build() {
	local t0 out name=$1 dir=$2
	shift 2
	t0=$(now_ms)
	if out=$(loom buildrun submit --name "$name" --source "$dir" --size small --wait "$@" 2>&1); then
		echo $(($(now_ms) - t0))
	else
		echo "$name: $out" >&2
		echo -
	fi
}
# the push step's "N bytes uploaded" of run NAME
pushed_bytes() {
	loom buildrun get "$1" -o json | jq -r '.status_details.steps[] | select(.name == "push") |
		.detail' | sed -n 's/.* \([0-9]*\) bytes uploaded$/\1/p'
}
upload_bytes() { tar -C "$1" --exclude node_modules -czf - . | wc -c; }

# the first build pulls each build stack onto the node: warm both up once
first_pull_ms=$(build node-first "$src/node")
py_first_ms=$(build py-first "$src/py")

node_times=() py_times=() node_push=0 py_push=0
for i in $(seq 1 "$runs"); do
	sed -i "s/ v$((i - 1))/ v$i/" "$src/node/server.js"
	sed -i "s/v$((i - 1))/v$i/" "$src/py/main.py"
	node_times+=("$(build "node-$i" "$src/node")")
	py_times+=("$(build "py-$i" "$src/py")")
done
fn_times=()
for i in $(seq 1 "$runs"); do
	sed -i "s/ v$((runs + i - 1))/ v$((runs + i))/" "$src/node/server.js"
	fn_times+=("$(build "fn-$i" "$src/node" --output-type bundle)")
done
node_push=$(pushed_bytes "node-$runs")
py_push=$(pushed_bytes "py-$runs")
cached=$(loom buildrun get "node-$runs" -o json | jq -r '.status_details.steps[] | select(.name == "npm ci") | .status')

# a dependency cache miss, the stack on the node
node_app 2.1.2
miss_ms=$(build node-miss "$src/node")

# app create --build-source to the first 200 (another version: a real build)
node_app 2.1.1
t0=$(now_ms)
loom app create bench --build-source "$src/node" --build-size small --cpu 0.125 --memory 0.5G \
	--no-wait >/dev/null 2>&1 || true
url=$(loom app get bench -o json | jq -r .url)
deadline=$(($(now_ms) + 180000))
while [ "$(curl -s -o /dev/null -w '%{http_code}' -m 30 "$url")" != 200 ] && [ "$(now_ms)" -lt $deadline ]; do
	sleep 0.1
done
deploy_ms=$(($(now_ms) - t0))

read -r node_med node_max < <(printf '%s\n' "${node_times[@]}" | grep -v -- - | stats)
read -r py_med py_max < <(printf '%s\n' "${py_times[@]}" | grep -v -- - | stats)
read -r fn_med fn_max < <(printf '%s\n' "${fn_times[@]}" | grep -v -- - | stats)
printf '\n%-64s %10s %10s\n' "builds ($runs runs each)" median worst
printf '%-64s %9ss %9ss\n' "code-only rebuild, Node.js + 1 npm dependency (upload->digest)" \
	"$(secs "$node_med")" "$(secs "$node_max")"
printf '%-64s %9ss %9ss\n' "code-only rebuild, Python + 1 vendored wheel (upload->digest)" \
	"$(secs "$py_med")" "$(secs "$py_max")"
printf '%-64s %9ss %9ss\n' "code-only rebuild, Node.js function bundle (upload->digest)" \
	"$(secs "$fn_med")" "$(secs "$fn_max")"
printf '%-64s %10s\n' "  its dependency step (Node.js)" "$cached"
printf '%-64s %9sB\n' "  bytes uploaded by the CLI (Node.js source tar.gz)" "$(upload_bytes "$src/node")"
printf '%-64s %9sB\n' "  bytes pushed to the registry (Node.js: app layer + config)" "$node_push"
printf '%-64s %9sB\n' "  bytes pushed to the registry (Python: app layer + config)" "$py_push"
printf '%-64s %9ss\n' "first build, Node.js, build stack pulled onto the node" "$(secs "$first_pull_ms")"
printf '%-64s %9ss\n' "first build, Python, build stack pulled onto the node" "$(secs "$py_first_ms")"
printf '%-64s %9ss\n' "first build, Node.js, dependency cache miss, stack on the node" "$(secs "$miss_ms")"
printf '%-64s %9ss\n' "app create --build-source to the first 200 (Node.js)" "$(secs "$deploy_ms")"
