#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run through wait_for and the EXIT trap
# What a build makes besides an image in the platform registry.
# A function's code bundle: fn create --build-source for a Node.js function
# with an npm dependency (fetched from the npm registry in a step), invoked,
# its answer made by the dependency; the bundle is stored by digest and holds
# node_modules but not the source's own; a Python function with a vendored
# wheel pip installed at the bundle's top; a code-only fn update takes the
# dependencies from the cache and runs no step; a broken package.json fails
# the build at its line and creates no function; bad combinations refused.
# An image pushed to another registry that wants credentials (htpasswd):
# with a wrong password the run fails naming the registry and nothing is
# stored there; with output_secret it lands there at the recorded digest, a
# second push sends no blob, a Dockerfile build goes there too, and an app
# pulls and serves it with the same secret as its image_secret.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

for t in docker-registry htpasswd openssl; do
	command -v "$t" >/dev/null || skip_all "needs $t (tools/install-deps)"
done
export LOOM_DEV_STACKS=busybox,nodejs,nodejs-build,python-build,buildah
export LOOM_DEV_RUNTIMES=nodejs-18,python-3.11
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
	export LOOM_BUILDER_CA_FILE=/etc/ssl/certs/ca-certificates.crt
fi
platform_up
src=$tmp/src
mkdir -p "$src"

sql() { psql "$LOOM_PG_DSN" -Atc "$1" 2>&1; }
run_field() { loom buildrun get "$1" -o json 2>/dev/null | jq -r "$2" 2>/dev/null; }
fn_field() { loom fn get "$1" -o json 2>/dev/null | jq -r "$2" 2>/dev/null; }
step_runs() { sql "SELECT count(*) FROM job_runs WHERE build_run_id IS NOT NULL"; }
# the names in a bundle of function_code
bundle_files() {
	sql "SELECT encode(data, 'hex') FROM function_code WHERE sha256 = '${1#sha256:}'" |
		python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read().strip()))' |
		tar tz 2>&1
}
# the latest build run whose name starts with $1
last_run() { loom buildrun list -o json | jq -r "[.build_runs[] | select(.name | startswith(\"$1-\"))] | last | .name"; }

# --- a Node.js function with an npm dependency, built from a directory --------------------------
mkdir -p "$src/fn/node_modules/junk"
cat >"$src/fn/package.json" <<'EOF'
{"name": "fn", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}}
EOF
cat >"$src/fn/index.js" <<'EOF'
const ms = require('ms');
exports.main = (p) => ({answer: 'fn v1: ' + ms(Number(p.ms || 90000))});
EOF
echo 'not to be shipped' >"$src/fn/node_modules/junk/x"
start=$(now_ms)
out=$(loom fn create fnb --runtime nodejs-18 --build-source "$src/fn" 2>&1)
is "$?" 0 "fn create --build-source: a Node.js function with an npm dependency" || diag "$out"
diag "fn create --build-source (upload, npm install in a step, bundle, create): $(seconds $(($(now_ms) - start))) s"
like "$out" 'npm install +succeeded' "its dependency came from npm install in a step"
like "$out" 'made the bundle sha256:[0-9a-f]{64}' "the build made a bundle"
run=$(last_run fnb)
digest=$(run_field "$run" .status_details.output_digest)
is "$(fn_field fnb .code_reference)" "$digest" "the function's code is the bundle's digest"
is "$(fn_field fnb .code_binary)" true "and a bundle"
is "$(run_field "$run" .output_type)" bundle "the run made a bundle"
is "$(run_field "$run" .status_details.output_image_digest)" null "and pushed no image"
like "$(loom buildrun get "$run" 2>&1)" "Bundle: +$digest" "buildrun get shows the bundle's digest"
files=$(bundle_files "$digest")
like "$files" '^node_modules/ms/index.js$' "the bundle holds the installed dependency"
like "$files" '^index.js$' "and the code"
unlike "$files" 'junk' "but not the source's own node_modules"
is "$(sql "SELECT count(*) FROM job_runs j JOIN build_runs b ON b.id = j.build_run_id
	WHERE b.name = '$run'")" 1 "npm install ran as a step (a job run of the project)"
out=$(loom fn invoke fnb --data '{"ms": 90000}' 2>&1)
is "$(jq -r .answer <<<"$out" 2>/dev/null)" "fn v1: 2m" "the function answers with its dependency" ||
	diag "$out"

# a Python function with a vendored wheel: pip's packages at the top of the bundle
mkdir -p "$src/pyfn/wheels"
python3 "$(dirname "$0")/wheel_helper.py" "$src/pyfn/wheels" 'a python function greets from a vendored wheel'
echo greet==1.0 >"$src/pyfn/requirements.txt"
printf 'import greet\n\ndef main(p):\n    return {"answer": greet.hello()}\n' >"$src/pyfn/main.py"
out=$(loom fn create pyfn --runtime python-3.11 --build-source "$src/pyfn" 2>&1)
is "$?" 0 "fn create --build-source: a Python function with a vendored wheel" || diag "$out"
like "$out" 'pip install +succeeded' "pip installed the wheel in a step"
like "$(bundle_files "$(fn_field pyfn .code_reference)")" '^greet/__init__.py$' \
	"the package is at the top of the bundle"
out=$(loom fn invoke pyfn 2>&1)
is "$(jq -r .answer <<<"$out" 2>/dev/null)" "a python function greets from a vendored wheel" \
	"the function answers with the wheel's code" || diag "$out"

# a code-only change: the dependencies from the cache, no step
sed -i 's/fn v1/fn v2/' "$src/fn/index.js"
before=$(step_runs)
start=$(now_ms)
out=$(loom fn update fnb --build-source "$src/fn" 2>&1)
is "$?" 0 "fn update --build-source after a code-only change" || diag "$out"
diag "code-only fn update --build-source: $(seconds $(($(now_ms) - start))) s"
like "$out" 'npm install +cached' "the dependencies came from the cache"
is "$(step_runs)" "$before" "no step ran"
is "$(fn_field fnb .generation)" 2 "the function has a new generation"
unlike "$(fn_field fnb .code_reference)" "$digest" "with another bundle"
# the activator reads the function again past its cache's TTL (1 s)
answers() { out=$(loom fn invoke fnb --data '{"ms": 90000}' 2>&1) && [ "$(jq -r .answer <<<"$out")" = "$1" ]; }
ok "the new code answers" wait_for 10 answers "fn v2: 2m" || diag "$out"

# a build that fails: the step and the line, and no function
mkdir -p "$src/badfn"
printf '{"name": "badfn",\n  "main": index.js\n}\n' >"$src/badfn/package.json"
echo 'exports.main = () => ({})' >"$src/badfn/index.js"
out=$(loom fn create badfn --runtime nodejs-18 --build-source "$src/badfn" 2>&1)
rc=$?
ok "fn create --build-source of a broken package.json fails" [ "$rc" -ne 0 ]
like "$out" 'detect +failed' "the step that failed is named" || diag "$out"
like "$out" 'failed: package.json line 2' "and the line" || diag "$out"
loom fn get badfn >/dev/null 2>&1
is "$?" 3 "no function was created"

# bad combinations are refused with the field named, and nothing is stored
runs=$(sql "SELECT count(*) FROM build_runs")
out=$(loom buildrun submit --name bundledf --source "$src/fn" --output-type bundle --strategy dockerfile 2>&1)
like "$out" 'strategy_type.*built by buildpacks' "a bundle built from a Dockerfile is refused" || diag "$out"
out=$(loom buildrun submit --name bundleimg --source "$src/fn" --output-type bundle --image x 2>&1)
like "$out" '"output_image": a bundle' "a bundle with an output image is refused" || diag "$out"
is "$(sql "SELECT count(*) FROM build_runs")" "$runs" "and no run is recorded"
out=$(loom fn create notbuilt --runtime nodejs-18 --code-reference "sha256:$(printf x | sha256sum | cut -c1-64)" 2>&1)
like "$out" 'code_reference.*neither code of this project' "a digest no build made is refused" || diag "$out"
out=$(loom fn create wronglang --runtime python-3.11 --code-reference "$digest" 2>&1)
like "$out" '"code_reference": the bundle was built from nodejs source, and runtime "python-3.11" runs python' \
	"a Node.js bundle on a Python runtime is refused" || diag "$out"
loom fn get wronglang >/dev/null 2>&1
is "$?" 3 "and no function is created"

# --- another registry, with credentials ------------------------------------------------------------
extra=$LOOM_HOME/extra
mkdir -p "$extra/reg2/store"
reg2_pid=""
stop_reg2() {
	[ -n "$reg2_pid" ] || return 0
	kill -TERM "$reg2_pid" 2>/dev/null
	wait "$reg2_pid" 2>/dev/null
	reg2_pid=""
}
reg2_trap() {
	local rc=$?
	stop_reg2
	(exit "$rc")
	platform_trap
}
trap 'reg2_trap' EXIT
reg2_port=""
free_port reg2_port
reg2=127.0.0.1:$reg2_port
pw=p$(openssl rand -hex 12)
wrong=w$(openssl rand -hex 12)
htpasswd -Bbn pusher "$pw" | grep -v '^$' >"$extra/reg2/htpasswd"
cat >"$extra/reg2/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $extra/reg2/store
http:
  addr: $reg2
auth:
  htpasswd:
    realm: loom-test-push
    path: $extra/reg2/htpasswd
EOF
docker-registry serve "$extra/reg2/config.yml" >"$extra/reg2/registry.log" 2>&1 </dev/null &
reg2_pid=$!
reg2_asks() { [ "$(http_code "http://$reg2/v2/")" = 401 ]; }
ok "a second registry, with htpasswd, is up" wait_for 20 reg2_asks
reg2_blobs() { find "$extra/reg2/store" -path '*/blobs/*' -name data 2>/dev/null | wc -l; }
loom secret create reg2 --format registry --server "$reg2" --username pusher --password "$pw" >/dev/null 2>&1
loom secret create reg2wrong --format registry --server "$reg2" --username pusher --password "$wrong" >/dev/null 2>&1

mkdir -p "$src/site"
echo '<p>pulled from a registry that wants a password</p>' >"$src/site/index.html"
image=$reg2/loom/site:v1
loom buildrun submit --name pushwrong --source "$src/site" --image "$image" --registry-secret reg2wrong \
	--size small --wait >/dev/null 2>&1
is "$(run_field pushwrong .status)" failed "a push with a wrong password fails"
like "$(run_field pushwrong .status_details.reason)" "registry $reg2 refused the credentials" \
	"the reason names the registry" || diag "$(run_field pushwrong .status_details.reason)"
is "$(reg2_blobs)" 0 "and nothing was stored there"
unlike "$(loom buildrun logs pushwrong 2>&1; run_field pushwrong .)" "$wrong" "the password is in no log or answer"

out=$(loom buildrun submit --name pushauth --source "$src/site" --image "$image" --registry-secret reg2 \
	--size small --wait 2>&1)
is "$?" 0 "a build pushes to another registry with output_secret" || diag "$out"
digest=$(run_field pushauth .status_details.output_digest)
is "$(run_field pushauth .status_details.output_image_digest)" "$reg2/loom/site@$digest" \
	"the run records the image there by digest"
# tag_digest REPO TAG: the digest the registry has under the tag
tag_digest() {
	curl -s -o /dev/null -D - -u "pusher:$pw" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		"http://$reg2/v2/$1/manifests/$2" | tr -d '\r' | sed -n 's/^Docker-Content-Digest: //ip'
}
is "$(tag_digest loom/site v1)" "$digest" "the registry's tag v1 is that digest"
is "$(http_code "http://$reg2/v2/loom/site/manifests/v1")" 401 "and it is not there for anyone"
blobs=$(reg2_blobs)
loom buildrun submit --name pushagain --source "$src/site" --image "$image" --registry-secret reg2 \
	--size small --wait >/dev/null 2>&1
is "$(run_field pushagain .status_details.output_digest)" "$digest" "the same source, the same digest"
like "$(loom buildrun logs pushagain 2>&1)" "pushed $reg2/loom/site@$digest: .* 0 uploaded, 0 bytes sent" \
	"a second push sends no blob"
is "$(reg2_blobs)" "$blobs" "and the registry holds each blob once"
# a Dockerfile build goes there the same way
mkdir -p "$src/df"
printf 'FROM busybox\nCOPY index.html /srv/\nCMD ["httpd", "-f", "-p", "8080", "-h", "/srv"]\n' >"$src/df/Dockerfile"
cp "$src/site/index.html" "$src/df/"
out=$(loom buildrun submit --name pushdf --source "$src/df" --strategy dockerfile --image "$reg2/loom/df:v1" \
	--registry-secret reg2 --size small --wait 2>&1)
is "$?" 0 "a Dockerfile build pushes to another registry with output_secret" || diag "$out"
ddigest=$(run_field pushdf .status_details.output_digest)
is "$(tag_digest loom/df v1)" "$ddigest" "the registry's tag is the recorded digest"
out=$(loom buildrun submit --name platformsecret --source "$src/site" --registry-secret reg2 2>&1)
like "$out" '"output_secret": the platform registry' "a secret for the platform registry is refused" ||
	diag "$out"

# an app pulls it with the same secret
loom app create site2 --image "$reg2/loom/site@$digest" --registry-secret reg2 --cpu 0.125 \
	--memory 0.5G >/dev/null 2>&1
serves() {
	get "$(loom app get site2 -o json 2>/dev/null | jq -r .url)" && [ "$http_status" = 200 ] &&
		grep -q 'pulled from a registry that wants a password' <<<"$http_body"
}
ok "an app runs the image with the secret as its image_secret" wait_for 90 serves
loom app delete site2 >/dev/null 2>&1

stop_reg2
finish
