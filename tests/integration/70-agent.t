#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2317 # $VARS for the container's shell; functions run through wait_for
# The node agent against a real registry and real runc, through the API and
# the CLI: isolation inside a container (processes, mounts, capabilities),
# network isolation between projects, OOM kills, the max execution time,
# log order and streams, metered cpu, refused images (a blob whose digest does
# not match, a layer that escapes its root), and an agent killed with -9 and
# restarted that re-adopts its running container.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# The agent killed below must be back before its node counts as lost: on a
# loaded machine a restart (exec, inventory, user namespace probe) has taken
# 7 s, past the default 5 s.
export LOOM_SCHEDULER_NODE_TIMEOUT=30s
platform_up
image=$LOOM_REGISTRY/loom/busybox:latest

run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }
run_ended() { case "$(run_field "$1" .status)" in completed | failed) return 0 ;; esac; return 1; }
# submit NAME ARGS...: a one-index run, no retries
submit() {
	local name=$1 out
	shift
	out=$(loom jobrun submit --name "$name" --image "$image" --retrylimit 0 "$@" 2>&1) ||
		diag "submit $name: $out"
}
# wait_run NAME SECONDS: waits for NAME to end; says so
wait_run() {
	if ! wait_for "$2" run_ended "$1"; then
		diag "run $1 did not end within $2 s: $(run_json "$1" | head -c 2000)"
		return 1
	fi
}
reason_of() { run_field "$1" '.status_details.indices_details[0].last_failure_reason'; }
logs_of() {
	api GET "/v1/projects/$LOOM_PROJECT/job_runs/$1/logs"
	jq -r '.lines[] | "\(.stream) \(.line)"' <<<"$http_body" 2>/dev/null
}
# wait_logs NAME PATTERN: until the run's logs have a line matching PATTERN
wait_logs() { wait_for 20 has_log "$1" "$2"; }
has_log() { logs=$(logs_of "$1") && grep -qE "$2" <<<"$logs"; }

# --- inside a container --------------------------------------------------------
submit inside --cmd 'echo "procs=$(ls -d /proc/[0-9]* | wc -l) pid1=$(tr "\0" " " </proc/1/cmdline)"
if mount -t tmpfs x /mnt 2>/dev/null; then echo mount=ok; else echo mount=refused; fi
echo "capeff=$(grep CapEff /proc/self/status | cut -f2)"'
wait_run inside 60
is "$(run_field inside .status)" completed "the inside job completes"
wait_logs inside 'capeff='
procs=$(sed -n 's/^stdout procs=\([0-9]*\) .*/\1/p' <<<"$logs")
host_procs=$(find /proc -maxdepth 1 -name '[0-9]*' | wc -l)
diag "processes seen inside: $procs (on the host: $host_procs)"
ok "host processes are invisible (${procs:-?} < 10)" test "${procs:-99}" -lt 10
like "$logs" 'pid1=/bin/sh -c' "pid 1 is the job's own command"
like "$logs" 'mount=refused' "mounting a tmpfs fails inside"
capeff=$(sed -n 's/^stdout capeff=\([0-9a-f]*\)$/\1/p' <<<"$logs")
diag "CapEff $capeff"
ok "CAP_SYS_ADMIN (bit 21) is absent from CapEff" test -n "$capeff" -a $((0x${capeff:-200000} >> 21 & 1)) -eq 0

# --- OOM -------------------------------------------------------------------------
submit oom --cpu 0.125 --memory 256M --cmd 'awk "BEGIN { s = \"x\"; while (1) s = s s }"'
wait_run oom 60
is "$(run_field oom .status)" failed "a job past its memory limit fails"
like "$(reason_of oom)" '[Oo][Oo][Mm]' "the failure is reported as an OOM kill ($(reason_of oom))"

# --- max execution time --------------------------------------------------------------
start=$(now_ms)
submit slow --maxexecutiontime 3 --cmd 'sleep 60'
wait_run slow 60
took=$(($(now_ms) - start))
is "$(run_field slow .status)" failed "a job past its max execution time fails"
like "$(reason_of slow)" 'timed out' "the failure is reported as timed out ($(reason_of slow))"
ok "it was killed, not left to run 60 s ($(seconds $took) s)" test $took -lt 30000

# --- log order and streams ---------------------------------------------------------------
submit chatty --cmd 'i=0; while [ $i -lt 50 ]; do echo "seq $i out"; echo "seq $i err" >&2; i=$((i + 1)); done'
wait_run chatty 60
is "$(run_field chatty .status)" completed "the chatty job completes"
wait_for 20 has_log chatty 'seq 49 err'
want=$(for i in $(seq 0 49); do echo "stdout seq $i out"; done)
is "$(grep '^stdout' <<<"$logs")" "$want" "stdout: all 50 lines, in order, tagged stdout"
want=$(for i in $(seq 0 49); do echo "stderr seq $i err"; done)
is "$(grep '^stderr' <<<"$logs")" "$want" "stderr: all 50 lines, in order, tagged stderr"
# two pipes: what a fast writer put in both before the shim read them keeps
# its order per stream only; a writer that paces its lines keeps the total order
submit paced --cmd 'sleep 0.3; i=0; while [ $i -lt 20 ]; do echo "seq $i out"; usleep 20000; echo "seq $i err" >&2; usleep 20000; i=$((i + 1)); done'
wait_run paced 60
wait_for 20 has_log paced 'seq 19 err'
want=$(for i in $(seq 0 19); do
	echo "stdout seq $i out"
	echo "stderr seq $i err"
done)
is "$logs" "$want" "a paced writer's two streams keep the order they were written in"

# --- metered cpu --------------------------------------------------------------------------------
# the shell reaps awk, so its stat's cutime+cstime hold what awk burned
submit burn --cpu 1 --cmd 'awk "BEGIN { for (i = 0; i < 12000000; i++) s += i }"
set -- $(cat /proc/$$/stat); shift 13; echo "ticks $(($1 + $2 + $3 + $4))"'
wait_run burn 90
is "$(run_field burn .status)" completed "the cpu-burning job completes"
wait_logs burn 'ticks [0-9]+'
ticks=$(sed -n 's/^stdout ticks \([0-9]*\)$/\1/p' <<<"$logs")
burned_ms=$((${ticks:-0} * 1000 / $(getconf CLK_TCK)))
burn_id=$(psql "$LOOM_PG_DSN" -Atc "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id
	WHERE r.name = 'burn'" 2>&1)
metered() {
	metered_ns=$(psql "$LOOM_PG_DSN" -Atc "SELECT max(cpu_usage_ns) FROM usage_samples
		WHERE instance_id = '$burn_id'" 2>/dev/null)
	[ -n "$metered_ns" ] && [ $((metered_ns / 1000000)) -ge $((burned_ms * 9 / 10)) ]
}
wait_for 20 metered
metered_ms=$((${metered_ns:-0} / 1000000))
diag "burned $burned_ms ms (the job's own count), metered $metered_ms ms"
ok "metered cpu within 10% of what was burned" \
	test "$burned_ms" -gt 1000 -a $((metered_ms * 10)) -ge $((burned_ms * 9)) -a \
	$((metered_ms * 10)) -le $((burned_ms * 11))

# --- refused images -----------------------------------------------------------------------------
# a layer blob changed in the registry's storage after the push
mkdir -p "$tmp/corrupt-add/etc" && echo "corrupt $$" >"$tmp/corrupt-add/etc/marker"
image_busybox_layout "$tmp/corrupt-layout" --add "$tmp/corrupt-add" >/dev/null 2>&1
image_push "$tmp/corrupt-layout" "$LOOM_REGISTRY/loom/corrupt:latest"
mdigest=$(jq -r '.manifests[0].digest' "$tmp/corrupt-layout/index.json")
layer=$(jq -r '.layers[0].digest' "$tmp/corrupt-layout/blobs/sha256/${mdigest#sha256:}")
hex=${layer#sha256:}
blob=$LOOM_HOME/registry/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data
if [ -f "$blob" ]; then
	# same size, one byte different
	printf 'X' | dd of="$blob" bs=1 seek=100 conv=notrunc status=none
	pass "layer blob $layer corrupted in the registry"
else
	fail "layer blob found in the registry's storage ($blob)"
fi
out=$(loom jobrun submit --name corrupt --image "$LOOM_REGISTRY/loom/corrupt:latest" --retrylimit 0 \
	--cmd true 2>&1) || diag "$out"
wait_run corrupt 60
is "$(run_field corrupt .status)" failed "an image whose layer does not match its digest fails"
like "$(reason_of corrupt)" 'digest mismatch' "the reason names the digest mismatch ($(reason_of corrupt | cut -c1-160))"

# a layer with a ../ entry (python's tarfile writes what GNU tar would refuse)
image_busybox_layout "$tmp/escape-layout" >/dev/null 2>&1
python3 - "$tmp/escape-layout" "escape-$$" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
layout, marker = sys.argv[1], sys.argv[2]
blobs = os.path.join(layout, "blobs", "sha256")
def read(d): return open(os.path.join(blobs, d.split(":")[1]), "rb").read()
def write(data):
    h = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, h), "wb").write(data)
    return "sha256:" + h, len(data)
index = json.loads(open(os.path.join(layout, "index.json")).read())
manifest = json.loads(read(index["manifests"][0]["digest"]))
config = json.loads(read(manifest["config"]["digest"]))
raw = gzip.decompress(read(manifest["layers"][0]["digest"]))
buf = io.BytesIO()
with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as dst:
    for m in src.getmembers():
        dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    evil = b"escaped\n"
    ti = tarfile.TarInfo("../../../../../../tmp/" + marker)
    ti.size = len(evil)
    dst.addfile(ti, io.BytesIO(evil))
tar = buf.getvalue()
config["rootfs"]["diff_ids"] = ["sha256:" + hashlib.sha256(tar).hexdigest()]
ld, ls = write(gzip.compress(tar))
manifest["layers"][0].update(digest=ld, size=ls)
cd, cs = write(json.dumps(config).encode())
manifest["config"].update(digest=cd, size=cs)
md, ms = write(json.dumps(manifest).encode())
index["manifests"][0].update(digest=md, size=ms)
open(os.path.join(layout, "index.json"), "w").write(json.dumps(index))
PY
ok "an escaping image is built and pushed" image_push "$tmp/escape-layout" "$LOOM_REGISTRY/loom/escape:latest"
out=$(loom jobrun submit --name escape --image "$LOOM_REGISTRY/loom/escape:latest" --retrylimit 0 \
	--cmd true 2>&1) || diag "$out"
wait_run escape 60
is "$(run_field escape .status)" failed "an image with a ../ entry fails"
like "$(reason_of escape)" 'unsafe|escap|\.\.' "the reason names the unsafe path ($(reason_of escape | cut -c1-160))"
ok "nothing was written outside the root (/tmp/escape-$$)" test ! -e "/tmp/escape-$$"
rm -f "/tmp/escape-$$"

# --- network isolation between projects -------------------------------------------------------
other=itp$$
"$bin/loom-admin" projects create "$other" >/dev/null 2>&1
other_key=$("$bin/loom-admin" keys create --project "$other" --role write 2>/dev/null)
like "$other_key" '^loom_' "a write key for a second project ($other)"
web_cmd='httpd -f -p 8080 -h /etc'
out=$(loom app create web --image "$image" --cmd "$web_cmd" --port 8080 --min-scale 1 --cpu 0.125 \
	--memory 256M 2>&1) || diag "$out"
out=$(LOOM_PROJECT=$other LOOM_KEY=$other_key loom app create web --image "$image" --cmd "$web_cmd" \
	--port 8080 --min-scale 1 --cpu 0.125 --memory 256M 2>&1) || diag "$out"
addr_of_app() { # PROJECT KEY
	api GET "/v1/projects/$1/apps/web/instances" "" "$2"
	jq -r '[.instances[] | select(.status == "running") | .address][0] // empty' <<<"$http_body" 2>/dev/null
}
both_up() {
	addr_a=$(addr_of_app "$LOOM_PROJECT" "$LOOM_KEY") && addr_b=$(addr_of_app "$other" "$other_key") &&
		[ -n "$addr_a" ] && [ -n "$addr_b" ]
}
ok "both projects' app instances run" wait_for 60 both_up
diag "project $LOOM_PROJECT: $addr_a, project $other: $addr_b"
ok "the host (where the activator runs) reaches an app instance" curl -fsS -m 5 -o /dev/null "http://$addr_a/hostname"
probe='for t in "$@"; do
	if printf "GET /hostname HTTP/1.0\r\n\r\n" | nc -w 3 "${t%:*}" "${t#*:}" | grep -q "^HTTP/1"; then
		echo "reach $t yes"; else echo "reach $t no"; fi
done'
submit net-a --cpu 0.125 --memory 256M --command /bin/sh --arg -c --arg "$probe" --arg sh --arg "$addr_a" --arg "$addr_b"
out=$(LOOM_PROJECT=$other LOOM_KEY=$other_key loom jobrun submit --name net-b --image "$image" \
	--retrylimit 0 --cpu 0.125 --memory 256M --command /bin/sh --arg -c --arg "$probe" --arg sh \
	--arg "$addr_b" --arg "$addr_a" 2>&1) || diag "$out"
wait_run net-a 60
wait_logs net-a "reach $addr_b"
like "$logs" "reach $addr_a yes" "a job reaches its own project's app instance"
like "$logs" "reach $addr_b no" "a job cannot reach another project's app instance"
net_b_logs() {
	api GET "/v1/projects/$other/job_runs/net-b/logs" "" "$other_key"
	logs=$(jq -r '.lines[] | .line' <<<"$http_body" 2>/dev/null) && grep -q "reach $addr_a" <<<"$logs"
}
wait_for 60 net_b_logs
like "$logs" "reach $addr_b yes" "the other project's job reaches its own app instance"
like "$logs" "reach $addr_a no" "... and not this project's"
loom app delete web >/dev/null 2>&1
LOOM_PROJECT=$other LOOM_KEY=$other_key loom app delete web >/dev/null 2>&1

# a network namespace kept after a container goes back to its own project only
ip_cmd='ifconfig eth0 | sed -n "s/.*inet addr:\([0-9.]*\).*/ip \1/p"'
instance_of() {
	psql "$LOOM_PG_DSN" -Atc "SELECT i.id FROM instances i JOIN job_runs r ON r.id = i.job_run_id
		WHERE r.name = '$1'" 2>/dev/null | head -1
}
cleaned_up() { local id; id=$(instance_of "$1") && [ -n "$id" ] && [ -e "$LOOM_HOME/agent/instances/$id/done" ]; }
ip_of_run() { sed -n 's/^stdout ip \([0-9.]*\)$/\1/p' <<<"$logs" | head -1; }
submit ip-a1 --cmd "$ip_cmd"
wait_run ip-a1 60
wait_logs ip-a1 '^stdout ip '
ip_a1=$(ip_of_run)
ok "the first container has been cleaned up" wait_for 30 cleaned_up ip-a1
out=$(LOOM_PROJECT=$other LOOM_KEY=$other_key loom jobrun submit --name ip-b --image "$image" \
	--retrylimit 0 --cmd "$ip_cmd" 2>&1) || diag "$out"
ip_b_logs() {
	api GET "/v1/projects/$other/job_runs/ip-b/logs" "" "$other_key"
	ip_b=$(jq -r '.lines[].line' <<<"$http_body" 2>/dev/null | sed -n 's/^ip \([0-9.]*\)$/\1/p' | head -1)
	[ -n "$ip_b" ]
}
ok "the other project's container prints its address" wait_for 60 ip_b_logs
submit ip-a2 --cmd "$ip_cmd"
wait_run ip-a2 60
wait_logs ip-a2 '^stdout ip '
ip_a2=$(ip_of_run)
diag "addresses: ${ip_a1:-?} (project $LOOM_PROJECT), then ${ip_b:-?} ($other), then ${ip_a2:-?}"
is "$ip_a2" "$ip_a1" "the project's next container reuses its kept network namespace"
ok "another project's container never gets it (${ip_b:-?})" test -n "$ip_b" -a "$ip_b" != "$ip_a1"

# --- secrets and config maps mounted read-only ----------------------------------------------
out=$(loom secret create creds --from-literal password=hunter2 2>&1) || diag "$out"
out=$(loom configmap create settings --from-literal mode=fast 2>&1) || diag "$out"
mount_cmd='cat /etc/creds/password; echo; cat /etc/settings/mode; echo
stat -c "perm %a" /etc/creds/password /etc/settings/mode
if touch /etc/creds/x 2>/dev/null; then echo "creds writable"; else echo "creds read-only"; fi
grep " /etc/creds " /proc/mounts | grep -q " ro," && echo "creds mount ro"'
api POST "/v1/projects/$LOOM_PROJECT/job_runs" "$(jq -nc --arg img "$image" --arg c "$mount_cmd" 	'{name:"mounted",image_reference:$img,run_commands:["/bin/sh","-c",$c],scale_retry_limit:0,
	  scale_cpu_limit:"0.125",scale_memory_limit:"256M",
	  run_volume_mounts:[{type:"secret",reference:"creds",mount_path:"/etc/creds"},
	                     {type:"config_map",reference:"settings",mount_path:"/etc/settings"}]}')"
is "$http_status" 201 "a run with a secret and a config map mounted is created"
wait_run mounted 60
wait_logs mounted 'creds'
like "$logs" "stdout hunter2" "the secret's key is a file in the container"
like "$logs" "stdout fast" "and so is the config map's"
like "$logs" "stdout creds read-only" "the mounted files cannot be written"
like "$logs" "stdout creds mount ro" "the mount is read-only"
mounted_id=$(psql "$LOOM_PG_DSN" -Atc "SELECT i.id FROM instances i JOIN job_runs r
	ON r.id = i.job_run_id WHERE r.name = 'mounted'")
mounts_gone() { [ -n "$mounted_id" ] && [ ! -e "$LOOM_HOME/agent/instances/$mounted_id/mounts" ]; }
ok "the files written for the mounts go with the instance" wait_for 30 mounts_gone

# --- probes: readiness gates RUNNING, a failing liveness probe kills --------------------------
api POST "/v1/projects/$LOOM_PROJECT/apps" "$(jq -nc --arg img "$image" --arg c "$web_cmd" 	'{name:"unwell",image_reference:$img,run_commands:["/bin/sh","-c",$c],image_port:8080,
	  scale_min_instances:1,scale_cpu_limit:"0.125",scale_memory_limit:"256M",
	  probe_readiness:{type:"http",path:"/passwd",interval:1},
	  probe_liveness:{type:"http",path:"/no-such-file",interval:1,failure_threshold:2}}')"
is "$http_status" 201 "an app whose liveness probe fails is created"
liveness_failed() {
	n=$(psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
		WHERE a.name = 'unwell' AND i.state = 'failed' AND i.reason LIKE 'liveness probe failed: %'")
	[ "${n:-0}" -ge 1 ]
}
ok "a failing liveness probe kills the instance, reported as such" wait_for 60 liveness_failed
was_running=$(psql "$LOOM_PG_DSN" -Atc "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id
	WHERE a.name = 'unwell' AND i.address IS NOT NULL AND i.address <> ''")
like "$was_running" '^[1-9]' "it was RUNNING (readiness passed) before that"
api DELETE "/v1/projects/$LOOM_PROJECT/apps/unwell"

# --- user namespaces ------------------------------------------------------------------------
# Each project's containers run as their own 65536 host ids, over ID-mapped
# image layers (the agent's --userns auto turns this on where the host can;
# where it cannot, it logs "user namespaces off: <why>" and the section is a
# TAP skip that says why).
agent_says() { jq -Rr 'fromjson? | .msg // empty' "$LOOM_HOME/logs/agent.log" | grep -m1 "^$1"; }
userns_off=$(agent_says 'user namespaces off: ')
userns_off=${userns_off#user namespaces off: }
# turned off on purpose, the agent says nothing
[ "${LOOM_AGENT_USERNS:-auto}" != off ] || userns_off="LOOM_AGENT_USERNS=off"
if [ -n "$userns_off" ]; then
	skip "user namespaces are off: $userns_off"
else
	like "$(agent_says 'user namespaces on')" '^user namespaces on: ' \
		"the agent runs containers in user namespaces"
	userns_cmd='cat /proc/self/uid_map; cat /proc/self/gid_map; echo "uid=$(id -u) gid=$(id -g)"
stat -c "passwd-owner %u:%g" /etc/passwd
echo "sys-net $(ls /sys/class/net | tr "\n" " ")"
httpd -p 80 -h /etc && echo low-port-bound
echo "nobody-was-here" >>/etc/passwd && echo image-file-written
echo x >/userns-marker && echo marker-written
i=0; while [ ! -e /go ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
echo done'
	submit userns --cmd "$userns_cmd"
	wait_logs userns 'marker-written'
	uidmap=$(sed -n 's/^stdout  *0  *\([0-9][0-9]*\)  *65536$/\1/p' <<<"$logs" | head -1)
	gidmap=$(sed -n 's/^stdout  *0  *\([0-9][0-9]*\)  *65536$/\1/p' <<<"$logs" | sed -n 2p)
	diag "project $LOOM_PROJECT: container ids 0-65535 are host ids ${uidmap:-?}-"
	ok "uid_map inside maps 0..65535 to a range above 1048575 (${uidmap:-none})" \
		test "${uidmap:-0}" -ge 1048576 -a $((${uidmap:-1} % 65536)) -eq 0
	is "$gidmap" "$uidmap" "gid_map maps the same range"
	like "$logs" 'stdout uid=0 gid=0' "the process is root inside"
	like "$logs" 'stdout passwd-owner 0:0' "the image's files are owned by root inside (ID-mapped layers)"
	like "$logs" 'stdout image-file-written' "container root can change an image file"
	# sysfs is the container's own (its network namespace belongs to the
	# project's user namespace), not the host's
	like "$logs" '^stdout sys-net (eth0 lo|lo eth0) ?$' "/sys shows the container's own interfaces"
	like "$logs" '^stdout low-port-bound' "root inside can listen on port 80"
	marker=$(find "$LOOM_HOME/agent/instances" -path '*/scratch/upper/userns-marker' 2>/dev/null | head -1)
	ok "the written file is in the instance's upper layer on the host" test -n "$marker"
	is "$(stat -c %u:%g "$marker" 2>/dev/null)" "$uidmap:$uidmap" \
		"on the host it is owned by the project's root id, not by root"
	passwd_up=$(dirname "$marker")/etc/passwd
	is "$(stat -c %u:%g "$passwd_up" 2>/dev/null)" "$uidmap:$uidmap" "so is the copied-up image file"
	userns_dir=${marker%/scratch/upper/userns-marker}
	layers=$(awk '{ print $5 }' /proc/self/mountinfo | grep -cF "$userns_dir/lower/")
	ok "the image layers are mounted ID-mapped for it ($layers)" test "$layers" -ge 1
	# the test is done looking: the container may end
	touch "$userns_dir/rootfs/go"
	wait_run userns 60
	is "$(run_field userns .status)" completed "the job completes"
	no_mounts() { ! awk '{ print $5 }' /proc/self/mountinfo | grep -qF "$userns_dir/"; }
	ok "nothing of the instance stays mounted once it is cleaned up" wait_for 30 no_mounts
	ok "its lower/ directory is gone" wait_for 10 test ! -e "$userns_dir/lower"
	# a second project gets another range
	out=$(LOOM_PROJECT=$other LOOM_KEY=$other_key loom jobrun submit --name userns-b --image "$image" \
		--retrylimit 0 --cmd 'cat /proc/self/uid_map' 2>&1) || diag "$out"
	other_map() {
		api GET "/v1/projects/$other/job_runs/userns-b/logs" "" "$other_key"
		other_base=$(jq -r '.lines[].line' <<<"$http_body" 2>/dev/null |
			sed -n 's/^ *0  *\([0-9][0-9]*\)  *65536$/\1/p' | head -1)
		[ -n "$other_base" ]
	}
	ok "the other project's job prints its uid_map" wait_for 60 other_map
	diag "project $other: host ids ${other_base:-?}-"
	ok "the two projects' ranges do not overlap (${uidmap:-?} vs ${other_base:-?})" \
		test $(((${other_base:-0} - ${uidmap:-0}) / 65536)) -ne 0
	# the same project keeps its range
	submit userns-again --cmd 'cat /proc/self/uid_map'
	wait_logs userns-again ' 65536'
	like "$logs" "^stdout +0 +$uidmap +65536" "the project's next container gets the same range"
fi

# --- kill -9 of the agent mid-run, then restart ----------------------------------------------
# The container must go on as it was: the same process before and after the
# agent's restart, its instance row never lost or failed, one instance that
# started once and ends succeeded. The job waits for /go, which the test
# writes once it has looked, so that it is still running when the agent is back.
submit survivor --cmd 'echo "start $(date +%s)"; i=0
while [ ! -e /go ] && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
echo "survivor done"'
survivor_id=""
survivor_row() {
	psql "$LOOM_PG_DSN" -Atc "SELECT i.id, i.state, i.started_at FROM instances i
		JOIN job_runs r ON r.id = i.job_run_id WHERE r.name = 'survivor'" 2>/dev/null
}
survivor_runs() {
	local row
	row=$(survivor_row) && [ "$(cut -d'|' -f2 <<<"$row")" = running ] || return 1
	survivor_id=$(cut -d'|' -f1 <<<"$row")
	survivor_started=$(cut -d'|' -f3 <<<"$row")
}
ok "the survivor job's instance runs" wait_for 30 survivor_runs
# the container's init process, as runc knows it, and when it started (a
# pid that is reused has another start time)
container_pid() {
	runc --root "$LOOM_HOME/agent/runc" state "$survivor_id" 2>/dev/null |
		jq -r 'select(.status == "running") | .pid'
}
start_time() { awk '{ print $22 }' "/proc/$1/stat" 2>/dev/null; }
pid_before=$(container_pid)
started_before=$(start_time "${pid_before:-0}")
ok "runc runs its container (pid ${pid_before:-none})" test -n "$pid_before" -a -n "$started_before"
# every state the instance row is in, from now until the run ends
(
	while :; do
		survivor_row | cut -d'|' -f1,2
		sleep 0.2
	done
) >"$tmp/survivor-states" 2>/dev/null &
watcher=$!
sleep 1
agent_pid=$(cat "$LOOM_HOME/run/agent.pid")
mapfile -d '' -t agent_env <"/proc/$agent_pid/environ"
mapfile -d '' -t agent_cmd <"/proc/$agent_pid/cmdline"
kill -9 "$agent_pid"
gone() { ! kill -0 "$agent_pid" 2>/dev/null; }
ok "the agent is killed with -9" wait_for 5 gone
sleep 1
(cd / && exec setsid env -i "${agent_env[@]}" "${agent_cmd[@]}" >>"$LOOM_HOME/logs/agent.log" 2>&1 \
	</dev/null 9>&-) &
echo $! >"$LOOM_HOME/run/agent.pid"
agent_ready() { curl -fsS -m 2 -o /dev/null "http://$LOOM_AGENT_ADDR/readyz" 2>/dev/null; }
ok "the agent restarts" wait_for 30 agent_ready
adopted() { grep -q "instance $survivor_id: adopted running shim" "$LOOM_HOME/logs/agent.log"; }
ok "the restarted agent adopts the running container" wait_for 10 adopted
pid_after=$(container_pid)
is "${pid_after:-none}" "$pid_before" "runc still runs the same container process"
is "$(start_time "${pid_after:-0}")" "$started_before" "... the very same one (its start time)"
row=$(survivor_row)
is "$(cut -d'|' -f1,2 <<<"$row")" "$survivor_id|running" "its instance keeps its id and runs"
is "$(cut -d'|' -f3 <<<"$row")" "$survivor_started" "... with the start time it had"
# the test has looked: the job may end
touch "$LOOM_HOME/agent/instances/$survivor_id/rootfs/go"
wait_run survivor 60
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
# the last look, after the run ended (the watcher may not have taken one since)
survivor_row | cut -d'|' -f1,2 >>"$tmp/survivor-states"
is "$(run_field survivor .status)" completed "the re-adopted job finishes normally"
is "$(run_field survivor .status_details.succeeded)" 1 "its index succeeded"
is "$(survivor_row | cut -d'|' -f1,2)" "$survivor_id|succeeded" "one instance, the same, succeeded"
states=$(cut -d'|' -f2 "$tmp/survivor-states" | uniq | paste -sd' ')
is "$states" "running succeeded" "the instance went from running to succeeded, never lost or failed"
is "$(cut -d'|' -f1 "$tmp/survivor-states" | sort -u)" "$survivor_id" "and was that one instance throughout"
wait_logs survivor 'survivor done'
is "$(grep -c '^stdout start' <<<"$logs")" 1 "its command started once"
is "$(grep -c '^stdout survivor done' <<<"$logs")" 1 "and ended once"

finish
