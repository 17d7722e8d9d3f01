#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run through wait_for and the EXIT trap
# The node agent pulls from registries that want credentials, given through a
# registry secret (image_secret): one registry with HTTP basic auth
# (htpasswd), one with bearer tokens (a token server, nginx with auth_basic,
# hands out a JWT the registry trusts). Runs without a secret, with a wrong
# password and with a secret for another server fail as refused; runs with the
# right secret complete. The token server's log shows the agent's credentials
# took the token path; no password reaches the agent's or the scheduler's log.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

for t in docker-registry nginx htpasswd openssl skopeo; do
	command -v "$t" >/dev/null || skip_all "needs $t (tools/install-deps)"
done

platform_up

# --- the extra registries and the token server ----------------------------------
# All under LOOM_HOME (kept with it when the test fails). lib.sh's leak check
# skips this test's own children, so the end checks itself that they stopped.
extra=$LOOM_HOME/extra
mkdir -p "$extra"
extra_pids=()
# stop_extras: SIGTERM to what this test started, SIGKILL after 10 s.
stop_extras() {
	local pid alive
	[ ${#extra_pids[@]} -gt 0 ] || return 0
	kill -TERM "${extra_pids[@]}" 2>/dev/null
	for _ in $(seq 50); do
		alive=()
		for pid in "${extra_pids[@]}"; do pid_running "$pid" && alive+=("$pid"); done
		[ ${#alive[@]} -gt 0 ] || break
		sleep 0.2
	done
	[ ${#alive[@]} -eq 0 ] || kill -KILL "${alive[@]}" 2>/dev/null
	wait "${extra_pids[@]}" 2>/dev/null
	extra_pids=()
	return 0
}
# a test that ends early stops them too, before the platform goes
extras_trap() {
	local rc=$?
	stop_extras
	(exit "$rc")
	platform_trap
}
trap 'extras_trap' EXIT

# start_registry NAME PORT AUTH_YAML: a docker-registry on 127.0.0.1:PORT
start_registry() {
	local dir=$extra/$1
	mkdir -p "$dir/store"
	cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/store
http:
  addr: 127.0.0.1:$2
$3
EOF
	docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
	extra_pids+=($!)
}
# answers URL: something answers on URL (any HTTP status)
answers() { [ "$(http_code "$1")" != 000 ]; }

user_pw=u$(openssl rand -hex 12)   # the agent's password (both registries)
wrong_pw=w$(openssl rand -hex 12)  # a wrong one
push_pw=p$(openssl rand -hex 12)   # skopeo's, as user "pusher"
repo_name=loom/private

# basic: an htpasswd file (bcrypt, the only kind docker-registry takes)
basic_port=""
free_port basic_port
basic=127.0.0.1:$basic_port
{
	htpasswd -Bbn user "$user_pw"
	htpasswd -Bbn pusher "$push_pw"
} | grep -v '^$' >"$extra/basic.htpasswd"
start_registry basic "$basic_port" "auth:
  htpasswd:
    realm: loom-test-basic
    path: $extra/basic.htpasswd"

# bearer: the registry trusts tokens signed by the key of cert.pem
bearer_port="" token_port=""
free_port bearer_port
free_port token_port
bearer=127.0.0.1:$bearer_port
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$extra/token-key.pem" -out "$extra/token-cert.pem" \
	-days 2 -subj /CN=loom-test-token >"$tmp/openssl.out" 2>&1 || diag "$(cat "$tmp/openssl.out")"
start_registry bearer "$bearer_port" "auth:
  token:
    realm: http://127.0.0.1:$token_port/token
    service: loom-test
    issuer: loom-test-issuer
    rootcertbundle: $extra/token-cert.pem"

# the JWT: RS256, the signing cert in x5c, pull and push on the repository
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
jwt_header=$(jq -cnj --arg x5c "$(openssl x509 -in "$extra/token-cert.pem" -outform DER | base64 -w0)" \
	'{alg: "RS256", typ: "JWT", x5c: [$x5c]}' | b64url)
jwt_claims=$(jq -cnj --argjson now "$now" --arg repo "$repo_name" '{iss: "loom-test-issuer",
	sub: "user", aud: "loom-test", exp: ($now + 7200), nbf: ($now - 60), iat: $now,
	jti: "loom-test-\($now)", access: [{type: "repository", name: $repo, actions: ["pull", "push"]}]}' |
	b64url)
jwt_sig=$(printf '%s.%s' "$jwt_header" "$jwt_claims" |
	openssl dgst -sha256 -sign "$extra/token-key.pem" -binary | b64url)
token=$jwt_header.$jwt_claims.$jwt_sig
jq -cnj --arg t "$token" '{token: $t}' >"$extra/token.json"

# the token server: nginx, one process (no workers that would run as nobody
# and could not read LOOM_HOME), basic auth (apr1) on /token
ngx=$extra/nginx
mkdir -p "$ngx/logs"
{
	printf 'user:%s\n' "$(openssl passwd -apr1 "$user_pw")"
	printf 'pusher:%s\n' "$(openssl passwd -apr1 "$push_pw")"
} >"$ngx/htpasswd"
cat >"$ngx/nginx.conf" <<EOF
master_process off;
daemon off;
pid $ngx/nginx.pid;
error_log $ngx/logs/error.log;
events { worker_connections 64; }
http {
	access_log $ngx/logs/access.log;
	client_body_temp_path $ngx/body;
	proxy_temp_path $ngx/proxy;
	fastcgi_temp_path $ngx/fastcgi;
	uwsgi_temp_path $ngx/uwsgi;
	scgi_temp_path $ngx/scgi;
	server {
		listen 127.0.0.1:$token_port;
		location = /token {
			auth_basic "loom-test";
			auth_basic_user_file $ngx/htpasswd;
			default_type application/json;
			alias $extra/token.json;
		}
	}
}
EOF
nginx -p "$ngx" -e "$ngx/logs/error.log" -c "$ngx/nginx.conf" >"$ngx/logs/stdout.log" 2>&1 </dev/null &
extra_pids+=($!)

if ! wait_for 30 answers "http://$basic/v2/" || ! wait_for 30 answers "http://$bearer/v2/" ||
	! wait_for 30 answers "http://127.0.0.1:$token_port/token"; then
	diag "$(tail -n 5 "$extra"/*/registry.log "$ngx"/logs/*.log 2>&1)"
	stop_extras
	platform_down_quiet
	diag "state and logs kept in $LOOM_HOME"
	bail_out "the extra registries or the token server did not start"
fi

# --- the registries want credentials, and take the right ones ---------------------
get "http://$basic/v2/"
is "$http_status" 401 "the basic registry refuses a request without credentials"
get -u "user:$user_pw" "http://$basic/v2/"
is "$http_status" 200 "... and takes the agent user's"
get "http://$bearer/v2/"
is "$http_status" 401 "the bearer registry refuses a request without a token"
like "$(curl -sS -m 10 -D - -o /dev/null "http://$bearer/v2/" 2>&1 | tr -d '\r')" \
	"^Www-Authenticate: Bearer realm=\"http://127.0.0.1:$token_port/token\"" "... and names the token server"
get -H "Authorization: Bearer $token" "http://$bearer/v2/"
is "$http_status" 200 "it accepts the test's JWT"
get "http://127.0.0.1:$token_port/token?service=loom-test"
is "$http_status" 401 "the token server refuses anonymous requests"
get -u "user:$user_pw" "http://127.0.0.1:$token_port/token?service=loom-test"
is "$http_status $http_type" "200 application/json" "it answers the agent user with JSON"
is "$(jq -r .token <<<"$http_body" 2>/dev/null)" "$token" "... holding the token"

# --- two images (their own layers, so each pull fetches blobs with credentials) --------
for r in basic bearer; do
	mkdir -p "$tmp/$r-add/etc"
	echo "$r-marker-$$" >"$tmp/$r-add/etc/marker"
	image_busybox_layout "$tmp/$r-layout" --add "$tmp/$r-add" >"$tmp/$r-layout.out" 2>&1 ||
		diag "$(cat "$tmp/$r-layout.out")"
done
push() { # LAYOUT HOST
	local out
	out=$(skopeo copy --quiet --dest-tls-verify=false --dest-creds "pusher:$push_pw" \
		"oci:$1:latest" "docker://$2/$repo_name:latest" 2>&1) || {
		diag "$out"
		return 1
	}
}
ok "the image is pushed to the basic registry (as pusher)" push "$tmp/basic-layout" "$basic"
ok "the image is pushed to the bearer registry (skopeo fetches a token)" push "$tmp/bearer-layout" "$bearer"
get "http://$basic/v2/$repo_name/manifests/latest"
is "$http_status" 401 "the basic registry refuses its manifest without credentials"

# --- registry secrets -----------------------------------------------------------
secret() { # NAME SERVER PASSWORD
	local out
	out=$(loom secret create "$1" --format registry --server "$2" --username user --password "$3" 2>&1) ||
		{
			diag "secret create $1: $out"
			return 1
		}
}
ok "registry secret basic-right" secret basic-right "$basic" "$user_pw"
ok "registry secret basic-wrong" secret basic-wrong "$basic" "$wrong_pw"
# the right user and password for the basic registry, but for another server
ok "registry secret basic-elsewhere" secret basic-elsewhere "$bearer" "$user_pw"
ok "registry secret bearer-right" secret bearer-right "$bearer" "$user_pw"
ok "registry secret bearer-wrong" secret bearer-wrong "$bearer" "$wrong_pw"

# --- runs -------------------------------------------------------------------------
run_json() { loom jobrun get "$1" -o json 2>/dev/null; }
run_field() { run_json "$1" | jq -r "$2" 2>/dev/null; }
run_ended() { case "$(run_field "$1" .status)" in completed | failed) return 0 ;; esac; return 1; }
# submit NAME HOST [SECRET]: a one-index run of HOST's private image, no retries
submit() {
	local out
	local -a args=(--name "$1" --image "$2/$repo_name:latest" --retrylimit 0 --cpu 0.125
		--memory 256M --cmd 'cat /etc/marker')
	[ -z "${3:-}" ] || args+=(--registry-secret "$3")
	out=$(loom jobrun submit "${args[@]}" 2>&1) || diag "submit $1: $out"
}
wait_run() {
	if ! wait_for 180 run_ended "$1"; then
		diag "run $1 did not end within 180 s: $(run_json "$1" | head -c 2000)"
		return 1
	fi
}
reason_of() { run_field "$1" '.status_details.indices_details[0].last_failure_reason'; }
logs_of() {
	api GET "/v1/projects/$LOOM_PROJECT/job_runs/$1/logs"
	jq -r '.lines[] | "\(.stream) \(.line)"' <<<"$http_body" 2>/dev/null
}
has_log() { logs=$(logs_of "$1") && grep -qE "$2" <<<"$logs"; }

# the refused ones first (nothing of the images is on the node yet)
refused=(basic-none basic-wrong basic-elsewhere bearer-none bearer-wrong)
submit basic-none "$basic"
submit basic-wrong "$basic" basic-wrong
submit basic-elsewhere "$basic" basic-elsewhere
submit bearer-none "$bearer"
submit bearer-wrong "$bearer" bearer-wrong
for r in "${refused[@]}"; do wait_run "$r"; done
for r in "${refused[@]}"; do diag "$r: $(reason_of "$r" | cut -c1-300)"; done

is "$(run_field basic-none .status)" failed "basic registry, no image secret: the run fails"
like "$(reason_of basic-none)" "registry $basic requires credentials" \
	"... because the registry requires credentials"
is "$(run_field basic-wrong .status)" failed "basic registry, wrong password: the run fails"
like "$(reason_of basic-wrong)" "registry $basic refused the credentials" \
	"... because the registry refused the credentials"
is "$(run_field basic-elsewhere .status)" failed \
	"a secret for another server is not sent to this one: the run fails"
like "$(reason_of basic-elsewhere)" "registry $basic requires credentials" \
	"... as one without credentials"
is "$(run_field bearer-none .status)" failed "bearer registry, no image secret: the run fails"
like "$(reason_of bearer-none)" "token server refused anonymous access" \
	"... because the token server refused anonymous access"
is "$(run_field bearer-wrong .status)" failed "bearer registry, wrong password: the run fails"
like "$(reason_of bearer-wrong)" "registry $bearer: token server refused the credentials" \
	"... because the token server refused the credentials"

submit basic-right "$basic" basic-right
submit bearer-right "$bearer" bearer-right
wait_run basic-right
wait_run bearer-right
is "$(run_field basic-right .status)" completed "basic registry, right secret: the run completes"
wait_for 30 has_log basic-right 'marker'
is "$logs" "stdout basic-marker-$$" "... and prints the marker of the basic registry's image"
is "$(run_field bearer-right .status)" completed "bearer registry, right secret: the run completes"
wait_for 30 has_log bearer-right 'marker'
is "$logs" "stdout bearer-marker-$$" "... and prints the marker of the bearer registry's image"

# the image is now on the node: a run without credentials still asks the registry
submit basic-none-again "$basic"
wait_run basic-none-again
is "$(run_field basic-none-again .status)" failed \
	"with the image on the node, a run without a secret still fails"
like "$(reason_of basic-none-again)" "registry $basic requires credentials" "... as refused by the registry"

# --- the token path ran, with the agent's credentials ---------------------------------
access=$(cat "$ngx/logs/access.log" 2>/dev/null)
diag "token server's access log, the agent user's lines:"
diag "$(grep ' - user \[' <<<"$access" | cut -d' ' -f3- | cut -c1-200)"
token_get='"GET /token\?([^" ]*&)?service=loom-test&scope=repository%3Aloom%2Fprivate%3Apull[^" ]* HTTP/1\.[01]"'
like "$access" "^127\.0\.0\.1 - user \[[^]]*\] $token_get 200 " \
	"the agent fetched a token as user (200 on /token, scope pull of $repo_name)"
like "$access" "^127\.0\.0\.1 - user \[[^]]*\] $token_get 401 " "... and was refused with the wrong password (401)"
like "$access" "^127\.0\.0\.1 - - \[[^]]*\] $token_get 401 " "... and without credentials (401)"

# --- no password in the logs ------------------------------------------------------------
for f in agent scheduler; do
	log=$LOOM_HOME/logs/$f.log
	ok "the $f's log is there" test -s "$log"
	leaked=""
	for pw in "$user_pw" "$wrong_pw" "$(printf 'user:%s' "$user_pw" | base64 -w0)" \
		"$(printf 'user:%s' "$wrong_pw" | base64 -w0)"; do
		grep -qF -- "$pw" "$log" 2>/dev/null && leaked+=" $pw"
	done
	is "$leaked" "" "no registry password (plain or base64) in the $f's log"
done
leaked=""
for r in "${refused[@]}" basic-right bearer-right; do
	run_json "$r" | grep -qF -e "$user_pw" -e "$wrong_pw" && leaked+=" $r"
done
is "$leaked" "" "no registry password in the job runs the API returns"

# --- stop the extras --------------------------------------------------------------------
pids=("${extra_pids[@]}")
stop_extras
left=""
for pid in "${pids[@]}"; do pid_running "$pid" && left+=" $pid"; done
is "$left" "" "the extra registries and the token server are stopped"

finish
