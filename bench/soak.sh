#!/usr/bin/env bash
# shellcheck disable=SC2317  # the fault_* functions are called by name ("fault_$kind")
# Soak test (issue 15, part 3): mixed traffic through every feature of one Gatehouse for
# SOAK_SECONDS, while faults are injected on a schedule, then a markdown report and a verdict.
# Everything runs on 127.0.0.1 on free ephemeral ports: the script's own redis-server, 9 upstream
# instances (bench/soak_backend.py: users x3, orders x2, geo x2, files x2), one gateway, and the
# load driver bench/soak_client.py (threads + http.client, plus curl for HTTP/2), which checks
# every answer and records each request's time, feature, status, latency and error cause.
# Features: proxying with load balancing, active and passive health checks and retries; HTTPS
# (a CA and certificates made with openssl) with HTTP/1.1 and HTTP/2 (ALPN), h2c; basic auth
# (argon2id), API key, JWT (HS256); rate limits in Redis (fail open, and one fail_closed); the
# response cache in Redis; an aggregation route fanning out to 3 services (one call cached);
# POST bodies; chunked 64 KiB-1 MiB streams; the admin API and /metrics scraped every few
# seconds. Faults, one every SOAK_FAULT_EVERY seconds, in turn: kill -9 one upstream instance
# and start it again after UPSTREAM_DOWN s; a reload by SIGHUP to a changed config; kill -9
# redis-server and start it again on its port after REDIS_DOWN s; a certificate rotation
# (new cert and key written over the old files, picked up by the gateway's file check); a
# reload through the admin API (PUT /config, or POST /reload); an invalid config that must be
# refused while the gateway keeps serving. A sampler records the gateway's RSS, open fds and
# the p50/p99 of each interval.
#
#   bash bench/soak.sh [--help]
#
# Environment: SOAK_SECONDS (600: how long traffic runs), GATEHOUSE_BIN (use this binary;
# default: build with `c build --release`, or `flock /tmp/gatehouse-cargo.lock cargo build
# --release` where /usr/local/bin/c is missing, and use target/release/gatehouse), SOAK_RATE
# (300: requests per second the workers aim for, besides the HTTP/2 batches and the admin
# scrapes), SOAK_WORKERS (6: client threads), SOAK_FAULT_EVERY (SOAK_SECONDS/20, at least 7:
# seconds between faults), UPSTREAM_DOWN (4) and REDIS_DOWN (5: seconds a killed process stays
# down), SOAK_FAULTS (the faults taken in turn, default all six: "upstream_kill reload_sighup
# redis_kill cert_rotate reload_admin reload_invalid"; "" for none), SAMPLE_SECONDS (5),
# RSS_BOUND_MIB (5) and RSS_BOUND_PCT (10: RSS may grow by the larger of the two after
# warm-up), KEEP_TMP=1 (keep the temp dir: configs, logs, the raw request log). See
# bench/README.md.
# The report (markdown) goes to stdout, progress to stderr. Exit code: 0 PASS, 1 FAIL, 2 usage
# or setup error.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

SOAK_SECONDS="${SOAK_SECONDS:-600}"
SOAK_RATE="${SOAK_RATE:-300}"
SOAK_WORKERS="${SOAK_WORKERS:-6}"
UPSTREAM_DOWN="${UPSTREAM_DOWN:-4}"
REDIS_DOWN="${REDIS_DOWN:-5}"
SAMPLE_SECONDS="${SAMPLE_SECONDS:-5}"
RSS_BOUND_MIB="${RSS_BOUND_MIB:-5}"
RSS_BOUND_PCT="${RSS_BOUND_PCT:-10}"
KEEP_TMP="${KEEP_TMP:-0}"
SOAK_FAULTS="${SOAK_FAULTS-upstream_kill reload_sighup redis_kill cert_rotate reload_admin reload_invalid}"
CARGO_LOCK=/tmp/gatehouse-cargo.lock
START_TIMEOUT_S=10

usage() {
    sed -n '3,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($# > 0)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for v in SOAK_SECONDS SOAK_RATE SOAK_WORKERS UPSTREAM_DOWN REDIS_DOWN SAMPLE_SECONDS RSS_BOUND_MIB RSS_BOUND_PCT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: $v must be a positive integer" >&2; exit 2; }
done
((SOAK_SECONDS >= 30)) || { echo "soak.sh: SOAK_SECONDS must be at least 30" >&2; exit 2; }
if [[ -z "${SOAK_FAULT_EVERY:-}" ]]; then
    SOAK_FAULT_EVERY=$((SOAK_SECONDS / 20))
    ((SOAK_FAULT_EVERY >= 7)) || SOAK_FAULT_EVERY=7
fi
[[ "$SOAK_FAULT_EVERY" =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: SOAK_FAULT_EVERY must be a positive integer" >&2; exit 2; }

log() { printf '[soak] %s\n' "$*" >&2; }
die() { printf '[soak] ERROR: %s\n' "$*" >&2; exit 2; }
now() { date +%s.%N | cut -c1-14; } # Unix seconds with milliseconds

# ---------------------------------------------------------------- tools
missing=()
for t in python3 redis-server redis-cli openssl curl flock; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
((${#missing[@]} == 0)) ||
    die "missing: ${missing[*]} (Debian: apt-get install python3 redis-server redis-tools openssl curl util-linux)"
curl_ver="$(curl --version | awk 'NR == 1 {print $2}')"
[[ "$(printf '%s\n' 7.84.0 "$curl_ver" | sort -V | head -n 1)" == 7.84.0 ]] ||
    die "curl $curl_ver is too old (the HTTP/2 batches need 7.84 for -w %header{...})"
[[ "$(curl --version)" == *HTTP2* ]] || die "this curl has no HTTP/2 support"

# ---------------------------------------------------------------- gatehouse binary
if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
    [[ -x "$GATEHOUSE_BIN" && -f "$GATEHOUSE_BIN" ]] || die "GATEHOUSE_BIN=$GATEHOUSE_BIN is not an executable file"
    GH_SRC="$GATEHOUSE_BIN"
    BUILD_CMD="(GATEHOUSE_BIN given, no build)"
else
    if [[ -x /usr/local/bin/c ]]; then
        build=(/usr/local/bin/c build --release)
    else
        build=(flock "$CARGO_LOCK" cargo build --release)
    fi
    BUILD_CMD="${build[*]}"
    log "building gatehouse: $BUILD_CMD (waits for the shared cargo lock)"
    (cd "$REPO_ROOT" && "${build[@]}") >&2 || die "the build failed"
    GH_SRC="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/gatehouse"
    [[ -x "$GH_SRC" ]] || die "no binary at $GH_SRC after the build"
fi

# what was built (or is being run): the commit, and uncommitted changes to the sources
COMMIT="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
DIRTY="$(git -C "$REPO_ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)"

# ---------------------------------------------------------------- workspace + cleanup
WORK="$(mktemp -d -t gatehouse-soak.XXXXXX)"
mkdir -p "$WORK/logs" "$WORK/conf" "$WORK/tls" "$WORK/redis"
# A copy of the binary: a rebuild of target/ during the run does not touch the running one.
GH="$WORK/gatehouse"
cp "$GH_SRC" "$GH"
PIDS=()
CLIENT_PID=""
GW_PID=""
REDIS_PID=""
declare -A UP_PID UP_PORT

kill9() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    # the client first (it stops the traffic), then the gateway, then what it talks to
    [[ -n "$CLIENT_PID" ]] && stop_pid "$CLIENT_PID"
    [[ -n "$GW_PID" ]] && stop_pid "$GW_PID"
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ "$KEEP_TMP" == 1 ]]; then
        log "kept temp dir: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM

CPU_BUSY_START="$(cpu_busy_pct)"
((CPU_BUSY_START <= 15)) || log "WARNING: CPUs are already ${CPU_BUSY_START}% busy before the soak starts (another build?)"

# ---------------------------------------------------------------- ports
INSTANCES=(users-1 users-2 users-3 orders-1 orders-2 geo-1 geo-2 files-1 files-2)
pick_ports() { # N free loopback ports, all bound at once so they differ; never 6379
    python3 - "$1" <<'PY'
import socket, sys
socks = []
while len(socks) < int(sys.argv[1]):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    if s.getsockname()[1] == 6379:
        continue  # never the default Redis port (the socket stays open, so it is not drawn again)
    socks.append(s)
print(*[s.getsockname()[1] for s in socks])
PY
}
read -r -a ports <<<"$(pick_ports $((4 + ${#INSTANCES[@]})))"
HTTP_PORT="${ports[0]}"
HTTPS_PORT="${ports[1]}"
ADMIN_PORT="${ports[2]}"
REDIS_PORT="${ports[3]}"
for i in "${!INSTANCES[@]}"; do UP_PORT[${INSTANCES[$i]}]="${ports[$((4 + i))]}"; done

# ---------------------------------------------------------------- secrets (throw-away)
rand_hex() { python3 -c "import secrets; print(secrets.token_hex($1))"; }
ADMIN_TOKEN="$(rand_hex 16)"
BASIC_USER=alice
BASIC_PASS="$(rand_hex 12)"
API_KEY="$(rand_hex 16)"
JWT_SECRET="$(rand_hex 24)"
BASIC_HASH="$(printf '%s\n' "$BASIC_PASS" | "$GH" hash-password)"
APIKEY_HASH="$(printf '%s' "$API_KEY" | "$GH" hash-password --api-key)"
# shellcheck disable=SC2016  # a literal $
[[ "$BASIC_HASH" == '$argon2id$'* && "$APIKEY_HASH" == sha256:* ]] || die "gatehouse hash-password gave '$BASIC_HASH' / '$APIKEY_HASH'"

# ---------------------------------------------------------------- certificates
# A CA, and leaf certificates it signs, generation N with O=soak-gen-N in the subject (the
# client and the rotation check read it from the served certificate).
CA="$WORK/tls/ca.pem"
CERT="$WORK/tls/server.pem"
KEY="$WORK/tls/server.key"
CERT_GEN=0
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 \
    -keyout "$WORK/tls/ca.key" -out "$CA" -subj /CN=soak-ca \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >"$WORK/logs/openssl.log" 2>&1 || die "openssl: could not make the CA: $(tail -n 3 "$WORK/logs/openssl.log")"
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$WORK/tls/leaf.ext"
# new_cert : makes generation CERT_GEN+1 and writes it over $CERT and $KEY (each file replaced
# by a rename, the key first)
new_cert() {
    local g=$((CERT_GEN + 1)) d="$WORK/tls/gen$((CERT_GEN + 1))"
    mkdir -p "$d"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/key.pem" \
        -out "$d/req.csr" -subj "/O=soak-gen-$g/CN=localhost" >>"$WORK/logs/openssl.log" 2>&1 &&
        openssl x509 -req -in "$d/req.csr" -CA "$CA" -CAkey "$WORK/tls/ca.key" -set_serial "$((1000 + g))" \
            -days 2 -extfile "$WORK/tls/leaf.ext" -out "$d/cert.pem" >>"$WORK/logs/openssl.log" 2>&1 ||
        return 1
    cp "$d/key.pem" "$KEY.new" && mv -f "$KEY.new" "$KEY"
    cp "$d/cert.pem" "$CERT.new" && mv -f "$CERT.new" "$CERT"
    CERT_GEN=$g
}
new_cert || die "openssl: could not make the first certificate: $(tail -n 3 "$WORK/logs/openssl.log")"
# served_gen : the generation of the certificate a new TLS connection gets now (-1: none)
served_gen() {
    local subj
    subj="$(timeout 5 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -subject 2>/dev/null)" || true
    [[ "$subj" =~ soak-gen-([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo -1
}

# ---------------------------------------------------------------- redis-server
redis_cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
start_redis() {
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$WORK/redis" --daemonize no --logfile "" >>"$WORK/logs/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    local i
    for ((i = 0; i < START_TIMEOUT_S * 10; i++)); do
        [[ "$(redis_cli PING 2>/dev/null)" == PONG ]] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
start_redis || die "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT: $(tail -n 5 "$WORK/logs/redis.log")"
log "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

# ---------------------------------------------------------------- upstream instances
start_instance() { # NAME : starts it and waits (bounded) until /healthz answers
    local n="$1" i
    python3 "$SCRIPT_DIR/soak_backend.py" --port "${UP_PORT[$n]}" --service "${n%-*}" --instance "$n" \
        >>"$WORK/logs/$n.log" 2>&1 &
    UP_PID[$n]=$!
    PIDS+=("${UP_PID[$n]}")
    for ((i = 0; i < START_TIMEOUT_S * 10; i++)); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:${UP_PORT[$n]}/healthz" && return 0
        kill -0 "${UP_PID[$n]}" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
for n in "${INSTANCES[@]}"; do
    start_instance "$n" || die "upstream $n did not start: $(tail -n 5 "$WORK/logs/$n.log")"
done
log "upstreams: $(for n in "${INSTANCES[@]}"; do printf '%s=%s ' "$n" "${UP_PORT[$n]}"; done)"

# ---------------------------------------------------------------- the gateway's config
CONF="$WORK/conf/gatehouse.yaml" # alone in its directory: the gateway watches the directory
targets() { # SERVICE [WEIGHT_OF_LAST] : the YAML list of its instances' URLs
    local s="$1" w="${2:-1}" out="" n
    for n in "${INSTANCES[@]}"; do
        [[ "${n%-*}" == "$s" ]] || continue
        out+="${out:+, }\"http://127.0.0.1:${UP_PORT[$n]}\""
    done
    if [[ "$w" != 1 ]]; then out="${out%, *}, { url: ${out##*, }, weight: $w }"; fi
    printf '[%s]' "$out"
}
# config_text VARIANT [BROKEN] : variant A or B (they differ in the users balancer and weights,
# the greedy rate limit, the cache TTL and the x-soak-variant response header every answer
# carries, which the client checks after each reload); BROKEN = unknown_upstream or
# unknown_key makes it invalid
config_text() {
    local v="$1" broken="${2:-}"
    local balance=round_robin w=1 greedy=20/s ttl=2s extra="" rl_key=rate_limit
    if [[ "$v" == B ]]; then balance=least_request; w=3; greedy=25/s; ttl=3s; fi
    case "$broken" in
        unknown_upstream) extra=$'  - name: broken\n    match: { path_prefix: /broken }\n    upstream: no-such-upstream' ;;
        unknown_key) rl_key=ratelimit ;;
        "") ;;
        *) die "config_text: unknown BROKEN kind $broken" ;;
    esac
    cat <<EOF
# bench/soak.sh, variant $v${broken:+ (invalid: $broken)}
listen:
  - "127.0.0.1:$HTTP_PORT"
  - addr: "127.0.0.1:$HTTPS_PORT"
    tls:
      certificates:
        - { cert: "$CERT", key: "$KEY" }
admin: { addr: "127.0.0.1:$ADMIN_PORT", token: "$ADMIN_TOKEN" }
store: { redis: { url: "redis://127.0.0.1:$REDIS_PORT/0", timeout: 50ms } }
access_log: { format: json, path: "$WORK/logs/access.log" }
server:
  max_body_size: 1MiB
consumers:
  - id: $BASIC_USER
    groups: [soak]
    basic_auth: { username: $BASIC_USER, password_hash: "$BASIC_HASH" }
    api_keys: [{ hash: "$APIKEY_HASH" }]
global:
  headers:
    response: { set: { x-soak-variant: "$v" } }
upstreams:
  users:
    targets: $(targets users "$w")
    balance: $balance
    health:
      active: { path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }
    retries: { attempts: 2, "on": [connect_failure, reset, 502, 503, 504] }
    timeouts: { connect: 1s, response: 10s }
  orders:
    targets: $(targets orders)
    balance: ewma
    health:
      active: { path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }
    timeouts: { connect: 1s, response: 10s }
  geo:
    targets: $(targets geo)
    balance: random
    health:
      active: { path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }
    timeouts: { connect: 1s, response: 10s }
  files:
    targets: $(targets files)
    health:
      active: { path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }
    timeouts: { connect: 1s, response: 10s }
routes:
  - name: proxy
    match: { path_prefix: /api/users }
    upstream: users
    strip_prefix: true
  - name: basic
    match: { path_prefix: /basic }
    upstream: users
    auth: { methods: [basic] }
  - name: apikey
    match: { path_prefix: /key }
    upstream: users
    auth: { methods: [api_key] }
  - name: jwt
    match: { path_prefix: /jwt }
    upstream: users
    auth: { methods: [jwt], jwt: { secret: "$JWT_SECRET", algorithms: [HS256] } }
  - name: limited
    match: { path_prefix: /limited }
    upstream: orders
    $rl_key: { key: "header:x-soak-tenant", limit: $greedy, burst: 5 }
  - name: strict
    match: { path_prefix: /strict }
    upstream: orders
    rate_limit: { key: "header:x-soak-tenant", limit: 100/s, burst: 20, fail_closed: true }
  - name: cached
    match: { path: "/cached/{key}", methods: [GET, HEAD] }
    upstream: geo
    cache: { ttl: $ttl }
  - name: dashboard
    match: { path: "/dashboard/{id}", methods: [GET] }
    timeout: 5s
    aggregate:
      user: { upstream: users, path: "/users/{id}" }
      orders: { upstream: orders, path: "/orders?user={id}", required: false, timeout: 2s }
      address: { upstream: geo, path: "/addresses/{user.address_id}", select: [id, street, city], cache: { ttl: 5s } }
  - name: stream
    match: { path: "/stream/{kib}", methods: [GET] }
    upstream: files
$extra
EOF
}
# write_config VARIANT [BROKEN] : replaces $CONF by a rename (as editors and ConfigMaps do)
write_config() {
    config_text "$@" >"$WORK/conf.tmp"
    mv -f "$WORK/conf.tmp" "$CONF"
}
for b in "" unknown_upstream unknown_key; do
    config_text A $b >"$WORK/check-${b:-valid}.yaml"
    if [[ -z "$b" ]]; then
        "$GH" check --config "$WORK/check-valid.yaml" >"$WORK/logs/check.log" 2>&1 ||
            die "gatehouse check refused the soak config: $(cat "$WORK/logs/check.log")"
    elif "$GH" check --config "$WORK/check-$b.yaml" >>"$WORK/logs/check.log" 2>&1; then
        die "gatehouse check accepted the invalid config ($b)"
    fi
done
VARIANT=A
write_config "$VARIANT"

# ---------------------------------------------------------------- the gateway
ADMIN="http://127.0.0.1:$ADMIN_PORT"
# admin METHOD PATH [CURL_ARGS...] : the body to $WORK/admin.out, the status to ADMIN_CODE
admin() {
    local m="$1" path="$2"
    shift 2
    ADMIN_CODE="$(curl -s -o "$WORK/admin.out" -w '%{http_code}' --max-time 10 -X "$m" \
        -H "Authorization: Bearer $ADMIN_TOKEN" "$@" "$ADMIN$path" 2>/dev/null)" || ADMIN_CODE=000
}
# status_read : GET /status -> ST_HASH, ST_OUTCOME and ST_TRIGGER (outcome and source of the
# last reload), ST_UP (the shared store answers)
status_read() {
    local line
    admin GET /status
    line="$(python3 -c '
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception:
    print("- - - -"); sys.exit()
lr = j.get("last_reload") or {}
print(j.get("config_hash") or "-", lr.get("outcome") or "-", lr.get("source") or "-",
      "1" if (j.get("store") or {}).get("up") else "0")' "$WORK/admin.out" 2>/dev/null)" || line="- - - -"
    read -r ST_HASH ST_OUTCOME ST_TRIGGER ST_UP <<<"$line"
}

GATEHOUSE_LOG="${GATEHOUSE_LOG:-info}" "$GH" run --config "$CONF" >"$WORK/logs/gateway.log" 2>&1 &
GW_PID=$!
ready=0
for ((i = 0; i < START_TIMEOUT_S * 10; i++)); do
    kill -0 "$GW_PID" 2>/dev/null || break
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$HTTP_PORT/api/users/echo/ready")" == 200 &&
        "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --cacert "$CA" "https://127.0.0.1:$HTTPS_PORT/api/users/echo/ready")" == 200 ]]; then
        ready=1
        break
    fi
    sleep 0.1
done
((ready)) || die "the gateway did not answer within ${START_TIMEOUT_S}s: $(tail -n 20 "$WORK/logs/gateway.log")"
status_read
[[ "$ST_HASH" != - ]] || die "the admin API did not answer /status (HTTP $ADMIN_CODE)"
log "gateway pid $GW_PID: http 127.0.0.1:$HTTP_PORT, https $HTTPS_PORT, admin $ADMIN_PORT ($("$GH" --version 2>/dev/null || echo '?'))"

# ---------------------------------------------------------------- faults
FAULTS="$WORK/faults.tsv"
printf 't_start\tt_end\tkind\ttarget\tok\tdetail\tvariant\n' >"$FAULTS"
# fault_log T_START T_END KIND TARGET OK DETAIL [VARIANT]
fault_log() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6//$'\t'/ }" "${7:--}" >>"$FAULTS"
    log "fault $3 $4: $([[ "$5" == 1 ]] && echo ok || echo FAILED) - $6"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# wait_reload OLD_HASH : up to 5 s for /status to show a config hash other than OLD_HASH
wait_reload() {
    local i
    for ((i = 0; i < 50; i++)); do
        status_read
        [[ "$ST_HASH" != - && "$ST_HASH" != "$1" ]] && return 0
        sleep 0.1
    done
    return 1
}

KILL_I=0
KILL_ORDER=(users-1 orders-1 geo-1 files-1 users-2 orders-2 geo-2 files-2 users-3) # every service early
fault_upstream_kill() {
    local n="${KILL_ORDER[$((KILL_I % ${#KILL_ORDER[@]}))]}" t0 t1 ok=1 detail
    KILL_I=$((KILL_I + 1))
    t0="$(now)"
    kill9 "${UP_PID[$n]}"
    sleep "$UPSTREAM_DOWN"
    if start_instance "$n"; then
        detail="kill -9, restarted after ${UPSTREAM_DOWN}s"
    else
        ok=0
        detail="kill -9; the restart failed: $(tail -n 2 "$WORK/logs/$n.log" | tr '\n' ' ')"
    fi
    t1="$(now)"
    fault_log "$t0" "$t1" upstream_kill "$n" "$ok" "$detail"
}

fault_redis_kill() {
    local t0 t1 t2 ok=1 detail i up=0
    t0="$(now)"
    kill9 "$REDIS_PID"
    sleep "$REDIS_DOWN"
    if start_redis; then
        t1="$(now)"
        for ((i = 0; i < 100; i++)); do # the gateway marks the store up at its first answered call
            status_read
            [[ "$ST_UP" == 1 ]] && { up=1; break; }
            sleep 0.1
        done
        t2="$(now)"
        if ((up)); then
            detail="kill -9, restarted after ${REDIS_DOWN}s; /status store up $(elapsed "$t1" "$t2")s after the restart"
        else
            ok=0
            detail="kill -9, restarted after ${REDIS_DOWN}s; /status still shows the store down 10s later"
        fi
    else
        t1="$(now)"
        ok=0
        detail="kill -9; redis-server did not start again: $(tail -n 2 "$WORK/logs/redis.log" | tr '\n' ' ')"
    fi
    fault_log "$t0" "$t1" redis_kill "redis-server" "$ok" "$detail"
}

fault_cert_rotate() {
    local t0 t1 ok=0 detail g i
    t0="$(now)"
    if ! new_cert; then
        fault_log "$t0" "$(now)" cert_rotate "$CERT" 0 "openssl failed: $(tail -n 2 "$WORK/logs/openssl.log" | tr '\n' ' ')"
        return
    fi
    for ((i = 0; i < 40; i++)); do # up to 10 s (the files are checked every 2 s)
        g="$(served_gen)"
        [[ "$g" == "$CERT_GEN" ]] && { ok=1; break; }
        sleep 0.25
    done
    t1="$(now)"
    if ((ok)); then
        detail="new key + cert (gen $CERT_GEN) renamed over the files; served $(elapsed "$t0" "$t1")s later"
    else
        detail="new key + cert (gen $CERT_GEN) renamed over the files; 10s later new connections still get gen $g"
    fi
    fault_log "$t0" "$t1" cert_rotate "gen $CERT_GEN" "$ok" "$detail" "$CERT_GEN"
}

other_variant() { [[ "$VARIANT" == A ]] && echo B || echo A; }

fault_reload_sighup() {
    local t0 t1 old v ok=0 detail
    status_read
    old="$ST_HASH"
    v="$(other_variant)"
    t0="$(now)"
    write_config "$v"
    kill -HUP "$GW_PID"
    if wait_reload "$old"; then
        ok=1
        VARIANT="$v"
        detail="variant $v written, SIGHUP; applied (last reload: $ST_TRIGGER, $ST_OUTCOME)"
    else
        detail="variant $v written, SIGHUP; config hash unchanged 5s later (last reload: $ST_TRIGGER, $ST_OUTCOME)"
        VARIANT="$v" # the file holds it; the gateway should catch up
    fi
    t1="$(now)"
    fault_log "$t0" "$t1" reload_sighup "variant $v" "$ok" "$detail" "$VARIANT"
}

ADMIN_RELOAD_I=0
fault_reload_admin() {
    local t0 t1 old v ok=0 detail how
    status_read
    old="$ST_HASH"
    v="$(other_variant)"
    t0="$(now)"
    if ((ADMIN_RELOAD_I % 2 == 0)); then
        how="PUT /config"
        config_text "$v" >"$WORK/put.yaml"
        admin PUT /config -H "Content-Type: application/yaml" --data-binary "@$WORK/put.yaml"
        if [[ "$ADMIN_CODE" == 200 ]] && wait_reload "$old"; then ok=1; fi
        detail="variant $v by PUT /config: HTTP $ADMIN_CODE"
    else
        how="POST /reload"
        write_config "$v"
        admin POST /reload
        if [[ "$ADMIN_CODE" == 200 ]] && wait_reload "$old"; then ok=1; fi
        detail="variant $v written, POST /reload: HTTP $ADMIN_CODE $(head -c 80 "$WORK/admin.out" | tr '\n' ' ')"
    fi
    ADMIN_RELOAD_I=$((ADMIN_RELOAD_I + 1))
    VARIANT="$v"
    if ((ok)); then
        detail+="; applied"
    else
        detail+="; NOT applied (config hash unchanged 5 s later): $(head -c 160 "$WORK/admin.out" | tr '\n' ' ')"
    fi
    t1="$(now)"
    fault_log "$t0" "$t1" reload_admin "$how" "$ok" "$detail" "$VARIANT"
}

INVALID_I=0
fault_reload_invalid() {
    local t0 t1 old kind ok=1 problems=() reload_code validate_code put_code i
    kind="$([[ $((INVALID_I % 2)) == 0 ]] && echo unknown_upstream || echo unknown_key)"
    INVALID_I=$((INVALID_I + 1))
    status_read
    old="$ST_HASH"
    t0="$(now)"
    write_config "$VARIANT" "$kind"
    kill -HUP "$GW_PID"
    admin POST /reload
    reload_code="$ADMIN_CODE"
    cp "$WORK/admin.out" "$WORK/admin.out.reload" 2>/dev/null || : >"$WORK/admin.out.reload"
    config_text "$VARIANT" "$kind" >"$WORK/put.yaml"
    admin POST /config/validate -H "Content-Type: application/yaml" --data-binary "@$WORK/put.yaml"
    validate_code="$ADMIN_CODE"
    admin PUT /config -H "Content-Type: application/yaml" --data-binary "@$WORK/put.yaml"
    put_code="$ADMIN_CODE"
    sleep 1
    status_read
    [[ "$ST_HASH" == "$old" ]] || problems+=("config hash changed to $ST_HASH")
    [[ "$ST_OUTCOME" == failed ]] || problems+=("/status last reload outcome '$ST_OUTCOME', not failed")
    if [[ "$reload_code" == 200 ]] && grep -q '"reloaded": *true' "$WORK/admin.out.reload"; then
        problems+=("POST /reload said reloaded")
    fi
    [[ "$validate_code" == 400 ]] || problems+=("POST /config/validate answered $validate_code, not 400")
    [[ "$put_code" == 400 ]] || problems+=("PUT /config answered $put_code, not 400")
    kill -0 "$GW_PID" 2>/dev/null || problems+=("the gateway exited")
    # put the valid file back: the failure must give way to "unchanged"
    write_config "$VARIANT"
    for ((i = 0; i < 50; i++)); do
        sleep 0.1
        status_read
        [[ "$ST_OUTCOME" != failed ]] && break
    done
    [[ "$ST_OUTCOME" != failed ]] || problems+=("/status still shows the failure 5s after the valid file was put back")
    [[ "$ST_HASH" == "$old" ]] || problems+=("config hash $ST_HASH after putting the same file back")
    t1="$(now)"
    local detail="invalid file + SIGHUP + POST /reload ($reload_code), validate $validate_code, PUT $put_code; "
    if ((${#problems[@]} == 0)); then
        detail+="refused, kept serving variant $VARIANT; valid file put back: $ST_OUTCOME"
    else
        ok=0
        detail+="$(printf '%s; ' "${problems[@]}")"
    fi
    fault_log "$t0" "$t1" reload_invalid "$kind" "$ok" "$detail" "$VARIANT"
}

ALL_FAULTS=(upstream_kill reload_sighup redis_kill cert_rotate reload_admin reload_invalid)
read -r -a FAULT_KINDS <<<"${SOAK_FAULTS//,/ }"
for k in "${FAULT_KINDS[@]}"; do
    [[ " ${ALL_FAULTS[*]} " == *" $k "* ]] || die "SOAK_FAULTS: unknown fault '$k' (known: ${ALL_FAULTS[*]})"
done

# ---------------------------------------------------------------- traffic
cat >"$WORK/soak.json" <<EOF
{"dir": "$WORK", "duration": $SOAK_SECONDS, "rate": $SOAK_RATE, "workers": $SOAK_WORKERS,
 "http_port": $HTTP_PORT, "https_port": $HTTPS_PORT, "admin_port": $ADMIN_PORT,
 "admin_token": "$ADMIN_TOKEN", "ca": "$CA", "gw_pid": $GW_PID, "jwt_secret": "$JWT_SECRET",
 "api_key": "$API_KEY", "basic_user": "$BASIC_USER", "basic_pass": "$BASIC_PASS",
 "sample_seconds": $SAMPLE_SECONDS}
EOF
log "traffic for ${SOAK_SECONDS}s at ~${SOAK_RATE} req/s ($SOAK_WORKERS workers + HTTP/2 batches), a fault every ${SOAK_FAULT_EVERY}s"
nice -n 10 python3 "$SCRIPT_DIR/soak_client.py" run "$WORK/soak.json" >"$WORK/logs/client.log" 2>&1 &
CLIENT_PID=$!
PIDS+=("$CLIENT_PID")
for ((i = 0; i < 100; i++)); do
    [[ -s "$WORK/client_start.json" ]] && break
    kill -0 "$CLIENT_PID" 2>/dev/null || die "the client exited at once: $(tail -n 20 "$WORK/logs/client.log")"
    sleep 0.1
done
START="$(python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["start"]))' "$WORK/client_start.json")"
END=$((START + SOAK_SECONDS))
TAIL=15 # no fault starts in the last 15 s, so each one's recovery is inside the run
next=$((START + SOAK_FAULT_EVERY))
fi_=0
gw_gone=""
while ((${#FAULT_KINDS[@]} > 0 && next <= END - TAIL)); do
    while (($(date +%s) < next)); do
        sleep 0.5
        kill -0 "$GW_PID" 2>/dev/null || break 2
        kill -0 "$CLIENT_PID" 2>/dev/null || break 2
    done
    kind="${FAULT_KINDS[$((fi_ % ${#FAULT_KINDS[@]}))]}"
    log "+$(($(date +%s) - START))s: fault $((fi_ + 1)): $kind"
    "fault_$kind"
    fi_=$((fi_ + 1))
    next=$((next + SOAK_FAULT_EVERY))
done
kill -0 "$GW_PID" 2>/dev/null || gw_gone="the gateway exited during the run"
[[ -z "$gw_gone" ]] || log "ERROR: $gw_gone"
# the client stops by itself at START + SOAK_SECONDS; bounded wait
for ((i = 0; i < (END - $(date +%s) + 60) * 2; i++)); do
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    sleep 0.5
done
if kill -0 "$CLIENT_PID" 2>/dev/null; then
    log "the client did not stop by itself; stopping it"
    stop_pid "$CLIENT_PID"
else
    wait "$CLIENT_PID" 2>/dev/null || log "the client exited with an error: $(tail -n 5 "$WORK/logs/client.log")"
    forget_pid "$CLIENT_PID"
fi
CLIENT_PID=""

# ---------------------------------------------------------------- shutdown + report
gw_alive=true
gw_exit="graceful shutdown"
gw_cpu=null # utime + stime, seconds
if stat_line="$(cat "/proc/$GW_PID/stat" 2>/dev/null)"; then
    read -r -a f <<<"${stat_line##*) }" # fields from 3 (state) on: utime is field 14, stime 15
    gw_cpu="$(awk -v t="$((f[11] + f[12]))" -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" 'BEGIN { printf "%.2f", t / hz }')"
fi
if kill -0 "$GW_PID" 2>/dev/null; then
    t0="$(now)"
    kill -TERM "$GW_PID"
    st=0
    for ((i = 0; i < 400; i++)); do # shutdown_timeout is 30 s
        kill -0 "$GW_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$GW_PID" 2>/dev/null; then
        kill -KILL "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
        gw_exit="did not exit within 40 s of SIGTERM (killed)"
        gw_alive=false
    else
        wait "$GW_PID" 2>/dev/null || st=$?
        gw_exit="SIGTERM: exit status $st after $(elapsed "$t0" "$(now)") s"
        ((st == 0)) || gw_alive=false
    fi
else
    st=0
    wait "$GW_PID" 2>/dev/null || st=$?
    gw_alive=false
    gw_exit="exited during the run with status $st"
fi
GW_PID=""
log "gateway: $gw_exit"

# The gateway's WARN/ERROR lines (none is fine), without time stamps and numbers, most frequent
# first.
log_summary="$({ grep -E '\b(WARN|ERROR)\b' "$WORK/logs/gateway.log" 2>/dev/null || true; } |
    sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.Z-]+ +//; s/[0-9a-f]{12,}/<hex>/g; s/[0-9]+(\.[0-9]+)?/N/g' |
    sort | uniq -c | sort -rn |
    python3 -c 'import json, sys; print(json.dumps([l.strip()[:300] for l in sys.stdin][:12]))')"
python3 - "$WORK/meta.json" <<EOF
import json, sys
json.dump({"initial_variant": "A", "rss_bound_mib": $RSS_BOUND_MIB, "rss_bound_pct": $RSS_BOUND_PCT,
           "gateway_alive_at_end": $([[ "$gw_alive" == true ]] && echo True || echo False),
           "gateway_exit": "$gw_exit", "gateway_cpu_seconds": ${gw_cpu/null/None},
           "gateway_log_summary": $log_summary}, open(sys.argv[1], "w"))
EOF

echo "## Soak: $(date -u +%Y-%m-%d) — ${SOAK_SECONDS} s of mixed traffic with faults"
echo
echo "- commit: $COMMIT$( ((DIRTY > 0)) && echo " (+ $DIRTY uncommitted change(s) under src/, Cargo.*)"); binary: $GH_SRC ($("$GH" --version 2>/dev/null || echo '?')); build: $BUILD_CMD"
echo "- machine: $(nproc) CPUs ($(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo '?')), $(uname -sr), CPUs ${CPU_BUSY_START}% busy before the start; $(redis-server --version | awk '{print $1, $2, $3}'), Python $(python3 -c 'import platform; print(platform.python_version())'), curl $curl_ver"
echo "- command: \`SOAK_SECONDS=$SOAK_SECONDS SOAK_RATE=$SOAK_RATE SOAK_WORKERS=$SOAK_WORKERS SOAK_FAULT_EVERY=$SOAK_FAULT_EVERY SOAK_FAULTS=\"${FAULT_KINDS[*]}\" bash bench/soak.sh\`"
echo "- gateway at the end: $gw_exit"
echo
rc=0
python3 "$SCRIPT_DIR/soak_client.py" report "$WORK" || rc=$?
exit "$rc"
