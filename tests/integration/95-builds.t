#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called through wait_for
# shellcheck disable=SC2016 # $PORT and friends are for the containers' shells
# Builds end to end, with the real stacks, buildah, registry and containers:
# app create --build-source for a Node.js app with an npm dependency (npm ci
# from a lock file, fetched from the npm registry), then a code-only change
# that runs no step; Python with a vendored wheel, and without dependencies
# (as a job built by job create --build-source); a Procfile; a static site; a
# Go program; a multi-stage Dockerfile; a git source from a local repository
# pinned to a commit, and over http with a password from a secret that
# appears in no answer, log, build record or image. Failures: a Dockerfile
# RUN, a Go compile error, a missing Python package and a broken package.json
# each named with its line or package, leaving no tag; a build over its time
# limit says so and leaves no step running; the builder killed mid-build
# takes the run up again; a cancel stops the step. Uploads: hostile tarballs
# refused with the entry named and nothing stored; the same upload twice
# stored once; the CLI's .ceignore over .gitignore, a link out of the
# directory refused. A saved build created, run by name, updated, deleted.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

command -v git >/dev/null || skip_all "needs git"
export LOOM_DEV_STACKS=busybox,nodejs,nodejs-build,python,python-build,go-build,buildah
export LOOM_BUILDER_GIT_FILE=1
# a small cap on what an upload may unpack to, so that a bomb is quick to make
export LOOM_API_MAX_UPLOAD_UNPACKED=64M
# the steps fetch through the same proxy as this machine: its authorities
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
	export LOOM_BUILDER_CA_FILE=/etc/ssl/certs/ca-certificates.crt
fi
platform_up
src=$tmp/src
mkdir -p "$src"

sql() { psql "$LOOM_PG_DSN" -Atc "$1" 2>&1; }
run_field() { loom buildrun get "$1" -o json 2>/dev/null | jq -r "$2" 2>/dev/null; }
app_url() { loom app get "$1" -o json 2>/dev/null | jq -r .url; }
# a small app: the node has 2 vCPU for apps and build steps together
small=(--cpu 0.125 --memory 0.5G --build-size small)
serves() { get "$(app_url "$1")$2" && [ "$http_status" = 200 ] && grep -q "$3" <<<"$http_body"; }
blobs() { find "$LOOM_HOME/registry" -path '*/blobs/*' -name data | wc -l; }
# the live instances of a build run's steps
live_steps() {
	sql "SELECT count(*) FROM instances i JOIN job_runs j ON j.id = i.job_run_id
		JOIN build_runs b ON b.id = j.build_run_id WHERE b.name = '$1'
		AND i.state IN ('assigned', 'pulling', 'starting', 'running')"
}

# --- Node.js: npm ci from a lock file, served through the activator ------------------------
mkdir -p "$src/node"
cat >"$src/node/package.json" <<'EOF'
{"name": "node-app", "version": "1.0.0", "main": "server.js", "dependencies": {"ms": "2.1.3"}}
EOF
# the lock file npm would write, with the registry's own integrity of ms 2.1.3
integrity=$(curl -s -m 20 https://registry.npmjs.org/ms/2.1.3 | jq -r .dist.integrity)
[ -n "$integrity" ] && [ "$integrity" != null ] || bail_out "the npm registry does not answer"
jq -n --arg i "$integrity" '{name: "node-app", version: "1.0.0", lockfileVersion: 3,
	requires: true, packages: {"": {name: "node-app", version: "1.0.0", dependencies: {ms: "2.1.3"}},
	"node_modules/ms": {version: "2.1.3", resolved: "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz",
	integrity: $i}}}' >"$src/node/package-lock.json"
cat >"$src/node/server.js" <<'EOF'
const http = require('http');
const ms = require('ms');
http.createServer((q, s) => s.end('node v1 says ' + ms(90000) + '\n')).listen(process.env.PORT);
EOF
echo node_modules/ >"$src/node/.gitignore"
mkdir -p "$src/node/node_modules/junk" && echo left-out >"$src/node/node_modules/junk/x"
start=$(now_ms)
out=$(loom app create node --build-source "$src/node" "${small[@]}" 2>&1)
is "$?" 0 "app create --build-source: a Node.js app with an npm dependency" || diag "$out"
first_ms=$(($(now_ms) - start))
like "$out" 'npm ci +succeeded' "its dependencies came from npm ci (a lock file)"
like "$out" 'pushed [^ ]*/default/node@sha256:[0-9a-f]{64}' "it was pushed by digest"
like "$(loom app get node -o json | jq -r .image_reference)" '/default/node@sha256:' \
	"the app runs the digest, never a tag"
ok "the app answers through the activator, with its dependency" wait_for 60 serves node "" "node v1 says 2m"
diag "app create --build-source to the first 200: $(seconds $(($(now_ms) - start))) s (build $(seconds $first_ms) s)"
run=$(loom buildrun list -o json | jq -r '[.build_runs[] | select(.name | startswith("node-"))][0].name')
is "$(run_field "$run" .source_type)" local "the source was an upload"
like "$(loom buildrun logs "$run" 2>&1)" '\[deps\] .*added 1 package' "buildrun logs show the step's output"
d=$(run_field "$run" .source_upload)
unlike "$(curl -s "http://$LOOM_REGISTRY/v2/default/loom-sources/blobs/$d" | tar tz)" 'node_modules' \
	".gitignore left node_modules out of the upload"

# a code-only change: the dependency layer from the cache, no step runs
sed -i 's/node v1/node v2/' "$src/node/server.js"
steps_before=$(sql "SELECT count(*) FROM job_runs WHERE build_run_id IS NOT NULL")
start=$(now_ms)
out=$(loom app update node --build-source "$src/node" --build-size small 2>&1)
is "$?" 0 "app update --build-source after a code-only change" || diag "$out"
diag "code-only rebuild and update: $(seconds $(($(now_ms) - start))) s"
like "$out" 'npm ci +cached' "the dependency layer came from the cache"
is "$(sql "SELECT count(*) FROM job_runs WHERE build_run_id IS NOT NULL")" "$steps_before" \
	"no step ran"
ok "the new code answers" wait_for 60 serves node "" "node v2 says 2m"
loom app delete node >/dev/null 2>&1

# --- Python: a vendored wheel; and no dependencies, as a job ---------------------------------
mkdir -p "$src/py/wheels"
python3 "$(dirname "$0")/wheel_helper.py" "$src/py/wheels" 'python greets from a vendored wheel'
echo greet==1.0 >"$src/py/requirements.txt"
cat >"$src/py/app.py" <<'EOF'
import http.server, os, greet
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = (greet.hello() + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
EOF
out=$(loom app create py --build-source "$src/py" "${small[@]}" 2>&1)
is "$?" 0 "app create --build-source: Python with a vendored wheel" || diag "$out"
like "$out" 'pip install +succeeded' "pip installed the wheel"
ok "it answers with the wheel's code" wait_for 60 serves py "" "python greets from a vendored wheel"
loom app delete py >/dev/null 2>&1

mkdir -p "$src/pyjob"
printf '# nothing\n' >"$src/pyjob/requirements.txt"
printf 'import sys\nprint("python without dependencies, version", sys.version_info[0])\n' >"$src/pyjob/main.py"
out=$(loom job create pyjob --build-source "$src/pyjob" --cpu 0.125 --memory 0.5G --build-size small 2>&1)
is "$?" 0 "job create --build-source: Python without dependencies" || diag "$out"
unlike "$out" 'pip install' "no step ran"
loom jobrun submit --name pyjob-1 --job pyjob --wait >/dev/null 2>&1
pylogs() { loom jobrun logs pyjob-1 2>&1 | grep -q 'python without dependencies, version 3'; }
ok "the job built from source runs it" wait_for 20 pylogs

# --- a Procfile; a static site; a Go program -------------------------------------------------
mkdir -p "$src/proc/public"
echo '<p>served as the Procfile says</p>' >"$src/proc/public/index.html"
echo 'web: httpd -f -p $PORT -h /app/public' >"$src/proc/Procfile"
out=$(loom app create proc --build-source "$src/proc" "${small[@]}" 2>&1)
is "$?" 0 "app create --build-source: a Procfile" || diag "$out"
like "$(run_field "$(loom buildrun list -o json | jq -r '[.build_runs[] | select(.name | startswith("proc-"))][0].name')" .status_details.strategy)" \
	'Procfile' "detection took the Procfile's web line"
ok "it answers as the Procfile says" wait_for 60 serves proc "" "served as the Procfile says"
loom app delete proc >/dev/null 2>&1

mkdir -p "$src/site/css"
echo '<h1>a static site</h1>' >"$src/site/index.html"
echo 'h1 { color: teal }' >"$src/site/css/site.css"
out=$(loom app create site --build-source "$src/site" "${small[@]}" 2>&1)
is "$?" 0 "app create --build-source: a static site" || diag "$out"
ok "its page answers" wait_for 60 serves site "" "a static site"
ok "and its files" serves site css/site.css "teal"
loom app delete site >/dev/null 2>&1

mkdir -p "$src/go"
printf 'module example.com/hello\n\ngo 1.19\n' >"$src/go/go.mod"
cat >"$src/go/main.go" <<'EOF'
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "compiled go") })
	http.ListenAndServe(":"+os.Getenv("PORT"), nil)
}
EOF
out=$(loom app create go --build-source "$src/go" "${small[@]}" 2>&1)
is "$?" 0 "app create --build-source: a Go program" || diag "$out"
like "$out" 'go build +succeeded' "go build ran in a step"
ok "the program answers" wait_for 60 serves go "" "compiled go"
layers=$(skopeo inspect --tls-verify=false "docker://$(loom app get go -o json | jq -r .image_reference)" | jq '.Layers | length')
is "$layers" 2 "its image is busybox and the binary, no source"
loom app delete go >/dev/null 2>&1

# --- a multi-stage Dockerfile ------------------------------------------------------------------
mkdir -p "$src/docker"
cat >"$src/docker/Dockerfile" <<'EOF'
FROM busybox AS build
RUN echo "made in the first stage" > /made.txt
FROM busybox
COPY --from=build /made.txt /srv/made.txt
COPY index.html /srv/
ENV GREETING=hello
WORKDIR /srv
EXPOSE 8080
CMD ["httpd", "-f", "-p", "8080", "-h", "/srv"]
EOF
echo '<p>built from a Dockerfile</p>' >"$src/docker/index.html"
out=$(loom app create docker --build-source "$src/docker" --build-strategy dockerfile "${small[@]}" 2>&1)
is "$?" 0 "app create --build-source --build-strategy dockerfile: a multi-stage Dockerfile" || diag "$out"
ok "it answers" wait_for 60 serves docker "" "built from a Dockerfile"
ok "with the file its first stage made" serves docker made.txt "made in the first stage"
loom app delete docker >/dev/null 2>&1

# --- git, pinned to a commit -------------------------------------------------------------------
repo=$tmp/repo
git init -q -b main "$repo"
echo '<p>git at commit one</p>' >"$repo/index.html"
git -C "$repo" add index.html
git -C "$repo" -c user.name=t -c user.email=t@t commit -qm one
one=$(git -C "$repo" rev-parse HEAD)
echo '<p>git at commit two</p>' >"$repo/index.html"
git -C "$repo" -c user.name=t -c user.email=t@t commit -qam two
out=$(loom buildrun submit --name git1 --source "file://$repo" --commit "$one" --size small --wait 2>&1)
is "$?" 0 "a git source from a local repository, pinned to a commit" || diag "$out"
like "$(loom buildrun logs git1 2>&1)" "at $one" "the run says which commit it built"
image=$(run_field git1 .status_details.output_image_digest)
loom app create gitsite --image "$image" --cpu 0.125 --memory 0.5G >/dev/null 2>&1
ok "the image serves that commit's tree" wait_for 60 serves gitsite "" "git at commit one"
loom app delete gitsite >/dev/null 2>&1
out=$(loom buildrun submit --name git2 --source "file://$repo" --commit no-such-branch --wait 2>&1)
like "$out" 'has no branch, tag or commit "no-such-branch"' "an unknown revision is named"

# git over http with a password from a secret: it reaches git, and nothing else
pw=gitpw-$RANDOM$RANDOM$RANDOM
mkdir -p "$tmp/srv"
git clone -q --bare "$repo" "$tmp/srv/repo.git"
# git http-backend behind basic authentication, on a free port
python3 - "$tmp/srv" u "$pw" "$tmp/git.port" >"$tmp/gitd.log" 2>&1 <<'EOF' &
import base64, http.server, os, subprocess, sys
root, user, pw, portfile = sys.argv[1:5]
want = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
class H(http.server.BaseHTTPRequestHandler):
    def serve(self):
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        n = int(self.headers.get("Content-Length") or 0)
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                   REQUEST_METHOD=self.command, QUERY_STRING=query, REMOTE_USER=user,
                   REMOTE_ADDR="127.0.0.1", CONTENT_LENGTH=str(n),
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=self.rfile.read(n), env=env,
                             capture_output=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(": ")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = serve
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(portfile + ".new", "w") as f:
    f.write(str(s.server_address[1]))
os.rename(portfile + ".new", portfile)
s.serve_forever()
EOF
gitd=$!
wait_for 10 test -s "$tmp/git.port" || diag "$(cat "$tmp/gitd.log")"
url=http://127.0.0.1:$(cat "$tmp/git.port")/repo.git
loom secret create gitcred --from-literal username=u --from-literal password="$pw" >/dev/null 2>&1
loom buildrun submit --name gitnoauth --source "$url" --commit "$one" --size small --wait >/dev/null 2>&1
is "$(run_field gitnoauth .status)" failed "a private git source without credentials fails"
touch "$tmp/before-gitauth"
out=$(loom buildrun submit --name gitauth --source "$url" --commit "$one" --git-repo-secret gitcred \
	--size small --wait 2>&1)
is "$?" 0 "with the secret's credentials it builds" || diag "$out"
like "$(loom buildrun logs gitauth 2>&1)" "at $one" "the commit it was pinned to"
kill "$gitd" 2>/dev/null
# where the password could have gone: answers, logs, the database's build records, the image
leaks=$({
	loom buildrun get gitauth -o json
	loom buildrun logs gitauth
	loom buildrun get gitnoauth -o json
	loom buildrun logs gitnoauth
	cat "$LOOM_HOME"/logs/*.log
	for t in build_runs build_run_logs job_runs log_lines; do
		psql "$LOOM_PG_DSN" -Atc "COPY $t TO STDOUT"
	done
	find "$LOOM_HOME/registry" -path '*/blobs/*' -name data -newer "$tmp/before-gitauth" \
		-exec zcat -f {} + 2>/dev/null
} 2>&1 | grep -ac -- "$pw")
is "$leaks" 0 "the password is in no answer, log, build record or image"

# --- failures: the step and the line, and no tag left --------------------------------------------
fails() { # NAME DIR STRATEGY: submits and waits; the reason in $reason
	loom buildrun submit --name "$1" --source "$2" --strategy "$3" --size small --wait >/dev/null 2>&1
	reason=$(run_field "$1" .status_details.reason)
	[ "$(run_field "$1" .status)" = failed ]
}
mkdir -p "$src/badrun"
printf 'FROM busybox\nRUN echo one\nRUN exit 3\nCMD ["true"]\n' >"$src/badrun/Dockerfile"
ok "a Dockerfile whose RUN fails fails the run" fails badrun "$src/badrun" dockerfile
like "$reason" '^Dockerfile line 3: RUN exit 3: .*exit status 3' "the reason names the line" || diag "$reason"
is "$(curl -s -o /dev/null -w '%{http_code}' "http://$LOOM_REGISTRY/v2/default/badrun/manifests/latest")" 404 \
	"a failed build leaves no tag"
mkdir -p "$src/badcopy"
printf 'FROM busybox\nCOPY ../../etc/passwd /p\n' >"$src/badcopy/Dockerfile"
ok "a COPY out of the context fails the run" fails badcopy "$src/badcopy" dockerfile
like "$reason" 'Dockerfile line 2: COPY ../../etc/passwd reaches outside the build context' \
	"the reason names the line" || diag "$reason"
mkdir -p "$src/badgo"
printf 'module example.com/bad\n\ngo 1.19\n' >"$src/badgo/go.mod"
printf 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Printlnx("x") }\n' >"$src/badgo/main.go"
ok "a Go compile error fails the run" fails badgo "$src/badgo" buildpacks
like "$reason" 'step compile failed .*main.go:5:.*Printlnx' "the reason names the file and the line" || diag "$reason"
mkdir -p "$src/badpy"
printf 'greet==1.0\nnot-vendored==2.0\n' >"$src/badpy/requirements.txt"
cp -r "$src/py/wheels" "$src/badpy/"
echo 'print(1)' >"$src/badpy/main.py"
ok "a package that cannot be had fails the run" fails badpy "$src/badpy" buildpacks
like "$reason" 'No matching distribution found for not-vendored' "the reason names the package" || diag "$reason"
mkdir -p "$src/badjson"
printf '{"name": "x",\n  "main": server.js\n}\n' >"$src/badjson/package.json"
ok "a broken package.json fails the run" fails badjson "$src/badjson" buildpacks
like "$reason" '^package.json line 2' "the reason names the line" || diag "$reason"
is "$(live_steps badgo)$(live_steps badpy)$(live_steps badrun)" 000 "no step of a failed run is left running"

# --- a time limit, a cancel, and a builder killed mid-build --------------------------------------
slow() { # DIR SECONDS: a Node.js app whose npm install sleeps first
	mkdir -p "$1"
	jq -n --argjson s "$2" '{name: "slow", version: "1.0.0", main: "x.js",
		scripts: {preinstall: "sleep \($s)"}, dependencies: {ms: "2.1.3"}}' >"$1/package.json"
	echo 'require("ms")' >"$1/x.js"
}
slow "$src/slow" 300
loom buildrun submit --name slow --source "$src/slow" --size small --timeout 25 >/dev/null 2>&1
ended() { case "$(run_field "$1" .status)" in succeeded | failed | cancelled) return 0 ;; esac; return 1; }
ok "a build over its time limit ends" wait_for 90 ended slow
is "$(run_field slow .status)" failed "it failed"
like "$(run_field slow .status_details.reason)" 'timed out: the build took longer than its timeout \(25 s\)' \
	"the reason says it ran out of time"
no_live_steps() { [ "$(live_steps "$1")" = 0 ]; }
ok "its step does not run on" wait_for 20 no_live_steps slow
ids=$(sql "SELECT string_agg(i.id::text, '|') FROM instances i JOIN job_runs j ON j.id = i.job_run_id
	JOIN build_runs b ON b.id = j.build_run_id WHERE b.name = 'slow'")
is "$(runc --root "$LOOM_HOME/agent/runc" list -q 2>/dev/null | grep -cE "${ids:-none}")" 0 \
	"and no container of it is left"

slow "$src/cancel" 301
loom buildrun submit --name cancelme --source "$src/cancel" --size small >/dev/null 2>&1
step_runs() { [ "$(live_steps "$1")" -gt 0 ]; }
ok "a run's step starts" wait_for 60 step_runs cancelme
out=$(loom buildrun cancel cancelme 2>&1)
like "$out" 'cancelling' "buildrun cancel asks the builder" || diag "$out"
ok "the run ends cancelled" wait_for 20 ended cancelme
is "$(run_field cancelme .status)" cancelled "its status is cancelled"
ok "its step is stopped" wait_for 20 no_live_steps cancelme

slow "$src/resume" 8
loom buildrun submit --name resume --source "$src/resume" --size small --timeout 300 >/dev/null 2>&1
ok "a run's step starts before the builder goes" wait_for 60 step_runs resume
pid=$(cat "$LOOM_HOME/run/builder.pid")
mapfile -d '' envs <"/proc/$pid/environ"
kill -9 "$pid"
wait_pid_gone() { ! kill -0 "$pid" 2>/dev/null; }
wait_for 5 wait_pid_gone
setsid env -i "${envs[@]}" "$bin/loom-builder" >>"$LOOM_HOME/logs/builder.log" 2>&1 </dev/null &
echo $! >"$LOOM_HOME/run/builder.pid"
ok "a new builder takes the run up again" wait_for 120 ended resume
is "$(run_field resume .status)" succeeded "and it succeeds"
is "$(run_field resume .status_details.attempts)" 2 "on its second attempt"
like "$(loom buildrun logs resume 2>&1)" 'went silent: the run goes back to pending' "its log says why"
is "$(sql "SELECT count(*) FROM build_runs WHERE state = 'running'")" 0 "no run is left running"

# --- uploads: hostile tarballs, and the same source twice ------------------------------------------
bad_tgz() { # NAME: a tar.gz with one hostile entry, written with python's tarfile
	python3 - "$tmp/$1.tgz" "$1" <<'EOF'
import io, sys, tarfile
out, kind = sys.argv[1], sys.argv[2]
with tarfile.open(out, "w:gz") as t:
    def add(name, data=b"x", **kw):
        i = tarfile.TarInfo(name); i.size = len(data)
        for k, v in kw.items(): setattr(i, k, v)
        t.addfile(i, io.BytesIO(data) if i.type == tarfile.REGTYPE else None)
    add("ok.txt")
    if kind == "dotdot": add("../evil")
    if kind == "absolute": add("/etc/cron.d/evil")
    if kind == "linkout": add("link", type=tarfile.SYMTYPE, linkname="../../etc/passwd", size=0)
    if kind == "through": add("d", type=tarfile.SYMTYPE, linkname=".", size=0); add("d/x")
    if kind == "bomb":
        i = tarfile.TarInfo("zeros"); i.size = 200 << 20
        class Z(io.RawIOBase):
            def readable(self): return True
            def readinto(self, b): b[:] = bytes(len(b)); return len(b)
        t.addfile(i, io.BufferedReader(Z()))
EOF
}
upload() { # FILE
	curl -sS -m 60 -o "$tmp/upload.out" -w '%{http_code}' -H "Authorization: Bearer $LOOM_KEY" \
		-H 'Content-Type: application/gzip' --data-binary "@$1" "$LOOM_API/v1/projects/default/uploads"
}
sources=$(sql "SELECT count(*) FROM build_sources")
before=$(blobs)
for kind in dotdot:'goes up with' absolute:'is an absolute path' linkout:'outside the source' \
	through:'is under the symbolic link' bomb:'unpacks to more than'; do
	bad_tgz "${kind%%:*}"
	is "$(upload "$tmp/${kind%%:*}.tgz")" 400 "a tarball with ${kind%%:*} is refused"
	like "$(jq -r .detail "$tmp/upload.out")" "^the upload: .*${kind#*:}" "the reason names the entry"
done
is "$(sql "SELECT count(*) FROM build_sources")" "$sources" "none of them is recorded"
is "$(blobs)" "$before" "none of them is stored in the registry"

tar -C "$src/site" -czf "$tmp/site.tgz" .
is "$(upload "$tmp/site.tgz")" 201 "an upload is stored"
is "$(jq -r .already_stored "$tmp/upload.out")" false "its bytes go to the registry"
after_one=$(blobs)
is "$(upload "$tmp/site.tgz")" 200 "the same upload again is answered"
is "$(jq -r '"\(.already_stored) \(.bytes_stored)"' "$tmp/upload.out")" "true 0" "and stored no byte"
is "$(blobs)" "$after_one" "the registry holds it once"
out=$(loom buildrun submit --name again --source "$src/site" 2>&1)
like "$out" 'already uploaded' "the CLI does not send a source the project has"

# the CLI's packing: .ceignore wins over .gitignore; a link out of the directory is refused
mkdir -p "$src/ceig"
echo '<p>ignored by .ceignore</p>' >"$src/ceig/index.html"
echo secret >"$src/ceig/secret.txt"
echo kept >"$src/ceig/kept.txt"
echo secret.txt >"$src/ceig/.ceignore"
echo kept.txt >"$src/ceig/.gitignore"
out=$(loom buildrun submit --name ceig --source "$src/ceig" --size small --wait 2>&1)
is "$?" 0 "a source with a .ceignore builds" || diag "$out"
files=$(curl -s "http://$LOOM_REGISTRY/v2/default/loom-sources/blobs/$(run_field ceig .source_upload)" | tar tz)
unlike "$files" 'secret.txt' ".ceignore left its files out of the upload"
like "$files" 'kept.txt' "and .gitignore was not read beside it"
ln -s /etc/passwd "$src/ceig/passwd"
out=$(loom buildrun submit --name linkout --source "$src/ceig" 2>&1)
rc=$?
ok "a source with a symbolic link out of its directory is refused" [ "$rc" -ne 0 ]
like "$out" 'passwd" is a symbolic link to "/etc/passwd", outside' "the CLI names the link" || diag "$out"
is "$(sql "SELECT count(*) FROM build_runs WHERE name = 'linkout'")" 0 "and submits no run"

# --- a saved build: create, run by name, update, delete ---------------------------------------
out=$(loom build create saved --source "$src/site" --size small 2>&1)
is "$?" 0 "build create: a saved build of a directory" || diag "$out"
is "$(loom build get saved -o json 2>/dev/null | jq -r '"\(.source_type) \(.strategy_size)"')" \
	"local small" "build get shows its source and size"
like "$(loom build list 2>&1)" '^saved +' "build list shows it"
out=$(loom buildrun submit --name fromsaved --build saved --wait 2>&1)
is "$?" 0 "buildrun submit --build runs it" || diag "$out"
is "$(run_field fromsaved .build_name)" saved "the run names its build"
like "$(run_field fromsaved .status_details.output_image_digest)" '/default/saved@sha256:' \
	"and pushes the build's image by digest"
out=$(loom build update saved --strategy dockerfile 2>&1)
is "$?" 0 "build update" || diag "$out"
loom buildrun submit --name fromsaved2 --build saved --wait >/dev/null 2>&1
is "$(run_field fromsaved2 .status)" failed "a run of the updated build fails"
reason=$(run_field fromsaved2 .status_details.reason)
like "$reason" 'Dockerfile' "it took the new strategy (the site has no Dockerfile)" || diag "$reason"
loom build get nosuch >/dev/null 2>&1
is "$?" 3 "build get of an unknown build exits 3"
loom build delete saved >/dev/null 2>&1
is "$?" 0 "build delete"
loom build get saved >/dev/null 2>&1
is "$?" 3 "and it is gone"

finish
