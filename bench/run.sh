#!/usr/bin/env bash
# Gatehouse vs nginx vs HAProxy on loopback: plain HTTP/1.1 reverse-proxy throughput (default),
# and with --mode also HTTPS keep-alive, full TLS handshakes per second, HTTP/2 over TLS, and
# (auth) Gatehouse alone with basic auth and with JWT (RS256) against the same route unguarded,
# (ratelimit) Gatehouse alone with a rate limit that is never reached, in memory and in Redis,
# (cache) Gatehouse alone answering from its response cache, in memory and in Redis, against
# plain proxying, and (aggregate) Gatehouse alone fanning one request out to 3 upstream calls
# against a client making the 3 calls itself and against one call, with a fast backend and with
# one that delays each call by AGG_DELAY ms. Redis is a redis-server the script starts on a free
# loopback port. Issue 14 (performance): (body1k, body64k) keep-alive GETs of a 1 KiB / 64 KiB
# body, (newconn) a new client connection per request (Connection: close), (idle) memory per
# idle keep-alive client connection (IDLE_CONNS held open), all three proxies each; and (full)
# Gatehouse alone with JSON access log, metrics, JWT (HS256) and a rate limit against the bare
# route.
#
#   bash bench/run.sh [--mode http|https|handshake|h2|body1k|body64k|newconn|idle|auth|ratelimit|
#                             cache|aggregate|full|all|perf]
#                     [--proxies "nginx haproxy gatehouse"]
#                     [--duration 10s] [--connections 50] [--baseline PATH] [--rounds N]
#
# Environment: MODE (http; a list such as "https h2" runs several; all = http https handshake
# h2, without the others; perf = http body1k body64k newconn idle), DURATION (10s), CONNECTIONS
# (50), PROXIES ("nginx haproxy gatehouse"),
# GATEHOUSE_BIN (skip the cargo build and use this binary), WARMUP (2s),
# BASELINE_BIN (another gatehouse binary, e.g. of the previous commit: adds the proxy
# "gatehouse-base", run exactly like "gatehouse"), ROUNDS (1; N > 1 measures the whole list
# N times, interleaved, and reports medians), PROXY_CPU / LOAD_CPU (default: first /
# second CPU this process may run on), KEEP_TMP=1 (keep the temp dir with configs, logs
# and raw load-generator output), H2_STREAMS (10: h2load -m), HS_CLIENTS (2: parallel
# openssl s_time processes in the handshake mode), AGG_DELAY (20: mode aggregate, ms the
# delaying backend waits before each answer; 0 = only the fast backend), AGG_DELAY_CONNECTIONS
# (10: wrk connections against the delaying backend), IDLE_CONNS (2000: mode idle, client
# connections held open). See bench/README.md.
# The tables go to stdout, progress to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-50}"
PROXIES="${PROXIES:-nginx haproxy gatehouse}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-1}"
BASELINE_BIN="${BASELINE_BIN:-}"
WRK_THREADS="${WRK_THREADS:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
MODE="${MODE:-http}"
H2_STREAMS="${H2_STREAMS:-10}"
HS_CLIENTS="${HS_CLIENTS:-2}"
AGG_DELAY="${AGG_DELAY:-20}"
AGG_DELAY_CONNECTIONS="${AGG_DELAY_CONNECTIONS:-10}"
IDLE_CONNS="${IDLE_CONNS:-2000}"
CARGO_LOCK="/tmp/cargo.lock"
CARGO_LOCK_WAIT="${CARGO_LOCK_WAIT:-1800}" # seconds to wait for the shared cargo lock
START_TIMEOUT_S=10

usage() {
    sed -n '2,34p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($# > 0)); do
    case "$1" in
        --mode) MODE="${2:?--mode needs a value}"; shift 2 ;;
        --mode=*) MODE="${1#*=}"; shift ;;
        --proxies) PROXIES="${2:?--proxies needs a value}"; shift 2 ;;
        --proxies=*) PROXIES="${1#*=}"; shift ;;
        --duration) DURATION="${2:?--duration needs a value}"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --connections) CONNECTIONS="${2:?--connections needs a value}"; shift 2 ;;
        --connections=*) CONNECTIONS="${1#*=}"; shift ;;
        --baseline) BASELINE_BIN="${2:?--baseline needs a value}"; shift 2 ;;
        --baseline=*) BASELINE_BIN="${1#*=}"; shift ;;
        --rounds) ROUNDS="${2:?--rounds needs a value}"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# Accept "nginx,haproxy" as well as "nginx haproxy".
read -r -a PROXY_LIST <<<"${PROXIES//,/ }"
((${#PROXY_LIST[@]} > 0)) || { echo "run.sh: PROXIES is empty" >&2; exit 2; }
for p in "${PROXY_LIST[@]}"; do
    case "$p" in
        nginx | haproxy | gatehouse) ;;
        gatehouse-base)
            [[ -n "$BASELINE_BIN" ]] ||
                { echo "run.sh: proxy 'gatehouse-base' needs BASELINE_BIN (or --baseline PATH)" >&2; exit 2; }
            ;;
        *)
            echo "run.sh: unknown proxy '$p' (known: nginx haproxy gatehouse, and gatehouse-base with BASELINE_BIN)" >&2
            exit 2
            ;;
    esac
done
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: CONNECTIONS must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: ROUNDS must be a positive integer" >&2; exit 2; }
[[ "$H2_STREAMS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: H2_STREAMS must be a positive integer" >&2; exit 2; }
[[ "$HS_CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: HS_CLIENTS must be a positive integer" >&2; exit 2; }
[[ "$AGG_DELAY_CONNECTIONS" =~ ^[1-9][0-9]*$ ]] ||
    { echo "run.sh: AGG_DELAY_CONNECTIONS must be a positive integer" >&2; exit 2; }
if ! [[ "$AGG_DELAY" =~ ^[0-9]+$ ]] || ((AGG_DELAY > 500)); then
    echo "run.sh: AGG_DELAY must be a whole number of milliseconds, 0-500" >&2
    exit 2
fi
if ! [[ "$IDLE_CONNS" =~ ^[1-9][0-9]*$ ]] || ((IDLE_CONNS > 200000)); then
    echo "run.sh: IDLE_CONNS must be a positive integer, at most 200000" >&2
    exit 2
fi

# Modes, in the order given ("all" = every mode), each once.
read -r -a mode_args <<<"${MODE//,/ }"
((${#mode_args[@]} > 0)) || { echo "run.sh: MODE is empty" >&2; exit 2; }
MODE_LIST=()
for m in "${mode_args[@]}"; do
    case "$m" in
        all) expanded=(http https handshake h2) ;;
        perf) expanded=(http body1k body64k newconn idle) ;;
        http | https | handshake | h2 | body1k | body64k | newconn | idle | auth | ratelimit | cache | aggregate | full)
            expanded=("$m")
            ;;
        *)
            echo "run.sh: unknown mode '$m' (known: http https handshake h2 body1k body64k newconn idle auth ratelimit cache aggregate full all perf)" >&2
            exit 2
            ;;
    esac
    for e in "${expanded[@]}"; do
        dup=0
        for x in "${MODE_LIST[@]}"; do [[ "$x" == "$e" ]] && dup=1; done
        ((dup)) || MODE_LIST+=("$e")
    done
done
wants_mode() {
    local x
    for x in "${MODE_LIST[@]}"; do [[ "$x" == "$1" ]] && return 0; done
    return 1
}
HAS_TLS=0 # any mode that needs the certificate
if wants_mode https || wants_mode handshake || wants_mode h2; then HAS_TLS=1; fi
# is_tls_mode MODE : a mode served over TLS (one TLS config per proxy, in $WORK/tls/NAME)
is_tls_mode() { [[ "$1" == https || "$1" == handshake || "$1" == h2 ]]; }
# is_plain_mode MODE : the plain HTTP/1.1 modes besides http that compare the proxies with their
# CPU accounted (issue 14): a 1 KiB or 64 KiB body, a new client connection per request. They
# use the proxies' configs of mode http (in $WORK/NAME); only the client (and, for the bodies,
# the backend's answer) differs.
is_plain_mode() { [[ "$1" == body1k || "$1" == body64k || "$1" == newconn ]]; }
# body_size MODE : bytes of the backend's answer in modes body1k and body64k (the path is /1k or
# /64k)
body_size() {
    case "$1" in
        body1k) echo 1024 ;;
        body64k) echo 65536 ;;
    esac
}
body_path() { echo "/${1#body}"; }

wants() {
    local x
    for x in "${PROXY_LIST[@]}"; do [[ "$x" == "$1" ]] && return 0; done
    return 1
}

# Modes auth, ratelimit, cache and aggregate measure Gatehouse against itself (variants of one
# route: none, basic, jwt; none, limited, limited_by_header, redis; none, memory, redis; or,
# for aggregate, one config and three clients: single, sequential, fanout, each also against a
# delaying backend), not a proxy list. When they are the only modes, PROXIES and BASELINE_BIN
# do not apply: only gatehouse is built (or taken from GATEHOUSE_BIN) and started. Next to
# other modes they need gatehouse in PROXIES.
AUTH_VARIANTS=(none basic jwt)
RL_VARIANTS=(none limited limited_by_header redis)
CACHE_VARIANTS=(none memory redis)
AGG_VARIANTS=(single sequential fanout)
if ((AGG_DELAY > 0)); then AGG_VARIANTS+=(single_delayed sequential_delayed fanout_delayed); fi
# log, jwt and limit turn on one of full's features each, to split its cost.
FULL_VARIANTS=(none log jwt limit full)
is_variant_mode() { [[ "$1" == auth || "$1" == ratelimit || "$1" == cache || "$1" == aggregate || "$1" == full ]]; }
GH_ONLY=1 # every mode is a gatehouse-only one
for m in "${MODE_LIST[@]}"; do is_variant_mode "$m" || GH_ONLY=0; done
if ((GH_ONLY)); then
    PROXY_LIST=(gatehouse)
    BASELINE_BIN=""
else
    for m in auth ratelimit cache aggregate full; do
        if wants_mode "$m" && ! wants gatehouse; then
            echo "run.sh: mode '$m' measures gatehouse: PROXIES must include gatehouse when other modes run too" >&2
            exit 2
        fi
    done
fi

# With BASELINE_BIN, "gatehouse-base" joins the list right after "gatehouse" (at the end
# if "gatehouse" is not listed), unless the user placed it explicitly.
if [[ -n "$BASELINE_BIN" ]] && ! wants gatehouse-base; then
    if wants gatehouse; then
        with_base=()
        base_added=0
        for p in "${PROXY_LIST[@]}"; do
            with_base+=("$p")
            if [[ "$p" == gatehouse && "$base_added" == 0 ]]; then
                with_base+=(gatehouse-base)
                base_added=1
            fi
        done
        PROXY_LIST=("${with_base[@]}")
    else
        PROXY_LIST+=(gatehouse-base)
    fi
fi

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# Shell-quoted rendering of a command, for the "commands used" section. Later rounds run
# the same commands again, so only round 1 (and everything before it) is recorded.
CMDS=()
ROUND=1
record() {
    local s
    ((ROUND == 1)) || return 0
    s="$(printf '%q ' "$@")"
    CMDS+=("${s% }")
}
# record_text TEXT : a comment line in the "commands used" section (round 1 only)
record_text() {
    ((ROUND == 1)) || return 0
    CMDS+=("# $1")
}

# ---------------------------------------------------------------- dependencies
ensure_tools() {
    local missing=() pkgs=() t
    # command -> Debian package
    local -A pkg_of=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl
        [taskset]=util-linux [python3]=python3 [flock]=util-linux [openssl]=openssl
        [h2load]=nghttp2-client [ps]=procps [redis-server]=redis-server [redis-cli]=redis-tools
        [ss]=iproute2)
    local need=(nginx curl taskset python3) m wrk=0 ps=0
    for m in "${MODE_LIST[@]}"; do
        case "$m" in
            http | https | body1k | body64k | newconn | auth | ratelimit | cache | aggregate | full) wrk=1 ;;
        esac
        # CPU accounting (cpu_ticks) and the memory of mode idle walk the process tree with ps
        if [[ "$m" != http ]]; then ps=1; fi
    done
    ((wrk)) && need+=(wrk)
    ((ps)) && need+=(ps)
    if ((HAS_TLS)) || wants_mode auth || wants_mode full; then need+=(openssl); fi
    wants_mode idle && need+=(ss)
    if wants_mode ratelimit || wants_mode cache; then need+=(redis-server redis-cli); fi
    wants_mode h2 && need+=(h2load)
    wants haproxy && need+=(haproxy)
    wants gatehouse && [[ -z "${GATEHOUSE_BIN:-}" ]] && need+=(flock)
    for t in "${need[@]}"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    ((${#missing[@]} == 0)) && return 0
    for t in "${missing[@]}"; do pkgs+=("${pkg_of[$t]}"); done
    log "missing: ${missing[*]} -> apt-get install ${pkgs[*]}"
    [[ "$(id -u)" == 0 ]] || die "need root to apt-get install ${pkgs[*]} (or install them yourself)"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${pkgs[*]} yourself"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
    for t in "${missing[@]}"; do
        command -v "$t" >/dev/null 2>&1 || die "$t still missing after apt-get install"
    done
}
ensure_tools

# Debian puts nginx/haproxy in /usr/sbin, which may not be on a non-root PATH.
NGINX="$(command -v nginx)"
HAPROXY=""
if wants haproxy; then HAPROXY="$(command -v haproxy)"; fi

# ---------------------------------------------------------------- CPUs
read -r -a ALLOWED_CPUS <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
if ((${#ALLOWED_CPUS[@]} >= 2)); then
    PROXY_CPU="${PROXY_CPU:-${ALLOWED_CPUS[0]}}"
    LOAD_CPU="${LOAD_CPU:-${ALLOWED_CPUS[1]}}"
else
    PROXY_CPU="${PROXY_CPU:-${ALLOWED_CPUS[0]}}"
    LOAD_CPU="${LOAD_CPU:-${ALLOWED_CPUS[0]}}"
    log "WARNING: only one CPU available; proxy, backend and wrk all share CPU $PROXY_CPU"
fi

# ---------------------------------------------------------------- gatehouse build
GATEHOUSE_STATUS="" # empty = usable; otherwise the reason it is skipped
GATEHOUSE=""
if wants gatehouse; then
    if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
        if [[ -x "$GATEHOUSE_BIN" ]]; then
            GATEHOUSE="$(cd "$(dirname "$GATEHOUSE_BIN")" && pwd)/$(basename "$GATEHOUSE_BIN")"
        else
            GATEHOUSE_STATUS="GATEHOUSE_BIN=$GATEHOUSE_BIN is not an executable file, skipped"
        fi
    elif ! command -v cargo >/dev/null 2>&1; then
        GATEHOUSE_STATUS="build failed, skipped (cargo not found)"
    else
        log "building gatehouse: flock $CARGO_LOCK cargo build --release (waits for the shared cargo lock)"
        record flock "$CARGO_LOCK" cargo build --release
        build_log="$(mktemp)"
        if (cd "$REPO_ROOT" && flock -w "$CARGO_LOCK_WAIT" "$CARGO_LOCK" cargo build --release) >"$build_log" 2>&1; then
            GATEHOUSE="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/gatehouse"
            [[ -x "$GATEHOUSE" ]] || GATEHOUSE_STATUS="build failed, skipped (no binary at $GATEHOUSE)"
        else
            GATEHOUSE_STATUS="build failed, skipped"
            log "cargo build --release failed; last lines:"
            tail -n 15 "$build_log" | sed 's/^/    /' >&2
        fi
        rm -f "$build_log"
    fi
    if [[ -n "$GATEHOUSE_STATUS" ]]; then log "gatehouse: $GATEHOUSE_STATUS"; fi
fi

# ---------------------------------------------------------------- gatehouse baseline binary
BASELINE_STATUS="" # empty = usable; otherwise the reason it is skipped
BASELINE=""
if wants gatehouse-base; then
    if [[ -x "$BASELINE_BIN" && -f "$BASELINE_BIN" ]]; then
        BASELINE="$(cd "$(dirname "$BASELINE_BIN")" && pwd)/$(basename "$BASELINE_BIN")"
    else
        BASELINE_STATUS="BASELINE_BIN=$BASELINE_BIN is not an executable file, skipped"
        log "gatehouse-base: $BASELINE_STATUS"
    fi
fi

# skip_reason NAME : why NAME cannot be run at all (empty if it can)
skip_reason() {
    case "$1" in
        gatehouse) printf '%s' "$GATEHOUSE_STATUS" ;;
        gatehouse-base) printf '%s' "$BASELINE_STATUS" ;;
    esac
}

# ---------------------------------------------------------------- workspace + cleanup
WORK="$(mktemp -d -t gatehouse-bench.XXXXXX)"
# nginx workers drop to "nobody" when started as root; they must be able to traverse the dir.
chmod 755 "$WORK"
PIDS=()

# shellcheck disable=SC2317  # invoked via trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ "$KEEP_TMP" == 1 ]]; then
        log "kept temp dir: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# How busy are the CPUs right now (before we start anything)? Someone else's cargo build
# on a 2-core box would skew the numbers badly, so warn about it.
CPU_BUSY_START="$(cpu_busy_pct)"
if ((CPU_BUSY_START > 15)); then
    log "WARNING: CPUs are already ${CPU_BUSY_START}% busy before the benchmark starts (another cargo build?); numbers will be noisy"
fi

# Lots of connections need file descriptors; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Mode idle: the client (one process) and each proxy hold IDLE_CONNS sockets at once, HAProxy
# asks for about twice its maxconn (IDLE_CONNS + 1000).
if wants_mode idle && wants haproxy; then IDLE_FDS=$((2 * (IDLE_CONNS + 1000) + 100)); else IDLE_FDS=$((IDLE_CONNS + 1100)); fi
if wants_mode idle && [[ "$(ulimit -n)" != unlimited ]] && (($(ulimit -n) < IDLE_FDS)); then
    echo "run.sh: IDLE_CONNS=$IDLE_CONNS needs about $IDLE_FDS file descriptors, the limit is $(ulimit -n) (hard: $(ulimit -Hn)); lower IDLE_CONNS or raise the limit" >&2
    exit 2
fi

# ---------------------------------------------------------------- ports
# Bind port 0 on 127.0.0.1 for each slot (all sockets open at once, so the ports differ),
# print the ports and release them. The window until our servers bind them is tiny.
read -r BACKEND_PORT NGINX_PORT HAPROXY_PORT GATEHOUSE_PORT BASELINE_PORT ADMIN_PORT REDIS_PORT DELAY_PORT <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(8):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
)"

# ---------------------------------------------------------------- helpers
# nginx >= 1.19.5 has -e (error log path used before the config is read).
NGINX_E=()
if "$NGINX" -h 2>&1 | grep -qE '^ *-e '; then NGINX_E=(-e); fi

# TLS modes: one self-signed ECDSA P-256 certificate for every proxy, so that all of them do
# the same crypto. HAProxy wants certificate and key in one file.
CERT=""
KEY=""
CERT_KEY=""
TLS_UPSTREAM_KEEPALIVE=64
NGINX_HTTP2_ON=0 # nginx >= 1.25.1: "http2 on;" instead of "listen ... http2"
if ((HAS_TLS)); then
    mkdir -p "$WORK/tls"
    CERT="$WORK/tls/cert.pem"
    KEY="$WORK/tls/key.pem"
    CERT_KEY="$WORK/tls/cert+key.pem"
    cert_cmd=(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes
        -keyout "$KEY" -out "$CERT" -days 7 -subj /CN=localhost
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1")
    record "${cert_cmd[@]}"
    "${cert_cmd[@]}" >"$WORK/tls/openssl-req.log" 2>&1 ||
        die "could not make the test certificate: $(tail -n 3 "$WORK/tls/openssl-req.log")"
    cat "$CERT" "$KEY" >"$CERT_KEY"
    # h2: CONNECTIONS x H2_STREAMS requests in flight, each needing an upstream connection;
    # nginx closes the ones beyond its idle "keepalive" cache after each response.
    if ((CONNECTIONS * H2_STREAMS > TLS_UPSTREAM_KEEPALIVE)); then
        TLS_UPSTREAM_KEEPALIVE=$((CONNECTIONS * H2_STREAMS))
    fi
    nginx_ver="$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9][0-9.]*\).*|\1|p')"
    if [[ -n "$nginx_ver" && "$(printf '%s\n' 1.25.1 "$nginx_ver" | sort -V | head -n 1)" == 1.25.1 ]]; then
        NGINX_HTTP2_ON=1
    fi
fi
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# Mode auth: a consumer "bench" with a fixed password and its argon2id hash (from the binary
# under test: `gatehouse hash-password`), and an RSA 2048 key pair for RS256. The token itself
# is minted afresh for each jwt measurement (exp = now + 1 h), so long runs never send an
# expired one. These are throw-away benchmark credentials.
AUTH_STATUS="" # empty = usable; otherwise why the auth variants are not measured
AUTH_USER=bench
AUTH_PASSWORD=bench-password
AUTH_HASH=""
AUTH_BASIC="" # base64 of user:password
AUTH_PARAMS="" # the hash's argon2 parameters, for the report
JWT_LEN="" # length of the token, for the report
JWT_KEY=""
JWT_PUB=""
JWT_HEADER='{"alg":"RS256","typ":"JWT"}'
AUTH_HDR=() # the credential header wrk and the checks send (none: nothing)
AUTH_BAD=() # a wrong credential of the same kind, which must be refused
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# jwt_payload EXP [SUB] : the token's claims
jwt_payload() { printf '{"sub":"%s","exp":%d}' "${2:-bench}" "$1"; }
# mint_jwt : an RS256 token for sub "bench" that expires in an hour, signed with JWT_KEY
mint_jwt() {
    local h p sig
    h="$(printf '%s' "$JWT_HEADER" | b64url)"
    p="$(jwt_payload "$((EPOCHSECONDS + 3600))" | b64url)"
    sig="$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$JWT_KEY" -binary | b64url)" || return 1
    [[ -n "$sig" ]] || return 1
    printf '%s.%s.%s' "$h" "$p" "$sig"
}
if wants_mode auth && [[ -n "$GATEHOUSE" ]]; then
    mkdir -p "$WORK/auth"
    JWT_KEY="$WORK/auth/jwt-key.pem"
    JWT_PUB="$WORK/auth/jwt-pub.pem"
    key_cmd=(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$JWT_KEY")
    pub_cmd=(openssl rsa -in "$JWT_KEY" -pubout -out "$JWT_PUB")
    record "${key_cmd[@]}"
    record "${pub_cmd[@]}"
    { "${key_cmd[@]}" && "${pub_cmd[@]}"; } >"$WORK/auth/openssl.log" 2>&1 ||
        die "could not make the RSA key pair for JWT: $(tail -n 3 "$WORK/auth/openssl.log")"
    record_text "JWT: base64url('$JWT_HEADER') . base64url('$(jwt_payload 0 | sed 's/0}$/NOW+3600}/')') . base64url(openssl dgst -sha256 -sign $JWT_KEY -binary of the first two), no padding; minted afresh for each jwt measurement"
    record_text "printf '%s\\n' $AUTH_PASSWORD | $GATEHOUSE hash-password"
    AUTH_HASH="$(printf '%s\n' "$AUTH_PASSWORD" | timeout 30 "$GATEHOUSE" hash-password 2>"$WORK/auth/hash-password.log" || true)"
    if [[ "$AUTH_HASH" != "\$argon2id\$"* ]]; then
        AUTH_STATUS="gatehouse hash-password gave no argon2id hash ($(tail -n 1 "$WORK/auth/hash-password.log")), not measured"
        log "auth: $AUTH_STATUS"
    fi
    AUTH_BASIC="$(printf '%s:%s' "$AUTH_USER" "$AUTH_PASSWORD" | openssl base64 -A)"
    AUTH_PARAMS="$(cut -d'$' -f4 <<<"$AUTH_HASH")" # m=…,t=…,p=…
fi

# Mode full: JWT with HS256 against a random secret of 64 characters (a throw-away benchmark
# secret, made once per run; Gatehouse uses its bytes as the HMAC key), and the token minted
# afresh for each full measurement like mode auth's (exp = now + 1 h). The rate limit is mode
# ratelimit's (100 M/s, never reached); the access log is JSON, written to a file in the temp dir.
FULL_SECRET=""
FULL_JWT_HEADER='{"alg":"HS256","typ":"JWT"}'
FULL_HDR=() # the credential header wrk and the checks send (none: nothing)
FULL_BAD=() # the same signature over other claims, which must be refused
FULL_JWT_LEN=""
FULL_SECRET_ENV=GATEHOUSE_BENCH_JWT_SECRET # the config names it; the secret never appears in a file
declare -A FULL_CHECK # per variant: what the checks saw (round 1)
FULL_AFTER=""         # the counts after round 1's measured run of full
FULL_LOG_SAMPLE=""    # a line of round 1's access log
declare -A NEWCONN_CHECK # mode newconn, per proxy: the Connection header of the check's answer (round 1)
# mint_hs256 : an HS256 token for sub "bench" that expires in an hour, signed with FULL_SECRET
mint_hs256() {
    local h p sig
    h="$(printf '%s' "$FULL_JWT_HEADER" | b64url)"
    p="$(jwt_payload "$((EPOCHSECONDS + 3600))" | b64url)"
    sig="$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -hmac "$FULL_SECRET" -binary | b64url)" || return 1
    [[ -n "$sig" ]] || return 1
    printf '%s.%s.%s' "$h" "$p" "$sig"
}
if wants_mode full && [[ -n "$GATEHOUSE" ]]; then
    mkdir -p "$WORK/full"
    record_text "full: JWT secret = openssl rand -hex 32 (64 characters, once per run)"
    FULL_SECRET="$(openssl rand -hex 32)" || die "openssl rand failed"
    [[ ${#FULL_SECRET} == 64 ]] || die "openssl rand -hex 32 gave '${FULL_SECRET}'"
    export "$FULL_SECRET_ENV=$FULL_SECRET" # gatehouse reads it from the config's \${...}
    record_text "full: token = base64url('$FULL_JWT_HEADER') . base64url('$(jwt_payload 0 | sed 's/0}$/NOW+3600}/')') . base64url(openssl dgst -sha256 -hmac SECRET -binary of the first two), no padding; minted afresh for each full measurement"
fi

# Mode ratelimit: a limit far above anything wrk reaches (100 M/s, burst 1 M), so every measured
# request goes through the limiter (GCRA in the memory store) and passes. limited counts by
# client IP (one key: 127.0.0.1), limited_by_header by the header x-tenant, which wrk sends.
RL_LIMIT_N=100000000
RL_POLICY="limit: $RL_LIMIT_N/s, burst: 1000000"
RL_TENANT_HEADER="x-tenant"
RL_TENANT=t1
RL_HDR=() # the header wrk and the checks send (only limited_by_header: x-tenant)
# The limit check (not measured): a route limited to 2/min with burst 1 lets 2 requests through
# at once; the 3rd must get 429 with Retry-After.
RL_CHECK_POLICY="key: client_ip, limit: 2/min, burst: 1"
RL_CHECK_RESULT="" # what the 3 check requests got, for the report
RL_CHECK_REASON="" # why the check failed

# Mode cache: the route of mode http with `cache: { ttl: 300s }`, in the memory store (memory)
# or in the script's redis-server (redis). The backend's answer (200, text/plain, no
# Cache-Control, Set-Cookie or validators) is stored with the route's ttl, which outlives
# every measurement, so after the check's first request every request is a hit.
CACHE_POLICY="ttl: 300s"
declare -A CACHE_CHECK # per variant: the Cache-Status of the check's two requests (round 1)
# Modes ratelimit and cache (variant redis): one redis-server for the whole run, on a free
# loopback port (never 6379), no persistence, pinned to LOAD_CPU (beside wrk, in place of
# the backend, which cache hits do not reach), stopped on exit with the other processes.
# Flushed before each measurement, so every redis variant starts empty like a fresh process.
REDIS_TIMEOUT=50ms
REDIS_STATUS="" # empty = usable; otherwise why the redis variants are not measured
REDIS_PID=""
REDIS_URL=""

# Mode aggregate: three small JSON answers, /a.json /b.json /c.json, served by the backend nginx
# (only when the mode runs: the other modes' backend config stays as it was) and by the
# delaying backend (a python3 asyncio server the script starts, which answers each request
# AGG_DELAY ms after it arrived). One Gatehouse config per backend has three upstreams (svc_a,
# svc_b, svc_c, all to that backend), the plain routes /a.json /b.json /c.json, one to each, and
# the composite route /agg, whose `aggregate:` calls the three at once. The variants differ
# only in what the client asks: single: /c.json; sequential: /a.json, /b.json, /c.json in turn
# (a wrk Lua script; one logical request = 3 calls); fanout: /agg.
AGG_BODY_A='{"id":1,"name":"alpha","tags":["x","y"]}'
AGG_BODY_B='{"id":2,"name":"beta","count":42}'
AGG_BODY_C='{"id":3,"name":"gamma","ok":true}'
AGG_EXPECTED="{\"a\":$AGG_BODY_A,\"b\":$AGG_BODY_B,\"c\":$AGG_BODY_C}" # the composed answer
AGG_SCRIPT="" # the current variant's wrk Lua script
AGG_CONNS=$CONNECTIONS # and its wrk connections
DELAY_PID=""
DELAY_STATUS="" # empty = usable; otherwise why the *_delayed variants are not measured
declare -A AGG_CHECK # per variant: what the check saw (round 1)
AGG_FANOUT_TIME="" # curl's time_total of /agg and of the 3 calls one after the other (delayed, round 1)

nginx_common() { # $1 = instance dir, $2 = worker_connections (4096)
    cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${2:-4096}; }
EOF
}
nginx_temp_paths() { # $1 = instance dir; Debian compiles these into /var/lib/nginx
    cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

# start_bg NAME CPU LOGFILE CMD... : start pinned in the foreground-mode, in background
start_bg() {
    local name="$1" cpu="$2" logf="$3"
    shift 3
    record taskset -c "$cpu" "$@"
    taskset -c "$cpu" "$@" >"$logf" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    log "started $name (pid $LAST_PID, cpu $cpu)"
}

# wait_ready NAME PID PORT LOGFILE [TLS] : bounded wait until http://127.0.0.1:PORT/ answers
# (https://, with the test certificate as CA, when TLS is 1). On failure WAIT_REASON says why.
wait_ready() {
    local name="$1" pid="$2" port="$3" logf="$4" tls="${5:-0}" i
    local probe=(curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/")
    if ((tls)); then probe=(curl -s -o /dev/null --max-time 1 --cacert "$CERT" "https://127.0.0.1:$port/"); fi
    WAIT_REASON=""
    for ((i = 0; i < START_TIMEOUT_S * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            local st=0
            wait "$pid" 2>/dev/null || st=$?
            WAIT_REASON="exited with status $st before answering"
            log "$name exited (status $st) before answering on 127.0.0.1:$port; its log:"
            tail -n 20 "$logf" | sed 's/^/    /' >&2
            return 1
        fi
        if "${probe[@]}"; then
            return 0
        fi
        sleep 0.1
    done
    WAIT_REASON="did not answer on its port within ${START_TIMEOUT_S}s"
    log "$name did not answer on 127.0.0.1:$port within ${START_TIMEOUT_S}s; its log:"
    tail -n 20 "$logf" | sed 's/^/    /' >&2
    return 1
}

# ms VALUE : wrk duration ("312.00us", "1.23ms", "1.02s", "1.00m") -> milliseconds
ms() {
    awk -v v="$1" 'BEGIN {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
        if (f < 0 || n == "") { print "?"; exit }
        printf "%.3f", n * f
    }'
}

# proc_tree PID : PID and all its descendants (nginx: master and worker), one per line
proc_tree() {
    ps -e -o pid= -o ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            keep[root] = 1; grew = 1
            while (grew) { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } }
            for (p in keep) print p
        }'
}
# cpu_ticks PID : utime + stime (clock ticks) of PID and all its descendants (nginx: master
# and worker), from /proc/PID/stat; threads are included in their process's figures.
cpu_ticks() {
    local p total=0 st f
    for p in $(proc_tree "$1"); do
        st="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        read -r -a f <<<"${st##*) }" # fields from 3 (state) on: utime is field 14, stime 15
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# mem_kib PID : "RSS PSS" in KiB, summed over PID and its descendants (nginx: master and
# worker), from /proc/P/smaps_rollup; where only /proc/P/status can be read (kernels before
# 4.14), its VmRSS, and PSS is "?"; "? ?" when nothing could be read
mem_kib() {
    local p
    for p in $(proc_tree "$1"); do
        if [[ -r "/proc/$p/smaps_rollup" ]]; then
            cat "/proc/$p/smaps_rollup" 2>/dev/null || true
        else
            awk '/^VmRSS:/ { print "Rss:", $2, "kB"; print "NoPss:" }' "/proc/$p/status" 2>/dev/null || true
        fi
    done | awk '/^Rss:/ { r += $2; n++ } /^Pss:/ { q += $2 } /^NoPss:/ { nopss = 1 }
        END { if (!n) print "? ?"; else print r, (nopss ? "?" : q) }'
}

# seconds DURATION : wrk/h2load-style duration ("8s", "1m", "500ms", "10") -> whole seconds
# (at least 1), for openssl s_time -time
seconds() {
    awk -v v="$1" 'BEGIN {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "" || u == "s") ? 1 : (u == "ms") ? 0.001 : (u == "m") ? 60 : (u == "h") ? 3600 : -1
        if (f < 0 || n == "") { print "?"; exit }
        s = int(n * f + 0.5); if (s < 1) s = 1
        print s
    }'
}

# ---------------------------------------------------------------- backend
# Modes body1k and body64k: the backend serves /1k and /64k, static files of exactly 1024 and
# 65536 bytes (printable ASCII; nginx's `return` cannot hold 64 KiB, its config tokens are
# limited to 4 KiB). The files, and the locations, exist only when those modes run.
BODY_DIR="$WORK/backend/www"
# body_file MODE : the backend's answer of MODE, as a file (the check compares against it)
body_file() { echo "$BODY_DIR/${1#body}"; }
# body_locations : modes body1k and body64k: the backend's locations (nothing in other modes)
body_locations() {
    local m
    for m in body1k body64k; do
        wants_mode "$m" || continue
        printf '\n        location = %s {\n            root %s;\n            default_type application/octet-stream;\n        }' \
            "$(body_path "$m")" "$BODY_DIR"
    done
}
# agg_locations : mode aggregate: the backend's three JSON answers (nothing in other modes)
agg_locations() {
    wants_mode aggregate || return 0
    local n body
    for n in a b c; do
        case "$n" in
            a) body="$AGG_BODY_A" ;;
            b) body="$AGG_BODY_B" ;;
            c) body="$AGG_BODY_C" ;;
        esac
        printf '\n        location = /%s.json {\n            default_type application/json;\n            return 200 '"'"'%s'"'"';\n        }' "$n" "$body"
    done
}
BACKEND_DIR="$WORK/backend"
mkdir -p "$BACKEND_DIR/tmp"
for m in body1k body64k; do
    wants_mode "$m" || continue
    mkdir -p "$BODY_DIR"
    chmod 755 "$BACKEND_DIR" "$BODY_DIR"
    record_text "$m: the backend's $(body_file "$m") = the first $(body_size "$m") bytes of 'gatehouse bench body 0123456789 ' repeated (python3)"
    python3 -c 'import sys; n = int(sys.argv[2]); open(sys.argv[1], "wb").write((b"gatehouse bench body 0123456789 " * (n // 31 + 1))[:n])' \
        "$(body_file "$m")" "$(body_size "$m")"
    chmod 644 "$(body_file "$m")"
done
{
    nginx_common "$BACKEND_DIR"
    cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_temp_paths "$BACKEND_DIR")
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / {
            default_type text/plain;
            return 200 "hello\\n";
        }$(agg_locations)$(body_locations)
    }
}
EOF
} >"$BACKEND_DIR/nginx.conf"

NGINX_E_BACKEND=()
if ((${#NGINX_E[@]} > 0)); then NGINX_E_BACKEND=(-e "$BACKEND_DIR/error.log"); fi
start_bg backend-nginx "$LOAD_CPU" "$BACKEND_DIR/stdout.log" \
    "$NGINX" -p "$BACKEND_DIR/" -c "$BACKEND_DIR/nginx.conf" "${NGINX_E_BACKEND[@]}" -g 'daemon off;'
BACKEND_PID=$LAST_PID
wait_ready backend "$BACKEND_PID" "$BACKEND_PORT" "$BACKEND_DIR/error.log" ||
    die "backend nginx did not start (config: $BACKEND_DIR/nginx.conf)"
record curl -s "http://127.0.0.1:$BACKEND_PORT/"
EXPECTED_BODY="$(curl -s --max-time 5 "http://127.0.0.1:$BACKEND_PORT/")"
[[ "$EXPECTED_BODY" == "hello" ]] || die "backend returned unexpected body: '$EXPECTED_BODY'"
for m in body1k body64k; do
    wants_mode "$m" || continue
    record curl -s "http://127.0.0.1:$BACKEND_PORT$(body_path "$m")"
    curl -s --max-time 5 -o "$BACKEND_DIR/check-${m#body}" "http://127.0.0.1:$BACKEND_PORT$(body_path "$m")" || true
    cmp -s "$BACKEND_DIR/check-${m#body}" "$(body_file "$m")" ||
        die "backend did not serve $(body_path "$m") as the $(body_size "$m")-byte file $(body_file "$m") (see $BACKEND_DIR/error.log)"
    rm -f "$BACKEND_DIR/check-${m#body}"
done
log "backend ready on 127.0.0.1:$BACKEND_PORT"

# ---------------------------------------------------------------- redis-server (ratelimit, cache)
# redis_cli ARGS... : redis-cli against the script's own redis-server (bounded by a timeout)
redis_cli() { timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# redis_flush : empties the script's redis-server and resets its command counters before a
# redis measurement
redis_flush() {
    record redis-cli -h 127.0.0.1 -p "$REDIS_PORT" FLUSHALL
    record redis-cli -h 127.0.0.1 -p "$REDIS_PORT" CONFIG RESETSTAT
    [[ "$(redis_cli FLUSHALL 2>&1)" == OK && "$(redis_cli CONFIG RESETSTAT 2>&1)" == OK ]]
}
# redis_calls MODE : how many calls the script's redis-server has served of the command a
# request of MODE makes (ratelimit: EVAL/EVALSHA, the GCRA script; cache: GET), from INFO
# commandstats (empty when it cannot be read)
redis_calls() {
    local re='^cmdstat_get:'
    [[ "$1" == ratelimit ]] && re='^cmdstat_eval(sha)?:'
    redis_cli INFO commandstats 2>/dev/null | tr -d '\r' | awk -v re="$re" '
        { ok = 1 } $0 ~ re { sub(/^[^:]*:calls=/, ""); sub(/,.*/, ""); n += $0 }
        END { if (ok) printf "%d\n", n }'
}
# redis_keys PATTERN : how many keys of the script's redis-server match PATTERN
redis_keys() { redis_cli --scan --pattern "$1" 2>/dev/null | grep -c . || true; }
if [[ -n "$GATEHOUSE" ]] && { wants_mode ratelimit || wants_mode cache; }; then
    REDIS_DIR="$WORK/redis"
    mkdir -p "$REDIS_DIR"
    if [[ "$REDIS_PORT" == 6379 ]]; then
        REDIS_STATUS="the free port picked for redis-server was 6379, which is left alone; not measured"
    else
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
        start_bg redis-server "$LOAD_CPU" "$REDIS_DIR/redis.log" \
            redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
            --dir "$REDIS_DIR" --daemonize no --logfile ""
        REDIS_PID=$LAST_PID
        for ((i = 0; i < START_TIMEOUT_S * 10; i++)); do
            if ! kill -0 "$REDIS_PID" 2>/dev/null; then break; fi
            if [[ "$(redis_cli PING 2>/dev/null)" == PONG ]]; then break; fi
            sleep 0.1
        done
        if [[ "$(redis_cli PING 2>/dev/null)" != PONG ]]; then
            REDIS_STATUS="redis-server did not answer PING on 127.0.0.1:$REDIS_PORT within ${START_TIMEOUT_S}s, not measured"
            tail -n 20 "$REDIS_DIR/redis.log" | sed 's/^/    /' >&2
            stop_pid "$REDIS_PID"
            REDIS_PID=""
        else
            record redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING
            log "redis-server ready on 127.0.0.1:$REDIS_PORT ($(redis-server --version | awk '{print $3}'))"
        fi
    fi
    if [[ -n "$REDIS_STATUS" ]]; then log "redis: $REDIS_STATUS"; fi
fi

# ---------------------------------------------------------------- delaying backend (aggregate)
# Mode aggregate with AGG_DELAY > 0: a python3 asyncio HTTP/1.1 server on a free loopback port,
# pinned to LOAD_CPU like the backend nginx. It answers every request AGG_DELAY ms after its
# head arrived (a timer, not a sleeping thread: any number of requests wait at once), keep-alive,
# with the same bodies as the backend nginx (/a.json /b.json /c.json; anything else: hello).
# Bounded: a request head over 16 KiB closes the connection, and the server exits by itself
# when the script (its parent) is gone, besides being stopped on exit like the others.
if [[ -n "$GATEHOUSE" ]] && wants_mode aggregate && ((AGG_DELAY > 0)); then
    DELAY_DIR="$WORK/aggregate/delay-backend"
    mkdir -p "$DELAY_DIR"
    cat >"$DELAY_DIR/server.py" <<'SERVER'
import asyncio, os, sys

port, delay = int(sys.argv[1]), int(sys.argv[2]) / 1000
parent = os.getppid()


def answer(body, ctype):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


ANSWERS = {("/%s.json" % n).encode(): answer(b.encode(), b"application/json")
           for n, b in zip("abc", sys.argv[3:6])}
HELLO = answer(b"hello\n", b"text/plain")


class Conn(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self.t.close()
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b"/"
            loop.call_later(delay, self.send, ANSWERS.get(path, HELLO))

    def send(self, data):
        if not self.t.is_closing():
            self.t.write(data)


async def main():
    server = await loop.create_server(Conn, "127.0.0.1", port, backlog=1024)
    async with server:
        while os.getppid() == parent:
            await asyncio.sleep(1)


loop = asyncio.new_event_loop()
loop.run_until_complete(main())
SERVER
    start_bg delay-backend "$LOAD_CPU" "$DELAY_DIR/server.log" \
        python3 "$DELAY_DIR/server.py" "$DELAY_PORT" "$AGG_DELAY" "$AGG_BODY_A" "$AGG_BODY_B" "$AGG_BODY_C"
    DELAY_PID=$LAST_PID
    if wait_ready delay-backend "$DELAY_PID" "$DELAY_PORT" "$DELAY_DIR/server.log" &&
        [[ "$(curl -s --max-time 5 "http://127.0.0.1:$DELAY_PORT/b.json")" == "$AGG_BODY_B" ]]; then
        record curl -s "http://127.0.0.1:$DELAY_PORT/b.json"
        log "delaying backend ready on 127.0.0.1:$DELAY_PORT (${AGG_DELAY} ms per answer)"
    else
        DELAY_STATUS="the delaying backend (python3) did not answer /b.json on 127.0.0.1:$DELAY_PORT, not measured"
        log "aggregate: $DELAY_STATUS"
        stop_pid "$DELAY_PID"
        DELAY_PID=""
    fi
fi

# ---------------------------------------------------------------- idle client (mode idle)
# A python3 asyncio client, pinned to LOAD_CPU: opens N connections to the proxy (at most 50 being
# opened at once), sends one keep-alive GET / (HTTP/1.1) on each and reads the whole answer
# (Content-Length or chunked; 200 with the expected body, no Connection: close), then prints
# "ready OK FAILED SECONDS REASONS" and keeps them all open and idle until SIGTERM (or until the
# script is gone), then prints "closed_by_server N" (connections the proxy had closed) and closes
# them. Each connection has 10 s to connect and 10 s per read, the whole opening TIMEOUT s.
IDLE_SETTLE=2                             # seconds all connections sit idle before memory is read
IDLE_TIMEOUT=$((30 + IDLE_CONNS / 100)) # seconds for the client to open and use them all
IDLE_CLIENT=""
if wants_mode idle; then
    mkdir -p "$WORK/idle"
    IDLE_CLIENT="$WORK/idle/client.py"
    record_text "idle: memory = the sums of Rss and Pss in /proc/PID/smaps_rollup over the proxy's processes (ps -e -o pid= -o ppid=), after the check request, ${IDLE_SETTLE} s after all the client's connections are idle, and 1 s after it closed them"
    cat >"$IDLE_CLIENT" <<'CLIENT'
import asyncio, os, signal, sys, time

port, n, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
expect = sys.argv[4].encode()
parent = os.getppid()
REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: bench-idle\r\n\r\n" % port
AT_ONCE = 50


async def read(coro):
    return await asyncio.wait_for(coro, 10)


async def one(sem):
    async with sem:
        r, w = await read(asyncio.open_connection("127.0.0.1", port))
        try:
            w.write(REQ)
            head = (await read(r.readuntil(b"\r\n\r\n"))).decode("latin-1").split("\r\n")
            status = (head[0].split(" ") + ["?"])[1]
            hdrs = {}
            for line in head[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            if "content-length" in hdrs:
                body = await read(r.readexactly(int(hdrs["content-length"])))
            elif "chunked" in hdrs.get("transfer-encoding", "").lower():
                body = b""
                while True:
                    size = int((await read(r.readline())).split(b";")[0].strip(), 16)
                    chunk = await read(r.readexactly(size + 2))
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                raise ValueError("an answer without Content-Length or chunked body")
            if status != "200" or body != expect:
                raise ValueError("HTTP %s, body %r" % (status, body[:40]))
            if "close" in hdrs.get("connection", "").lower():
                raise ValueError("the answer says Connection: close")
        except BaseException:
            w.close()
            raise
        return r, w


async def main():
    t0 = time.monotonic()
    sem = asyncio.Semaphore(AT_ONCE)
    tasks = [asyncio.ensure_future(one(sem)) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    conns, errors = [], {}
    for t in done:
        e = t.exception()
        if e is None:
            conns.append(t.result())
        else:
            k = (type(e).__name__ + " " + str(e))[:100]
            errors[k] = errors.get(k, 0) + 1
    if pending:
        errors["not done within %g s" % timeout] = len(pending)
    why = "; ".join("%s (%d)" % kv for kv in errors.items())
    print("ready %d %d %.1f %s" % (len(conns), n - len(conns), time.monotonic() - t0, why), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set() and os.getppid() == parent:
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
    print("closed_by_server %d" % sum(1 for r, w in conns if r.at_eof()), flush=True)
    for r, w in conns:
        w.close()


asyncio.run(main())
CLIENT
fi

# ---------------------------------------------------------------- proxies
# start_proxy NAME MODE : writes config, starts pinned to PROXY_CPU; sets PROXY_PID PROXY_PORT
# PROXY_LOG PROXY_DIR. Plain HTTP (mode http, and body1k, body64k and newconn, which use the same
# configs) lives in $WORK/NAME; the TLS modes share one config per proxy in $WORK/tls/NAME (a
# TLS listener that also offers h2 via ALPN). Mode idle is the plain config with room for
# IDLE_CONNS client connections (nginx worker_connections, HAProxy maxconn, Gatehouse
# server.max_connections and max_connections_per_ip), in $WORK/idle/NAME.
start_proxy() {
    local name="$1" mode="${2:-http}" dir="$WORK/$1" tls=0
    if is_tls_mode "$mode"; then
        tls=1
        dir="$WORK/tls/$1"
    elif [[ "$mode" == idle ]]; then
        dir="$WORK/idle/$1"
    fi
    PROXY_DIR="$dir"
    mkdir -p "$dir/tmp"
    # Variable parts of the configs; empty for plain HTTP, so that its configs stay as they were.
    local nginx_listen="" nginx_ssl="" keepalive=64 haproxy_bind="" haproxy_global="" worker_conns=4096 gh_server=""
    if [[ "$mode" == idle ]]; then
        worker_conns=$((IDLE_CONNS + 1000))
        if ((worker_conns < 4096)); then worker_conns=4096; fi
        gh_server="server:
  max_connections: $((IDLE_CONNS + 1000))
  max_connections_per_ip: $((IDLE_CONNS + 1000))
"
    fi
    if ((tls)); then
        keepalive=$TLS_UPSTREAM_KEEPALIVE
        nginx_listen=" ssl http2"
        nginx_ssl=$'\n'"        ssl_certificate $CERT;"$'\n'"        ssl_certificate_key $KEY;"
        nginx_ssl+=$'\n'"        ssl_protocols TLSv1.2 TLSv1.3;"
        if ((NGINX_HTTP2_ON)); then
            nginx_listen=" ssl"
            nginx_ssl+=$'\n'"        http2 on;"
        fi
        haproxy_bind=" ssl crt $CERT_KEY alpn h2,http/1.1"
        haproxy_global=$'\n'"    ssl-default-bind-options ssl-min-ver TLSv1.2"
    fi
    case "$name" in
        nginx)
            PROXY_PORT=$NGINX_PORT
            PROXY_LOG="$dir/error.log"
            {
                nginx_common "$dir" "$worker_conns"
                cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_temp_paths "$dir")
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive $keepalive;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT$nginx_listen;$nginx_ssl
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
            } >"$dir/nginx.conf"
            local e=()
            if ((${#NGINX_E[@]} > 0)); then e=(-e "$dir/error.log"); fi
            start_bg nginx "$PROXY_CPU" "$dir/stdout.log" \
                "$NGINX" -p "$dir/" -c "$dir/nginx.conf" "${e[@]}" -g 'daemon off;'
            ;;
        haproxy)
            PROXY_PORT=$HAPROXY_PORT
            PROXY_LOG="$dir/haproxy.log"
            # An explicit maxconn makes haproxy ask for ~2*maxconn fds; keep it modest.
            local maxconn=$((CONNECTIONS + 1000))
            if [[ "$mode" == idle ]] && ((IDLE_CONNS + 1000 > maxconn)); then maxconn=$((IDLE_CONNS + 1000)); fi
            if ((maxconn < 4096)); then maxconn=4096; fi
            cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    pidfile $dir/haproxy.pid$haproxy_global

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT$haproxy_bind
    default_backend be

backend be
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
EOF
            start_bg haproxy "$PROXY_CPU" "$PROXY_LOG" "$HAPROXY" -f "$dir/haproxy.cfg" -db
            ;;
        gatehouse | gatehouse-base)
            # Same config and pinning for both; only the binary (and the port) differ.
            local bin=$GATEHOUSE
            PROXY_PORT=$GATEHOUSE_PORT
            if [[ "$name" == gatehouse-base ]]; then
                bin=$BASELINE
                PROXY_PORT=$BASELINE_PORT
            fi
            PROXY_LOG="$dir/gatehouse.log"
            local listen="listen: \"127.0.0.1:$PROXY_PORT\""
            if ((tls)); then
                listen="listen:
  - addr: \"127.0.0.1:$PROXY_PORT\"
    tls:
      certificates:
        - { cert: \"$CERT\", key: \"$KEY\" }"
            fi
            cat >"$dir/gatehouse.yaml" <<EOF
$listen
workers: 1
access_log: off
${gh_server}upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend
EOF
            start_bg "$name" "$PROXY_CPU" "$PROXY_LOG" "$bin" run --config "$dir/gatehouse.yaml"
            ;;
    esac
    PROXY_PID=$LAST_PID
}

# start_auth VARIANT : mode auth: writes the config of VARIANT (none, basic or jwt) and starts
# gatehouse with it, pinned to PROXY_CPU; sets PROXY_PID PROXY_PORT PROXY_LOG PROXY_DIR and the
# credentials AUTH_HDR (right) and AUTH_BAD (wrong). none is the config of mode http.
start_auth() {
    local v="$1" dir="$WORK/auth/$1" consumers="" auth="" token bad
    PROXY_DIR="$dir"
    PROXY_PORT=$GATEHOUSE_PORT
    PROXY_LOG="$dir/gatehouse.log"
    mkdir -p "$dir"
    AUTH_HDR=()
    AUTH_BAD=()
    case "$v" in
        basic)
            consumers="consumers:
  - id: $AUTH_USER
    basic_auth: { username: $AUTH_USER, password_hash: \"$AUTH_HASH\" }
"
            auth=$'\n'"    auth: { methods: [basic] }"
            AUTH_HDR=("Authorization: Basic $AUTH_BASIC")
            AUTH_BAD=("Authorization: Basic $(printf '%s:%s' "$AUTH_USER" wrong-password | openssl base64 -A)")
            ;;
        jwt)
            auth=$'\n'"    auth: { methods: [jwt], jwt: { public_key: \"$JWT_PUB\", algorithms: [RS256] } }"
            token="$(mint_jwt)" || die "could not sign the JWT with $JWT_KEY"
            AUTH_HDR=("Authorization: Bearer $token")
            JWT_LEN=${#token}
            # the same signature over other claims (sub "intruder"): must fail verification
            bad="$(jwt_payload "$((EPOCHSECONDS + 3600))" intruder | b64url)"
            AUTH_BAD=("Authorization: Bearer ${token%%.*}.$bad.${token##*.}")
            ;;
    esac
    cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$PROXY_PORT"
workers: 1
access_log: off
${consumers}upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend$auth
EOF
    start_bg "gatehouse[auth:$v]" "$PROXY_CPU" "$PROXY_LOG" "$GATEHOUSE" run --config "$dir/gatehouse.yaml"
    PROXY_PID=$LAST_PID
}

# auth_check VARIANT PORT : with its credential (AUTH_HDR; none: no header) the variant must
# answer 200 with the backend's body; basic and jwt must answer 401 without a credential and
# with a wrong one (AUTH_BAD). On failure CHECK_REASON says why.
auth_check() {
    local v="$1" url="http://127.0.0.1:$2/" code body h
    local with=(curl -s -o "$PROXY_DIR/check-body.txt" -w '%{http_code}')
    for h in "${AUTH_HDR[@]}"; do with+=(-H "$h"); done
    CHECK_REASON=""
    record "${with[@]}" "$url"
    code="$("${with[@]}" --max-time 5 "$url" || true)"
    body="$(cat "$PROXY_DIR/check-body.txt" 2>/dev/null || true)"
    if [[ "$code" != 200 || "$body" != "$EXPECTED_BODY" ]]; then
        CHECK_REASON="$([[ "$v" == none ]] && echo "without a credential" || echo "with the right credential"): HTTP $code, body '$body' (expected 200, '$EXPECTED_BODY')"
        return 1
    fi
    [[ "$v" != none ]] || return 0
    record curl -s -o /dev/null -w '%{http_code}' "$url"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
    if [[ "$code" != 401 ]]; then
        CHECK_REASON="without a credential: HTTP $code (expected 401)"
        return 1
    fi
    record curl -s -o /dev/null -w '%{http_code}' -H "${AUTH_BAD[0]}" "$url"
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "${AUTH_BAD[0]}" --max-time 5 "$url" || true)"
    if [[ "$code" != 401 ]]; then
        CHECK_REASON="with a wrong credential: HTTP $code (expected 401)"
        return 1
    fi
}

# start_variant MODE VARIANT : mode auth, ratelimit or cache: starts gatehouse with VARIANT's
# config
start_variant() {
    case "$1" in
        auth) start_auth "$2" ;;
        ratelimit) start_ratelimit "$2" ;;
        cache) start_cache "$2" ;;
        aggregate) start_aggregate "$2" ;;
        full) start_full "$2" ;;
    esac
}
# variant_check MODE VARIANT PORT : the checks of VARIANT before it is measured
variant_check() {
    case "$1" in
        auth) auth_check "$2" "$3" ;;
        ratelimit) rl_check "$2" "$3" ;;
        cache) cache_check "$2" "$3" ;;
        aggregate) agg_check "$2" "$3" ;;
        full) full_check "$2" "$3" ;;
    esac
}
# uses_redis MODE VARIANT : whether VARIANT of MODE keeps its state in the script's redis-server
uses_redis() { [[ "$1" == ratelimit || "$1" == cache ]] && [[ "$2" == redis ]]; }
# store_yaml : the top-level `store:` of the redis variants
store_yaml() {
    printf 'store: { redis: { url: "%s", timeout: %s } }\n' "${REDIS_URL:-redis://127.0.0.1:PORT/0}" "$REDIS_TIMEOUT"
}

# start_ratelimit VARIANT : mode ratelimit: writes the config of VARIANT (none, limited,
# limited_by_header or redis) and starts gatehouse with it, pinned to PROXY_CPU; sets PROXY_PID
# PROXY_PORT PROXY_LOG PROXY_DIR and RL_HDR. none is the config of mode http; redis is limited
# with the store in the script's redis-server.
start_ratelimit() {
    local v="$1" dir="$WORK/ratelimit/$1" rl="" store=""
    PROXY_DIR="$dir"
    PROXY_PORT=$GATEHOUSE_PORT
    PROXY_LOG="$dir/gatehouse.log"
    mkdir -p "$dir"
    RL_HDR=()
    case "$v" in
        limited)
            rl=$'\n'"    rate_limit: { key: client_ip, $RL_POLICY }"
            ;;
        limited_by_header)
            rl=$'\n'"    rate_limit: { key: \"header:$RL_TENANT_HEADER\", $RL_POLICY }"
            RL_HDR=("$RL_TENANT_HEADER: $RL_TENANT")
            ;;
        redis)
            rl=$'\n'"    rate_limit: { key: client_ip, $RL_POLICY }"
            store="$(store_yaml)"$'\n'
            redis_flush || log "redis-server: FLUSHALL failed"
            ;;
    esac
    cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$PROXY_PORT"
workers: 1
access_log: off
${store}upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend$rl
EOF
    start_bg "gatehouse[ratelimit:$v]" "$PROXY_CPU" "$PROXY_LOG" "$GATEHOUSE" run --config "$dir/gatehouse.yaml"
    PROXY_PID=$LAST_PID
}

# hdr_value NAME : the value of response header NAME (any case) in the `curl -D -` output on
# stdin, empty if absent
hdr_value() {
    tr -d '\r' | awk -v n="$1" 'BEGIN { n = tolower(n) }
        { i = index($0, ":"); if (i > 1 && tolower(substr($0, 1, i - 1)) == n) {
            v = substr($0, i + 1); sub(/^[ \t]+/, "", v); print v; exit } }'
}
# status_of : the status code in the `curl -D -` output on stdin (the last status line)
status_of() {
    tr -d '\r' | awk '/^HTTP\// { c = $2 } END { print c }'
}

# rl_check VARIANT PORT : with RL_HDR (limited_by_header: x-tenant) the variant must answer
# 200 with the backend's body; limited, limited_by_header and redis must carry RateLimit-Limit
# with the configured limit (the request went through the limiter), none must not. redis must
# have counted it in Redis (redis-server served EVALSHA, no fallback to local limits in its
# log). limited_by_header must count a request without x-tenant too (by its client address, so
# that omitting the header does not escape the limit: RateLimit-Limit present). On failure
# CHECK_REASON says why.
rl_check() {
    local v="$1" url="http://127.0.0.1:$2/" hdrs code body lim h
    local cmd=(curl -s -D - -o "$PROXY_DIR/check-body.txt")
    for h in "${RL_HDR[@]}"; do cmd+=(-H "$h"); done
    CHECK_REASON=""
    record "${cmd[@]}" "$url"
    hdrs="$("${cmd[@]}" --max-time 5 "$url" || true)"
    code="$(status_of <<<"$hdrs")"
    body="$(cat "$PROXY_DIR/check-body.txt" 2>/dev/null || true)"
    lim="$(hdr_value ratelimit-limit <<<"$hdrs")"
    if [[ "$code" != 200 || "$body" != "$EXPECTED_BODY" ]]; then
        CHECK_REASON="HTTP ${code:-none}, body '$body' (expected 200, '$EXPECTED_BODY')"
        return 1
    fi
    if [[ "$v" == none ]]; then
        if [[ -n "$lim" ]]; then
            CHECK_REASON="RateLimit-Limit: $lim on the route without rate_limit"
            return 1
        fi
        return 0
    fi
    if [[ "$lim" != "$RL_LIMIT_N" ]]; then
        CHECK_REASON="RateLimit-Limit: '${lim}' (expected $RL_LIMIT_N: the request was not counted)"
        return 1
    fi
    if [[ "$v" == redis ]] && ! redis_used ratelimit; then return 1; fi
    [[ "$v" == limited_by_header ]] || return 0
    record curl -s -D - -o /dev/null "$url"
    hdrs="$(curl -s -D - -o /dev/null --max-time 5 "$url" || true)"
    code="$(status_of <<<"$hdrs")"
    lim="$(hdr_value ratelimit-limit <<<"$hdrs")"
    if [[ "$code" != 200 || "$lim" != "$RL_LIMIT_N" ]]; then
        CHECK_REASON="without $RL_TENANT_HEADER: HTTP ${code:-none}, RateLimit-Limit '$lim' (expected 200 and RateLimit-Limit: $RL_LIMIT_N: counted by client address)"
        return 1
    fi
}

# redis_used MODE [PATTERN] : a redis variant's requests reached the script's redis-server
# (it has served MODE's command since its counters were reset: redis_calls), its state is there
# (a key matching PATTERN exists, when given: the rate limit's GCRA key expires within a ms at
# this limit, so it is not looked for), and its log shows no fallback ("Redis store
# unavailable"); on failure CHECK_REASON says why
redis_used() {
    local n
    record redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats
    n="$(redis_calls "$1")"
    if ! [[ "$n" =~ ^[0-9]+$ ]] || ((n == 0)); then
        CHECK_REASON="redis-server on port $REDIS_PORT served no $([[ "$1" == ratelimit ]] && echo EVALSHA || echo GET) (INFO commandstats): Redis was not used"
        return 1
    fi
    if [[ -n "${2:-}" ]]; then
        record redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern "$2"
        n="$(redis_keys "$2")"
        if ((n == 0)); then
            CHECK_REASON="no key matching $2 in redis-server on port $REDIS_PORT: Redis was not used"
            return 1
        fi
    fi
    if grep -q "Redis store unavailable" "$PROXY_LOG" 2>/dev/null; then
        CHECK_REASON="gatehouse reported the Redis store unavailable: $(grep -m1 "Redis store unavailable" "$PROXY_LOG")"
        return 1
    fi
}

# start_cache VARIANT : mode cache: writes the config of VARIANT (none, memory or redis) and
# starts gatehouse with it, pinned to PROXY_CPU; sets PROXY_PID PROXY_PORT PROXY_LOG PROXY_DIR.
# none is the config of mode http; memory adds `cache:` to the route; redis also puts the store
# in the script's redis-server (flushed first). All three have an admin listener, read for the
# cache counters (gatehouse_cache_total) around the measured run; it serves nothing during it.
start_cache() {
    local v="$1" dir="$WORK/cache/$1" cache="" store=""
    PROXY_DIR="$dir"
    PROXY_PORT=$GATEHOUSE_PORT
    PROXY_LOG="$dir/gatehouse.log"
    mkdir -p "$dir"
    case "$v" in
        memory) cache=$'\n'"    cache: { $CACHE_POLICY }" ;;
        redis)
            cache=$'\n'"    cache: { $CACHE_POLICY }"
            store="$(store_yaml)"$'\n'
            redis_flush || log "redis-server: FLUSHALL failed"
            ;;
    esac
    cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$PROXY_PORT"
workers: 1
access_log: off
admin: { addr: "127.0.0.1:$ADMIN_PORT" }
${store}upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend$cache
EOF
    start_bg "gatehouse[cache:$v]" "$PROXY_CPU" "$PROXY_LOG" "$GATEHOUSE" run --config "$dir/gatehouse.yaml"
    PROXY_PID=$LAST_PID
}

# cache_check VARIANT PORT : two requests in a row, each must answer 200 with the backend's
# body. none must not carry Cache-Status (no cache on the route). memory and redis: the first
# is the warm-up (wait_ready's probe, a GET / as well, has usually filled the cache already),
# the second must be a hit (its Cache-Status contains "hit"); redis must have the answer in
# Redis (GETs served, a gatehouse:cache:* key) and no fallback in its log. On failure
# CHECK_REASON says why.
cache_check() {
    local v="$1" url="http://127.0.0.1:$2/" i hdrs code body cs statuses=()
    local cmd=(curl -s -D - -o "$PROXY_DIR/check-body.txt")
    CHECK_REASON=""
    record "${cmd[@]}" "$url"
    record_text "(the same again: the 2nd must be a hit)"
    for i in 1 2; do
        hdrs="$("${cmd[@]}" --max-time 5 "$url" || true)"
        code="$(status_of <<<"$hdrs")"
        body="$(cat "$PROXY_DIR/check-body.txt" 2>/dev/null || true)"
        cs="$(hdr_value cache-status <<<"$hdrs")"
        statuses+=("${cs:-none}")
        if [[ "$code" != 200 || "$body" != "$EXPECTED_BODY" ]]; then
            CHECK_REASON="request $i: HTTP ${code:-none}, body '$body' (expected 200, '$EXPECTED_BODY')"
            return 1
        fi
        if [[ "$v" == none && -n "$cs" ]]; then
            CHECK_REASON="Cache-Status: $cs on the route without cache"
            return 1
        fi
    done
    if ((ROUND == 1)); then CACHE_CHECK[$v]="1st: \`${statuses[0]}\`, 2nd: \`${statuses[1]}\`"; fi
    [[ "$v" != none ]] || return 0
    if [[ "${statuses[1]}" != *hit* ]]; then
        CHECK_REASON="the 2nd request was not a cache hit (Cache-Status: ${statuses[1]}; the 1st had ${statuses[0]})"
        return 1
    fi
    if [[ "$v" == redis ]] && ! redis_used cache "gatehouse:cache:*"; then return 1; fi
    return 0
}

# agg_backend VARIANT : the port of the backend a mode-aggregate variant calls (*_delayed: the
# delaying backend)
agg_backend() {
    if [[ "$1" == *_delayed ]]; then echo "$DELAY_PORT"; else echo "$BACKEND_PORT"; fi
}
# agg_config BACKEND_PORT : mode aggregate's Gatehouse config (the same for all three clients)
agg_config() {
    cat <<EOF
listen: "127.0.0.1:$GATEHOUSE_PORT"
workers: 1
access_log: off
admin: { addr: "127.0.0.1:$ADMIN_PORT" }
upstreams:
  svc_a: { targets: ["http://127.0.0.1:$1"] }
  svc_b: { targets: ["http://127.0.0.1:$1"] }
  svc_c: { targets: ["http://127.0.0.1:$1"] }
routes:
  - name: agg
    match: { path: "/agg", methods: [GET] }
    aggregate:
      a: { upstream: svc_a, path: "/a.json" }
      b: { upstream: svc_b, path: "/b.json" }
      c: { upstream: svc_c, path: "/c.json" }
  - match: { path: "/a.json" }
    upstream: svc_a
  - match: { path: "/b.json" }
    upstream: svc_b
  - match: { path: "/c.json" }
    upstream: svc_c
  - match: { path_prefix: "/" }
    upstream: svc_a
EOF
}
# agg_paths VARIANT : the paths the client of VARIANT asks for, in turn
agg_paths() {
    case "${1%_delayed}" in
        single) echo /c.json ;;
        sequential) echo /a.json /b.json /c.json ;;
        fanout) echo /agg ;;
    esac
}
# agg_calls VARIANT : client requests (wrk's count) per logical request: 3 for sequential
agg_calls() { if [[ "${1%_delayed}" == sequential ]]; then echo 3; else echo 1; fi; }

# start_aggregate VARIANT : mode aggregate: writes the config for VARIANT's backend (fast:
# nginx; *_delayed: the delaying backend) and the wrk Lua script of its client, and starts
# gatehouse, pinned to PROXY_CPU; sets PROXY_PID PROXY_PORT PROXY_LOG PROXY_DIR AGG_SCRIPT and
# AGG_CONNS (wrk's connections: CONNECTIONS, or AGG_DELAY_CONNECTIONS for *_delayed). The
# config is the same for single, sequential and fanout: only the client differs.
start_aggregate() {
    local v="$1" dir="$WORK/aggregate/$1" cfg p
    PROXY_DIR="$dir"
    PROXY_PORT=$GATEHOUSE_PORT
    PROXY_LOG="$dir/gatehouse.log"
    mkdir -p "$dir"
    cfg="$WORK/aggregate/gatehouse.yaml"
    AGG_CONNS=$CONNECTIONS
    if [[ "$v" == *_delayed ]]; then
        cfg="$WORK/aggregate/gatehouse-delayed.yaml"
        AGG_CONNS=$AGG_DELAY_CONNECTIONS
    fi
    agg_config "$(agg_backend "$v")" >"$cfg"
    # One Lua state per wrk thread: request() is called whenever one of its connections is
    # ready to send, so the paths rotate over the thread's requests, not per connection (all
    # three are alike: the same backend, bodies of 33-41 bytes).
    AGG_SCRIPT="$dir/client.lua"
    {
        printf 'local paths = {'
        for p in $(agg_paths "$v"); do printf '"%s", ' "$p"; done
        printf '}\nlocal i = 0\nrequest = function()\n    i = i %% #paths + 1\n    return wrk.format("GET", paths[i])\nend\n'
    } >"$AGG_SCRIPT"
    start_bg "gatehouse[aggregate:$v]" "$PROXY_CPU" "$PROXY_LOG" "$GATEHOUSE" run --config "$cfg"
    PROXY_PID=$LAST_PID
}

# agg_check VARIANT PORT : single and sequential: each of their paths must answer 200 with the
# backend's JSON; fanout: /agg must answer 200, application/json, the three answers under a, b
# and c (compared as JSON) and no X-Gatehouse-Degraded; the delayed fanout's answer time is
# recorded against the three calls one after the other. On failure CHECK_REASON says why.
agg_check() {
    local v="$1" base="http://127.0.0.1:$2" p hdrs code body want ct deg t_agg t_seq=0 t seen=()
    CHECK_REASON=""
    for p in $(agg_paths "$v"); do
        record curl -s -D - -o "$PROXY_DIR/check-body.txt" "$base$p"
        hdrs="$(curl -s -D - -o "$PROXY_DIR/check-body.txt" --max-time 5 "$base$p" || true)"
        code="$(status_of <<<"$hdrs")"
        body="$(cat "$PROXY_DIR/check-body.txt" 2>/dev/null || true)"
        case "$p" in
            /a.json) want="$AGG_BODY_A" ;;
            /b.json) want="$AGG_BODY_B" ;;
            /c.json) want="$AGG_BODY_C" ;;
            /agg) want="$AGG_EXPECTED" ;;
        esac
        if [[ "$code" != 200 ]]; then
            CHECK_REASON="$p: HTTP ${code:-none}, body '$body' (expected 200)"
            return 1
        fi
        if ! python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]) != json.loads(sys.argv[2]))' "$body" "$want" 2>/dev/null; then
            CHECK_REASON="$p: body '$body' (expected the JSON $want)"
            return 1
        fi
        if [[ "$p" == /agg ]]; then
            ct="$(hdr_value content-type <<<"$hdrs")"
            deg="$(hdr_value x-gatehouse-degraded <<<"$hdrs")"
            if [[ "$ct" != application/json* || -n "$deg" ]]; then
                CHECK_REASON="/agg: Content-Type '$ct', X-Gatehouse-Degraded '$deg' (expected application/json, not degraded)"
                return 1
            fi
        fi
        seen+=("$p 200 (${#body} bytes)")
    done
    if ((ROUND == 1)); then
        local IFS=,
        AGG_CHECK[$v]="${seen[*]}"
        AGG_CHECK[$v]="${AGG_CHECK[$v]//,/, }"
    fi
    # The delayed fan-out, once: its answer time against the 3 calls made one after the other.
    if [[ "$v" == fanout_delayed && -z "$AGG_FANOUT_TIME" ]]; then
        t_agg="$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "$base/agg" || true)"
        for p in /a.json /b.json /c.json; do
            t="$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "$base$p" || echo 0)"
            t_seq="$(awk -v a="$t_seq" -v b="$t" 'BEGIN { print a + b }')"
        done
        AGG_FANOUT_TIME="$(awk -v a="$t_agg" -v b="$t_seq" 'BEGIN { printf "/agg answered in %.1f ms; /a.json, /b.json and /c.json one after the other (3 curl runs) took %.1f ms", a * 1000, b * 1000 }')"
    fi
    return 0
}

# agg_call_count : gatehouse_aggregate_calls_total{result="ok"} from the admin listener, summed
# over the calls (empty when it cannot be read)
agg_call_count() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null |
        awk '/^gatehouse_aggregate_calls_total\{/ && /result="ok"/ { n += $NF; seen = 1 } END { if (seen) printf "%d\n", n; else if (NR > 0) print 0 }'
}

# cache_hits : gatehouse_cache_total{result="hit"} from the admin listener, summed over routes
# (empty when it cannot be read)
cache_hits() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null |
        awk '/^gatehouse_cache_total\{/ && /result="hit"/ { n += $NF; seen = 1 } END { if (seen) printf "%d\n", n; else if (NR > 0) print 0 }'
}

# rl_limit_check : mode ratelimit, once before the measurements, not measured: a short-lived
# gatehouse whose route /limited allows 2/min with burst 1 (2 requests at once, then one every
# 30 s; / stays unlimited, for the readiness probe). Three quick requests to /limited must get
# 200, 200 and 429 with Retry-After. Sets RL_CHECK_RESULT; on failure RL_CHECK_REASON.
rl_limit_check() {
    local dir="$WORK/ratelimit/check" url="http://127.0.0.1:$GATEHOUSE_PORT/limited" pid i hdrs
    local codes=() ra="" lim1="" rem=""
    mkdir -p "$dir"
    cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$GATEHOUSE_PORT"
workers: 1
access_log: off
upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend
  - match: { path_prefix: "/limited" }
    upstream: backend
    rate_limit: { $RL_CHECK_POLICY }
EOF
    start_bg "gatehouse[ratelimit:check]" "$PROXY_CPU" "$dir/gatehouse.log" "$GATEHOUSE" run --config "$dir/gatehouse.yaml"
    pid=$LAST_PID
    RL_CHECK_REASON=""
    if ! wait_ready "gatehouse[ratelimit:check]" "$pid" "$GATEHOUSE_PORT" "$dir/gatehouse.log"; then
        RL_CHECK_REASON="failed to start: $WAIT_REASON"
        stop_pid "$pid"
        return 1
    fi
    record curl -s -D - -o /dev/null "$url"
    record_text "(the same 3 times in a row)"
    for i in 1 2 3; do
        hdrs="$(curl -s -D - -o /dev/null --max-time 5 "$url" || true)"
        codes+=("$(status_of <<<"$hdrs")")
        case "$i" in
            1) lim1="$(hdr_value ratelimit-limit <<<"$hdrs")" ;;
            3)
                ra="$(hdr_value retry-after <<<"$hdrs")"
                rem="$(hdr_value ratelimit-remaining <<<"$hdrs")"
                ;;
        esac
    done
    stop_pid "$pid"
    RL_CHECK_RESULT="${codes[0]:-none}, ${codes[1]:-none}, ${codes[2]:-none}; the 3rd had Retry-After: ${ra:-none}"
    RL_CHECK_RESULT+=" and RateLimit-Remaining: ${rem:-none}, the 1st had RateLimit-Limit: ${lim1:-none}"
    if [[ "${codes[*]}" != "200 200 429" ]]; then
        RL_CHECK_REASON="3 requests got ${codes[*]} (expected 200 200 429)"
    elif ! [[ "$ra" =~ ^[1-9][0-9]*$ ]]; then
        RL_CHECK_REASON="the 429 has no valid Retry-After ('$ra')"
    elif [[ "$lim1" != 2 ]]; then
        RL_CHECK_REASON="RateLimit-Limit on the 1st answer: '$lim1' (expected 2)"
    fi
    [[ -z "$RL_CHECK_REASON" ]]
}

# plain_check MODE NAME PORT : modes body1k and body64k: GET /1k (/64k) through the proxy must
# answer 200 with exactly the backend's file (size and bytes); newconn: GET / with
# `Connection: close` must answer 200 with the backend's body and `Connection: close` (the proxy
# closes after answering; the PassiveOpens count under load checks that it really does). On
# failure CHECK_REASON says why.
plain_check() {
    local mode="$1" name="$2" url="http://127.0.0.1:$3" f code size hdrs body conn
    CHECK_REASON=""
    case "$mode" in
        body1k | body64k)
            f="$PROXY_DIR/check-$mode.bin"
            url+="$(body_path "$mode")"
            record curl -s -o "$f" -w '%{http_code} %{size_download}' "$url"
            read -r code size < <(curl -s -o "$f" -w '%{http_code} %{size_download}\n' --max-time 5 "$url" || true)
            if [[ "$code" != 200 || "$size" != "$(body_size "$mode")" ]]; then
                CHECK_REASON="GET $(body_path "$mode"): HTTP ${code:-none}, ${size:-?} bytes (expected 200 and $(body_size "$mode") bytes)"
                return 1
            fi
            if ! cmp -s "$f" "$(body_file "$mode")"; then
                CHECK_REASON="GET $(body_path "$mode"): $size bytes, but not the backend's ($(cmp "$f" "$(body_file "$mode")" 2>&1 | head -n 1))"
                return 1
            fi
            log "$name: GET $(body_path "$mode") answered 200 with the backend's $size bytes"
            rm -f "$f"
            ;;
        newconn)
            url+="/"
            record curl -s -D - -o "$PROXY_DIR/check-body.txt" -H "Connection: close" "$url"
            hdrs="$(curl -s -D - -o "$PROXY_DIR/check-body.txt" -H "Connection: close" --max-time 5 "$url" || true)"
            code="$(status_of <<<"$hdrs")"
            body="$(cat "$PROXY_DIR/check-body.txt" 2>/dev/null || true)"
            conn="$(hdr_value connection <<<"$hdrs")"
            if [[ "$code" != 200 || "$body" != "$EXPECTED_BODY" ]]; then
                CHECK_REASON="HTTP ${code:-none}, body '$body' (expected 200, '$EXPECTED_BODY')"
                return 1
            fi
            if [[ "${conn,,}" != *close* ]]; then
                CHECK_REASON="the answer to a request with Connection: close carries Connection: '${conn}' (expected close)"
                return 1
            fi
            if ((ROUND == 1)); then NEWCONN_CHECK[$name]="$conn"; fi
            ;;
    esac
}

# passive_opens : TCP connections accepted on this host (network namespace) so far, from
# /proc/net/snmp (Tcp: PassiveOpens)
passive_opens() {
    awk '/^Tcp:/ { if (!h) { for (i = 2; i <= NF; i++) if ($i == "PassiveOpens") c = i; h = 1 } else if (c) print $c }' \
        /proc/net/snmp 2>/dev/null || true
}
# wrk_bytes OUTFILE : the bytes wrk read ("… requests in 3.01s, 8.71MB read"; binary units)
wrk_bytes() {
    awk '/ requests in / && / read$/ {
        v = $(NF - 1); n = v; sub(/[A-Z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "B") ? 1 : (u == "KB") ? 1024 : (u == "MB") ? 1048576 : (u == "GB") ? 1073741824 : (u == "TB") ? 1099511627776 : -1
        if (f > 0 && n != "") printf "%.0f\n", n * f
        exit }' "$1"
}
# line_count FILE : lines in FILE (0 when it does not exist)
line_count() {
    if [[ -f "$1" ]]; then wc -l <"$1"; else echo 0; fi
}

# start_full VARIANT : mode full: writes the config of VARIANT and starts gatehouse with it,
# pinned to PROXY_CPU; sets PROXY_PID PROXY_PORT PROXY_LOG PROXY_DIR and the credentials
# FULL_HDR (a valid HS256 token) and FULL_BAD (its signature over other claims). none is the
# config of mode http (access_log off, no admin listener); full is the same route with the JSON
# access log written to a file, the admin listener (metrics), JWT auth (HS256, the secret from
# the environment) and mode ratelimit's memory rate limit (never reached).
start_full() {
    local v="$1" dir="$WORK/full/$1" access="access_log: off" admin="" policies="" token bad
    PROXY_DIR="$dir"
    PROXY_PORT=$GATEHOUSE_PORT
    PROXY_LOG="$dir/gatehouse.log"
    mkdir -p "$dir"
    FULL_HDR=()
    FULL_BAD=()
    if [[ "$v" == log || "$v" == full ]]; then
        rm -f "$dir/access.log"
        access="access_log: { format: json, path: \"$dir/access.log\" }"
    fi
    if [[ "$v" == full ]]; then
        admin="admin: { addr: \"127.0.0.1:$ADMIN_PORT\" }"$'\n'
    fi
    if [[ "$v" == jwt || "$v" == full ]]; then
        policies+=$'\n'"    auth: { methods: [jwt], jwt: { secret: \"\${$FULL_SECRET_ENV}\", algorithms: [HS256] } }"
        token="$(mint_hs256)" || die "could not sign the HS256 JWT"
        FULL_HDR=("Authorization: Bearer $token")
        FULL_JWT_LEN=${#token}
        # the same signature over other claims (sub "intruder"): must fail verification
        bad="$(jwt_payload "$((EPOCHSECONDS + 3600))" intruder | b64url)"
        FULL_BAD=("Authorization: Bearer ${token%%.*}.$bad.${token##*.}")
    fi
    if [[ "$v" == limit || "$v" == full ]]; then
        policies+=$'\n'"    rate_limit: { key: client_ip, $RL_POLICY }"
    fi
    cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$PROXY_PORT"
workers: 1
$access
${admin}upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend$policies
EOF
    start_bg "gatehouse[full:$v]" "$PROXY_CPU" "$PROXY_LOG" "$GATEHOUSE" run --config "$dir/gatehouse.yaml"
    PROXY_PID=$LAST_PID
}

# full_check VARIANT PORT : with its credential (FULL_HDR; none: no header) the variant must
# answer 200 with the backend's body; none without RateLimit-Limit, full with RateLimit-Limit:
# RL_LIMIT_N (the request was counted). full must also answer 401 without a token and 401 to a
# forged one, write JSON access-log lines to its file (a 200 and a 401 among them, within 2 s)
# and serve /metrics on its admin listener. On failure CHECK_REASON says why.
full_check() {
    local v="$1" url="http://127.0.0.1:$2/" hdrs code body lim h i m log_statuses="" want
    local has_log=0 has_jwt=0 has_limit=0 did=""
    [[ "$v" == log || "$v" == full ]] && has_log=1
    [[ "$v" == jwt || "$v" == full ]] && has_jwt=1
    [[ "$v" == limit || "$v" == full ]] && has_limit=1
    local cmd=(curl -s -D - -o "$PROXY_DIR/check-body.txt")
    for h in "${FULL_HDR[@]}"; do cmd+=(-H "$h"); done
    CHECK_REASON=""
    record "${cmd[@]}" "$url"
    hdrs="$("${cmd[@]}" --max-time 5 "$url" || true)"
    code="$(status_of <<<"$hdrs")"
    body="$(cat "$PROXY_DIR/check-body.txt" 2>/dev/null || true)"
    lim="$(hdr_value ratelimit-limit <<<"$hdrs")"
    if [[ "$code" != 200 || "$body" != "$EXPECTED_BODY" ]]; then
        CHECK_REASON="$( ((has_jwt)) && echo "with the token" || echo "without a credential"): HTTP ${code:-none}, body '$body' (expected 200, '$EXPECTED_BODY')"
        return 1
    fi
    did="200 $( ((has_jwt)) && echo "with the token" || echo "without a credential")"
    if ((has_limit)); then
        if [[ "$lim" != "$RL_LIMIT_N" ]]; then
            CHECK_REASON="RateLimit-Limit: '${lim}' (expected $RL_LIMIT_N: the request was not counted)"
            return 1
        fi
        did+=" (RateLimit-Limit: $RL_LIMIT_N)"
    elif [[ -n "$lim" ]]; then
        CHECK_REASON="RateLimit-Limit: $lim on a route without a rate limit"
        return 1
    else
        did+=", no RateLimit-Limit"
    fi
    if ((has_jwt)); then
        record curl -s -o /dev/null -w '%{http_code}' "$url"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
        if [[ "$code" != 401 ]]; then
            CHECK_REASON="without a token: HTTP $code (expected 401)"
            return 1
        fi
        record curl -s -o /dev/null -w '%{http_code}' -H "${FULL_BAD[0]}" "$url"
        code="$(curl -s -o /dev/null -w '%{http_code}' -H "${FULL_BAD[0]}" --max-time 5 "$url" || true)"
        if [[ "$code" != 401 ]]; then
            CHECK_REASON="with a forged token (the signature over other claims): HTTP $code (expected 401)"
            return 1
        fi
        did+=", 401 without a token, 401 with a forged one"
    fi
    if ((has_log)); then
        want=" 200 "
        # The log writer gathers lines for up to 10 ms; wait for the check's lines, up to 2 s.
        for ((i = 0; i < 20; i++)); do
            log_statuses="$(python3 -c '
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
    print(" ".join(str(json.loads(l)["status"]) for l in lines))
except Exception as e:
    print("unreadable:", e)' "$PROXY_DIR/access.log" 2>/dev/null || true)"
            if [[ " $log_statuses " == *"$want"* && (has_jwt -eq 0 || " $log_statuses " == *" 401 "*) ]]; then break; fi
            sleep 0.1
        done
        if [[ " $log_statuses " != *"$want"* || (has_jwt -eq 1 && " $log_statuses " != *" 401 "*) ]]; then
            CHECK_REASON="the access log $PROXY_DIR/access.log lacks the check's JSON lines (log_statuses: '${log_statuses}')"
            return 1
        fi
        did+="; access log: JSON lines with statuses $log_statuses"
    fi
    if [[ "$v" == full ]]; then
        record curl -s "http://127.0.0.1:$ADMIN_PORT/metrics"
        # (into a variable first: grep -q would stop reading early, and curl's SIGPIPE would fail
        # the pipeline under pipefail)
        m="$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" || true)"
        if ! grep -q '^gatehouse_http_requests_total{' <<<"$m"; then
            CHECK_REASON="no gatehouse_http_requests_total in /metrics on the admin listener 127.0.0.1:$ADMIN_PORT"
            return 1
        fi
        did+="; /metrics answered"
    fi
    if ((ROUND == 1)); then FULL_CHECK[$v]="$did"; fi
}

# full_after COUNT LINES0 : mode full, variant full, after the measured run: the access log must
# have a line for each of the COUNT requests wrk completed (it had LINES0 before the run; the
# writer is given up to 3 s to catch up), and /metrics, scraped once now, must count at least
# COUNT answered 2xx requests, JWT successes and rate-limit passes, and no request limited.
# Keeps the first lines of the log as a sample and empties the log (it grows by about 250 bytes
# per request). On failure CHECK_REASON says why.
full_after() {
    local n="$1" l0="${2:-0}" l1 prev=-1 i m req auth allowed limited sfx=""
    CHECK_REASON=""
    [[ "$n" =~ ^[0-9]+$ ]] || { CHECK_REASON="no request count from wrk"; return 1; }
    l1="$(line_count "$PROXY_DIR/access.log")"
    for ((i = 0; i < 30 && l1 != prev; i++)); do
        prev=$l1
        sleep 0.1
        l1="$(line_count "$PROXY_DIR/access.log")"
    done
    record curl -s "http://127.0.0.1:$ADMIN_PORT/metrics"
    m="$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" || true)"
    read -r req auth allowed limited < <(awk '
        /^gatehouse_http_requests_total\{/ && /status_class="2xx"/ { req += $NF }
        /^gatehouse_auth_total\{/ && /method="jwt"/ && /result="success"/ { auth += $NF }
        /^gatehouse_rate_limit_total\{/ && /result="allowed"/ { allowed += $NF }
        /^gatehouse_rate_limit_total\{/ && /result="limited"/ { limited += $NF }
        END { printf "%d %d %d %d\n", req, auth, allowed, limited }' <<<"$m")
    log "gatehouse[full:full]: access log +$((l1 - l0)) lines, /metrics: $req 2xx answers, $auth JWT successes, $allowed rate-limit passes, $limited limited, for $n requests measured"
    if ((ROUNDS > 1)); then sfx="-r$ROUND"; fi
    head -n 3 "$PROXY_DIR/access.log" >"$PROXY_DIR/access-sample$sfx.txt" 2>/dev/null || true
    if ((ROUND == 1)); then
        FULL_LOG_SAMPLE="$(grep -m1 '"status":200' "$PROXY_DIR/access.log" 2>/dev/null || true)"
        FULL_AFTER="the access log got $((l1 - l0)) lines during the run; /metrics after it: $req 2xx answers, $auth JWT successes, $allowed rate-limit passes, $limited limited (counted from the start: checks and warm-up included), for $n requests measured"
    fi
    : >"$PROXY_DIR/access.log"
    if ((l1 - l0 < n)); then
        CHECK_REASON="the access log got $((l1 - l0)) lines for $n requests (lines dropped or not written)"
    elif [[ -z "$m" ]]; then
        CHECK_REASON="could not scrape /metrics from 127.0.0.1:$ADMIN_PORT"
    elif ((req < n || auth < n || allowed < n)); then
        CHECK_REASON="/metrics counts $req 2xx answers, $auth JWT successes and $allowed rate-limit passes for $n requests (expected at least $n each)"
    elif ((limited > 0)); then
        CHECK_REASON="/metrics counts $limited requests limited (429)"
    fi
    [[ -z "$CHECK_REASON" ]]
}

# measure_idle NAME : mode idle, one round for one proxy: start it (config with room for
# IDLE_CONNS connections), check the body (that request is the warm-up), read its memory, let
# the idle client open IDLE_CONNS keep-alive connections that each get one answer and then stay
# idle, wait IDLE_SETTLE s, count the connections established on the proxy's port and read its
# memory again, then stop the client and the proxy. Appends this round's figures ("-" if there
# is none) to the MEM_*_R lists, keyed "idle:NAME".
measure_idle() {
    local name="$1" key="idle:$1" sfx="" url body out cpid line ok bad secs why i held="-" held_c=""
    local rss0="" pss0="" rss1="" pss1="" kpc="-" kpcp="-" rnote="" closed r0="-" r1="-" q0="-" q1="-" r2="-"
    if ((ROUNDS > 1)); then
        sfx="-r$ROUND"
        log "---- $name [idle] (round $ROUND/$ROUNDS) ----"
    else
        log "---- $name [idle] ----"
    fi
    start_proxy "$name" idle
    if ! wait_ready "$name" "$PROXY_PID" "$PROXY_PORT" "$PROXY_LOG"; then
        add_note "$key" "failed to start: $WAIT_REASON, skipped (its log tail is on stderr)"
        FAILED=1
        stop_pid "$PROXY_PID"
    else
        url="http://127.0.0.1:$PROXY_PORT/"
        record curl -s "$url"
        body="$(curl -s --max-time 5 "$url" || true)"
        if [[ "$body" != "$EXPECTED_BODY" ]]; then
            log "$name returned body '$body', expected '$EXPECTED_BODY'"
            add_note "$key" "wrong response body, skipped"
            FAILED=1
            stop_pid "$PROXY_PID"
        else
            sleep 1
            read -r rss0 pss0 < <(mem_kib "$PROXY_PID")
            out="$PROXY_DIR/client$sfx.txt"
            log "$name ok on 127.0.0.1:$PROXY_PORT (RSS $rss0 KiB, PSS $pss0 KiB); opening $IDLE_CONNS idle keep-alive connections"
            start_bg idle-client "$LOAD_CPU" "$out" python3 "$IDLE_CLIENT" "$PROXY_PORT" "$IDLE_CONNS" "$IDLE_TIMEOUT" "$EXPECTED_BODY"$'\n'
            cpid=$LAST_PID
            line=""
            for ((i = 0; i < (IDLE_TIMEOUT + 10) * 10; i++)); do
                line="$(grep -m1 '^ready ' "$out" 2>/dev/null || true)"
                [[ -z "$line" ]] || break
                kill -0 "$cpid" 2>/dev/null || break
                sleep 0.1
            done
            read -r _ ok bad secs why <<<"$line" || true
            if [[ "${ok:-}" != "$IDLE_CONNS" ]]; then
                rnote="the client got an answer on ${ok:-0} of $IDLE_CONNS connections (${why:-client output: $(tail -n 3 "$out" 2>/dev/null | paste -sd' ' -)})"
                log "$name: $rnote"
                FAILED=1
            else
                log "idle client: $IDLE_CONNS connections answered and idle after ${secs} s; waiting ${IDLE_SETTLE} s"
                sleep "$IDLE_SETTLE"
                record ss -Htn state established "( sport = :$PROXY_PORT )"
                held="$(ss -Htn state established "( sport = :$PROXY_PORT )" 2>/dev/null | wc -l)"
                held_c="$(ss -Htn state established "( dport = :$PROXY_PORT )" 2>/dev/null | wc -l)"
                read -r rss1 pss1 < <(mem_kib "$PROXY_PID")
                log "$name: $held connections established on its port ($held_c on the client's side); RSS $rss1 KiB, PSS $pss1 KiB"
                if ((held < IDLE_CONNS)); then
                    rnote="only $held of $IDLE_CONNS client connections were established on the proxy's side after ${IDLE_SETTLE} s idle ($held_c on the client's)"
                    FAILED=1
                elif ! [[ "$rss0" =~ ^[0-9]+$ && "$rss1" =~ ^[0-9]+$ ]]; then
                    rnote="could not read the proxy's memory from /proc"
                    FAILED=1
                else
                    r0=$rss0
                    r1=$rss1
                    kpc="$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')"
                    if [[ "$pss0" =~ ^[0-9]+$ && "$pss1" =~ ^[0-9]+$ ]]; then
                        q0=$pss0
                        q1=$pss1
                        kpcp="$(awk -v a="$pss0" -v b="$pss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')"
                    fi
                    log "$name: $kpc KiB RSS ($kpcp KiB PSS) per idle connection"
                fi
            fi
            stop_pid "$cpid"
            closed="$(awk '/^closed_by_server / {print $2}' "$out" 2>/dev/null || true)"
            if [[ "$ok" == "$IDLE_CONNS" && "${closed:-0}" != 0 ]]; then
                rnote="${rnote:+$rnote; }the proxy closed $closed of the idle connections before the client did"
            fi
            # What stays after the connections are gone: memory the proxy keeps (its allocator's
            # free lists, caches) rather than memory held per connection.
            if [[ "$kpc" != - ]]; then
                sleep 1
                read -r r2 _ < <(mem_kib "$PROXY_PID")
                log "$name: RSS $r2 KiB 1 s after the client closed its connections"
            fi
            if ! kill -0 "$PROXY_PID" 2>/dev/null; then
                rnote="${rnote:+$rnote; }proxy died during the run"
                FAILED=1
                kpc="-" kpcp="-" held="-" r0="-" r1="-" q0="-" q1="-" r2="-"
            fi
            if [[ -n "$rnote" ]]; then add_note "$key" "$rnote"; fi
            stop_pid "$PROXY_PID"
        fi
    fi
    if [[ "$kpc" == - ]]; then held="-"; fi
    MEM_RSS0_R[$key]="${MEM_RSS0_R[$key]:+${MEM_RSS0_R[$key]} }$r0"
    MEM_RSS1_R[$key]="${MEM_RSS1_R[$key]:+${MEM_RSS1_R[$key]} }$r1"
    MEM_RSS2_R[$key]="${MEM_RSS2_R[$key]:+${MEM_RSS2_R[$key]} }$r2"
    MEM_PSS0_R[$key]="${MEM_PSS0_R[$key]:+${MEM_PSS0_R[$key]} }$q0"
    MEM_PSS1_R[$key]="${MEM_PSS1_R[$key]:+${MEM_PSS1_R[$key]} }$q1"
    MEM_KPC_R[$key]="${MEM_KPC_R[$key]:+${MEM_KPC_R[$key]} }$kpc"
    MEM_KPCP_R[$key]="${MEM_KPCP_R[$key]:+${MEM_KPCP_R[$key]} }$kpcp"
    MEM_HELD_R[$key]="${MEM_HELD_R[$key]:+${MEM_HELD_R[$key]} }$held"
}

# run_wrk OUTFILE DURATION PORT [SCHEME [HEADER...]] : wrk against SCHEME://127.0.0.1:PORT/
# (http by default; the path is WRK_PATH, / unless set), sending each HEADER ("Name: value")
# with every request
run_wrk() {
    local out="$1" dur="$2" port="$3" scheme="${4:-http}" h
    local cmd=(taskset -c "$LOAD_CPU" wrk "-t$WRK_THREADS" "-c$CONNECTIONS" "-d$dur" --latency)
    for h in "${@:5}"; do cmd+=(-H "$h"); done
    cmd+=("$scheme://127.0.0.1:$port${WRK_PATH:-/}")
    record "${cmd[@]}"
    "${cmd[@]}" >"$out" 2>&1
}

# run_wrk_script OUTFILE DURATION PORT SCRIPT CONNS : wrk with CONNS connections and a Lua
# script (-s) that picks the paths, against http://127.0.0.1:PORT/
run_wrk_script() {
    local cmd=(taskset -c "$LOAD_CPU" wrk "-t$WRK_THREADS" "-c$5" "-d$2" --latency -s "$4" "http://127.0.0.1:$3/")
    record "${cmd[@]}"
    "${cmd[@]}" >"$1" 2>&1
}

# run_h2load OUTFILE DURATION PORT : h2load over TLS (ALPN h2), CONNECTIONS x H2_STREAMS
run_h2load() {
    local out="$1" dur="$2" port="$3"
    local cmd=(taskset -c "$LOAD_CPU" h2load -t1 "-c$CONNECTIONS" "-m$H2_STREAMS" -D "$dur" "https://127.0.0.1:$port/")
    record "${cmd[@]}"
    "${cmd[@]}" >"$out" 2>&1
}

# run_handshakes OUTFILE DURATION PORT : HS_CLIENTS `openssl s_time -new` processes in
# parallel, all pinned to LOAD_CPU. Each loops for DURATION (whole seconds): new TCP
# connection, full handshake (never resumed: -new), no request, close. Their outputs go to
# OUTFILE.cN; OUTFILE gets one line per client and "total: CONNECTIONS RATE", RATE being the
# sum over the clients of connections / their own wall-clock time. Returns 1 if a client
# failed (s_time stops at the first connection or handshake error).
run_handshakes() {
    local out="$1" secs port="$3" i p st t0 t1 c failed=0
    secs="$(seconds "$2")"
    local cmd=(taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -new -time "$secs")
    local pids=()
    for ((i = 1; i <= HS_CLIENTS; i++)); do record "${cmd[@]}"; done
    if ((HS_CLIENTS > 1)); then record_text "(the $HS_CLIENTS openssl s_time commands above run in parallel)"; fi
    for ((i = 1; i <= HS_CLIENTS; i++)); do
        (
            t0=$EPOCHREALTIME
            st=0
            "${cmd[@]}" >"$out.c$i" 2>&1 || st=$?
            echo "$t0 $EPOCHREALTIME $st" >"$out.t$i"
        ) &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    : >"$out"
    for ((i = 1; i <= HS_CLIENTS; i++)); do
        read -r t0 t1 st <"$out.t$i" || { t0=0 t1=0 st="?"; }
        c="$(awk '/ connections in [0-9]+ real seconds/ {print $1}' "$out.c$i")"
        if [[ "$st" != 0 || -z "$c" ]] || grep -q ERROR "$out.c$i"; then
            failed=1
            tr -d '*' <"$out.c$i" | grep -v '^ *$' | tail -n 5 | sed "s/^/    client $i: /" >&2
        fi
        awk -v i="$i" -v c="${c:-?}" -v a="$t0" -v b="$t1" -v st="$st" \
            'BEGIN { printf "client %s: %s connections in %.3f s, exit %s\n", i, c, b - a, st }' >>"$out"
    done
    awk '/^client / && $3 ~ /^[0-9]+$/ && $6 > 0 { n += $3; r += $3 / $6 }
        END { printf "total: %d %.1f\n", n, r }' "$out" >>"$out.sum"
    cat "$out.sum" >>"$out"
    rm -f "$out.sum"
    return "$failed"
}

# median VALUE... : median of the numeric arguments (others, e.g. "-" or "?", are ignored;
# negative ones count: mode idle's memory growth may be below zero); prints "" when there is
# none. An odd count gives the middle value unchanged, an even count the mean of the two
# middle ones.
median() {
    awk 'BEGIN {
        n = 0
        for (i = 1; i < ARGC; i++) if (ARGV[i] ~ /^-?[0-9]+([.][0-9]*)?$/) v[++n] = ARGV[i]
        for (i = 2; i <= n; i++) { # insertion sort, numerically
            x = v[i]; j = i - 1
            while (j > 0 && v[j] + 0 > x + 0) { v[j + 1] = v[j]; j-- }
            v[j + 1] = x
        }
        if (n == 0) exit
        if (n % 2) print v[(n + 1) / 2]
        else printf "%.3f\n", (v[n / 2] + v[n / 2 + 1]) / 2
    }' "$@"
}

# add_note KEY TEXT : append to the note of KEY ("MODE:NAME"; prefixed with the round when
# ROUNDS > 1)
add_note() {
    local name="$1" text="$2"
    if ((ROUNDS > 1)); then text="round $ROUND: $text"; fi
    NOTE[$name]="${NOTE[$name]:+${NOTE[$name]}; }$text"
}

# measure NAME MODE : one round for one proxy in one mode (in modes auth and ratelimit: for one
# variant of gatehouse, NAME = none, basic or jwt; none, limited or limited_by_header): start it, check it, warm up, measure, stop it. Appends
# this round's figures ("-" if there is none) to the per-round lists, keyed "MODE:NAME": RPS_R
# (req/s, or handshakes/s), P50_R/P99_R (wrk), MEAN_R (h2load's mean time per request), CPU_R
# (proxy CPU µs per request or handshake) and BUSY_R (proxy CPU use in % of its core), the
# last three only in the TLS modes, auth and ratelimit.
measure() {
    local name="$1" mode="$2" key="$2:$1" sfx="" out body errs rnote="" tls=0 tag="" acct=0
    local rps="" p50="-" p99="-" mean="-" cpu="-" busy="-" count="" ticks0 ticks1 t0 t1 proto
    local curl_cmd url label="$1" hits="-" hits0="" hits1="" rticks0=0 rticks1=0 redis_us="-" rcalls0="" rcalls1=""
    local per_call="-" acalls0="" acalls1="" k opens0="" opens1="" conns="-" nbytes logs0=""
    if [[ "$mode" == idle ]]; then
        measure_idle "$name"
        return 0
    fi
    if is_variant_mode "$mode"; then
        acct=1
        label="gatehouse[$mode:$name]"
    elif is_tls_mode "$mode"; then
        tls=1
        acct=1
        tag=" [$mode]"
    elif is_plain_mode "$mode"; then
        acct=1
        tag=" [$mode]"
    fi
    if ((ROUNDS > 1)); then
        sfx="-r$ROUND"
        log "---- $label$tag (round $ROUND/$ROUNDS) ----"
    else
        log "---- $label$tag ----"
    fi
    if is_variant_mode "$mode"; then start_variant "$mode" "$name"; else start_proxy "$name" "$mode"; fi
    if ! wait_ready "$label" "$PROXY_PID" "$PROXY_PORT" "$PROXY_LOG" "$tls"; then
        add_note "$key" "failed to start: $WAIT_REASON, skipped (its log tail is on stderr)"
        FAILED=1
        stop_pid "$PROXY_PID"
    else
        url="http://127.0.0.1:$PROXY_PORT/"
        curl_cmd=(curl -s)
        if ((tls)); then
            url="https://127.0.0.1:$PROXY_PORT/"
            curl_cmd=(curl -s --cacert "$CERT")
            case "$mode" in
                https) curl_cmd+=(--http1.1) ;; # what wrk speaks (it sends no ALPN)
                h2) curl_cmd+=(--http2) ;;
            esac
        fi
        body="$EXPECTED_BODY" # variant modes and body1k, body64k, newconn: their checks below
        if ! is_variant_mode "$mode" && ! is_plain_mode "$mode"; then
            record "${curl_cmd[@]}" "$url"
            body="$("${curl_cmd[@]}" --max-time 5 "$url" || true)"
        fi
        proto=""
        if [[ "$mode" == h2 && "$body" == "$EXPECTED_BODY" ]]; then
            proto="$("${curl_cmd[@]}" --max-time 5 -o /dev/null -w '%{http_version}' "$url" || true)"
        fi
        if is_variant_mode "$mode" && ! variant_check "$mode" "$name" "$PROXY_PORT"; then
            log "$label: $CHECK_REASON"
            add_note "$key" "check failed ($CHECK_REASON), skipped"
            FAILED=1
            stop_pid "$PROXY_PID"
        elif is_plain_mode "$mode" && ! plain_check "$mode" "$name" "$PROXY_PORT"; then
            log "$label$tag: $CHECK_REASON"
            add_note "$key" "check failed ($CHECK_REASON), skipped"
            FAILED=1
            stop_pid "$PROXY_PID"
        elif [[ "$body" != "$EXPECTED_BODY" ]]; then
            log "$name returned body '$body', expected '$EXPECTED_BODY'"
            add_note "$key" "wrong response body, skipped"
            FAILED=1
            stop_pid "$PROXY_PID"
        elif [[ "$mode" == h2 && "$proto" != 2 ]]; then
            log "$name answered over HTTP/$proto, not HTTP/2 (ALPN h2)"
            add_note "$key" "no HTTP/2 over TLS (curl --http2 got HTTP/$proto), skipped"
            FAILED=1
            stop_pid "$PROXY_PID"
        else
            if ((tls)) && [[ -z "${TLS_INFO[$name]:-}" ]]; then tls_probe "$name" "$PROXY_PORT"; fi
            log "$label ok on 127.0.0.1:$PROXY_PORT; warm-up $WARMUP"
            if ((tls)); then
                out="$PROXY_DIR/$mode$sfx.txt"
                bench_run "$mode" "$PROXY_DIR/$mode-warmup$sfx.txt" "$WARMUP" "$PROXY_PORT" || true
            elif is_variant_mode "$mode"; then
                out="$PROXY_DIR/wrk$sfx.txt"
                bench_run "$mode" "$PROXY_DIR/wrk-warmup$sfx.txt" "$WARMUP" "$PROXY_PORT" || true
            elif is_plain_mode "$mode"; then
                out="$PROXY_DIR/$mode$sfx.txt"
                bench_run "$mode" "$PROXY_DIR/$mode-warmup$sfx.txt" "$WARMUP" "$PROXY_PORT" || true
            else
                out="$WORK/$name/wrk$sfx.txt"
                run_wrk "$WORK/$name/wrk-warmup$sfx.txt" "$WARMUP" "$PROXY_PORT" || true
            fi
            log "$label: measuring $DURATION, $(load_desc "$mode")"
            ticks0=0
            if ((acct)); then ticks0="$(cpu_ticks "$PROXY_PID")"; fi
            if [[ "$mode" == cache ]]; then hits0="$(cache_hits)"; fi
            if [[ "$mode" == aggregate ]]; then acalls0="$(agg_call_count)"; fi
            if [[ "$mode:$name" == full:full ]]; then logs0="$(line_count "$PROXY_DIR/access.log")"; fi
            if uses_redis "$mode" "$name"; then
                rticks0="$(cpu_ticks "$REDIS_PID")"
                rcalls0="$(redis_calls "$mode")"
            fi
            if [[ "$mode" == newconn ]]; then opens0="$(passive_opens)"; fi
            t0=$EPOCHREALTIME
            if ! bench_run "$mode" "$out" "$DURATION" "$PROXY_PORT"; then
                show_output "$mode" "$out"
                add_note "$key" "$(tool_of "$mode") failed"
                FAILED=1
                stop_pid "$PROXY_PID"
            else
                t1=$EPOCHREALTIME
                if [[ "$mode" == newconn ]]; then opens1="$(passive_opens)"; fi
                ticks1=0
                if ((acct)); then ticks1="$(cpu_ticks "$PROXY_PID")"; fi
                if uses_redis "$mode" "$name"; then
                    rticks1="$(cpu_ticks "$REDIS_PID")"
                    rcalls1="$(redis_calls "$mode")"
                fi
                if [[ "$mode" == cache ]]; then hits1="$(cache_hits)"; fi
                if [[ "$mode" == aggregate ]]; then acalls1="$(agg_call_count)"; fi
                show_output "$mode" "$out"
                if ! kill -0 "$PROXY_PID" 2>/dev/null; then
                    rnote="proxy died during the run"
                    FAILED=1
                fi
                case "$mode" in
                    http | https | body1k | body64k | newconn | auth | ratelimit | cache | aggregate | full)
                        rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
                        p50="$(ms "$(awk '$1 == "50%" {print $2}' "$out")")"
                        p99="$(ms "$(awk '$1 == "99%" {print $2}' "$out")")"
                        count="$(awk '/ requests in / {print $1; exit}' "$out")"
                        errs="$(grep -E '^ *(Socket errors|Non-2xx or 3xx responses):' "$out" | sed 's/^ *//' | paste -sd';' - || true)"
                        ;;
                    h2)
                        rps="$(awk '/^finished in/ {print $4; exit}' "$out")"
                        mean="$(ms "$(awk '/^time for request:/ {print $6; exit}' "$out")")"
                        count="$(awk '/^requests:/ {print $8; exit}' "$out")"
                        errs="$(awk '/^requests:/ && ($10 + $12 + $14) > 0 { printf "%s failed, %s errored, %s timeout", $10, $12, $14 }
                            /^status codes:/ && ($5 + $7 + $9) > 0 { printf "%s%s 3xx, %s 4xx, %s 5xx", (x++ ? "; " : ""), $5, $7, $9 }' "$out")"
                        if [[ -z "${H2_INFO[$name]:-}" ]]; then
                            H2_INFO[$name]="$(awk -F': *' '/^Cipher:/ { c = $2 } /^Server Temp Key:/ { k = $2 }
                                /^Application protocol:/ { a = $2 }
                                END { printf "%s, key exchange %s, ALPN %s", c ? c : "?", k ? k : "?", a ? a : "?" }' "$out")"
                        fi
                        if ! grep -q '^Application protocol: h2$' "$out"; then
                            rnote="h2load did not negotiate h2 ($(grep '^Application protocol:' "$out" || echo 'no ALPN line'))"
                            FAILED=1
                            rps=""
                        fi
                        ;;
                    handshake)
                        rps="$(awk '/^total:/ {print $3}' "$out")"
                        count="$(awk '/^total:/ {print $2}' "$out")"
                        errs=""
                        ;;
                esac
                if [[ -n "$errs" ]]; then
                    rnote="${rnote:+$rnote; }$(tool_of "$mode") reported: $errs"
                fi
                # A 401 (429) is cheaper than a verified (counted and forwarded) request: a run
                # with any is no measurement.
                if is_variant_mode "$mode" && [[ "$errs" == *Non-2xx* ]]; then
                    case "$mode" in
                        auth) rnote+=" (figure discarded: every request must pass auth)" ;;
                        ratelimit) rnote+=" (figure discarded: every request must pass the rate limit)" ;;
                        cache | aggregate) rnote+=" (figure discarded: every request must be answered 200)" ;;
                        full) rnote+=" (figure discarded: every request must pass auth and the rate limit)" ;;
                    esac
                    rps=""
                fi
                # Modes body1k, body64k: wrk must have read at least the body for every request
                # (it checks neither size nor content; the check before did).
                if [[ "$mode" == body1k || "$mode" == body64k ]] && [[ -n "$rps" && "$count" =~ ^[1-9][0-9]*$ ]]; then
                    nbytes="$(wrk_bytes "$out")"
                    log "$label$tag: wrk read $(awk -v b="$nbytes" -v n="$count" 'BEGIN { printf "%.0f", b / n }') bytes per request (body $(body_size "$mode"))"
                    if ! awk -v b="$nbytes" -v n="$count" -v s="$(body_size "$mode")" 'BEGIN { exit !(b ~ /^[0-9.]+$/ && b / n >= s) }'; then
                        rnote="${rnote:+$rnote; }wrk read ${nbytes:-?} bytes for $count requests, less than the $(body_size "$mode")-byte body each (figure discarded)"
                        rps=""
                    fi
                fi
                # Mode newconn: every request must have come on its own connection: the TCP
                # connections accepted on this host during the run (PassiveOpens: the proxy's
                # from wrk, plus the backend's from the proxy) must be at least wrk's requests.
                # About 1.00 per request: upstream connections were reused; about 2: they were not.
                if [[ "$mode" == newconn && -n "$rps" ]]; then
                    if [[ "$opens0" =~ ^[0-9]+$ && "$opens1" =~ ^[0-9]+$ && "$count" =~ ^[1-9][0-9]*$ ]]; then
                        conns="$(awk -v d="$((opens1 - opens0))" -v n="$count" 'BEGIN { printf "%.3f", d / n }')"
                        log "$label$tag: $((opens1 - opens0)) TCP connections accepted for $count requests ($conns per request)"
                        if ((opens1 - opens0 < count)); then
                            rnote="${rnote:+$rnote; }only $((opens1 - opens0)) TCP connections accepted for $count requests: client connections were kept open (figure discarded)"
                            rps=""
                        fi
                    else
                        rnote="${rnote:+$rnote; }could not read PassiveOpens from /proc/net/snmp (figure discarded)"
                        rps=""
                    fi
                fi
                # Mode full: every measured request must have written its access-log line (none
                # dropped) and gone through auth and the rate limit (the counters, scraped once
                # from the admin listener after the run).
                if [[ "$mode:$name" == full:full && -n "$rps" ]]; then
                    full_after "$count" "$logs0" || { rnote="${rnote:+$rnote; }$CHECK_REASON (figure discarded)"; rps=""; }
                fi
                # A redis variant whose calls failed or timed out was (partly) served by the
                # fallback (local limits, cache bypassed): say so under the table.
                if uses_redis "$mode" "$name" && grep -q "Redis store unavailable" "$PROXY_LOG" 2>/dev/null; then
                    rnote="${rnote:+$rnote; }gatehouse reported the Redis store unavailable during the run ($(grep -c "Redis store unavailable" "$PROXY_LOG") log lines; requests fell back to local limits or bypassed the cache)"
                fi
                # Share of the measured requests answered from the cache (admin counters
                # around the run). Anything else went to the backend.
                if [[ "$mode" == cache && "$name" != none ]]; then
                    if [[ "$hits0" =~ ^[0-9]+$ && "$hits1" =~ ^[0-9]+$ && "$count" =~ ^[0-9]+$ ]] && ((count > 0)); then
                        hits="$(awk -v h="$((hits1 - hits0))" -v n="$count" 'BEGIN { printf "%.1f", 100 * h / n }')"
                        log "$label: $((hits1 - hits0)) cache hits for $count requests ($hits%)"
                        if awk -v x="$hits" 'BEGIN { exit !(x < 99) }'; then
                            rnote="${rnote:+$rnote; }only $hits% of the measured requests were cache hits"
                        fi
                    else
                        rnote="${rnote:+$rnote; }could not read the cache counters from the admin listener"
                    fi
                fi
                # Mode aggregate: the fan-out must have made its 3 calls per request (the admin
                # counter of successful calls, around the run); the others none.
                if [[ "$mode" == aggregate && -n "$rps" ]]; then
                    if [[ "$acalls0" =~ ^[0-9]+$ && "$acalls1" =~ ^[0-9]+$ && "$count" =~ ^[0-9]+$ ]] && ((count > 0)); then
                        log "$label: $((acalls1 - acalls0)) successful aggregate calls for $count requests"
                        if [[ "$name" == fanout* ]] && ((100 * (acalls1 - acalls0) < 99 * 3 * count)); then
                            rnote="${rnote:+$rnote; }only $((acalls1 - acalls0)) successful aggregate calls for $count requests (expected 3 each)"
                        elif [[ "$name" != fanout* ]] && ((acalls1 != acalls0)); then
                            rnote="${rnote:+$rnote; }$((acalls1 - acalls0)) aggregate calls during a run without /agg"
                        fi
                    else
                        rnote="${rnote:+$rnote; }could not read the aggregate call counters from the admin listener"
                    fi
                fi
                # sequential: one logical request is 3 calls made one after the other on a
                # connection. wrk counted and timed the calls: keep those (per_call), and report
                # a third of its rate and 3 times its p50 and p99 (see the report).
                k="$(agg_calls "$name")"
                if [[ "$mode" == aggregate && "$k" != 1 && -n "$rps" ]]; then
                    per_call="$p50/$p99"
                    rps="$(awk -v r="$rps" -v k="$k" 'BEGIN { printf "%.2f", r / k }')"
                    p50="$(awk -v x="$p50" -v k="$k" 'BEGIN { if (x ~ /^[0-9.]+$/) printf "%.3f", x * k; else print "?" }')"
                    p99="$(awk -v x="$p99" -v k="$k" 'BEGIN { if (x ~ /^[0-9.]+$/) printf "%.3f", x * k; else print "?" }')"
                    if [[ "$count" =~ ^[0-9]+$ ]]; then count=$((count / k)); fi
                fi
                # Every measured request should have made its Redis call (EVALSHA or GET).
                if uses_redis "$mode" "$name" && [[ "$count" =~ ^[0-9]+$ ]] && ((count > 0)); then
                    if [[ "$rcalls0" =~ ^[0-9]+$ && "$rcalls1" =~ ^[0-9]+$ ]]; then
                        log "$label: redis-server served $((rcalls1 - rcalls0)) $([[ "$mode" == ratelimit ]] && echo EVAL/EVALSHA || echo GET) calls for $count requests"
                        if ((100 * (rcalls1 - rcalls0) < 99 * count)); then
                            rnote="${rnote:+$rnote; }redis-server served only $((rcalls1 - rcalls0)) calls for $count requests"
                        fi
                    else
                        rnote="${rnote:+$rnote; }could not read redis-server's command counters"
                    fi
                fi
                if uses_redis "$mode" "$name" && [[ "$count" =~ ^[0-9]+$ ]] && ((count > 0)); then
                    redis_us="$(awk -v d="$((rticks1 - rticks0))" -v hz="$CLK_TCK" -v n="$count" -v a="$t0" -v b="$t1" 'BEGIN {
                        printf "%.1f", d / hz / n * 1e6 }')"
                    log "$label: redis-server CPU $redis_us µs per request ($(awk -v d="$((rticks1 - rticks0))" -v hz="$CLK_TCK" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b > a) ? 100 * d / hz / (b - a) : 0 }')% of its core)"
                fi
                if [[ -z "$rps" ]]; then
                    if [[ -z "$rnote" ]]; then rnote="could not parse $(tool_of "$mode") output"; fi
                    FAILED=1
                elif ((acct)); then
                    read -r cpu busy < <(awk -v d="$((ticks1 - ticks0))" -v hz="$CLK_TCK" -v n="$count" -v a="$t0" -v b="$t1" 'BEGIN {
                        s = d / hz
                        c = (n > 0) ? sprintf("%.1f", s / n * 1e6) : "-"
                        u = (b > a) ? sprintf("%.0f", 100 * s / (b - a)) : "-"
                        print c, u }')
                    log "$label: proxy CPU $busy% of its core, $cpu µs per $([[ "$mode" == handshake ]] && echo handshake || echo request)"
                fi
                if [[ -n "$rnote" ]]; then add_note "$key" "$rnote"; fi
                stop_pid "$PROXY_PID"
            fi
        fi
    fi
    if [[ -z "$rps" ]]; then rps="-" p50="-" p99="-" mean="-" cpu="-" busy="-" hits="-" redis_us="-" per_call="-" conns="-"; fi
    RPS_R[$key]="${RPS_R[$key]:+${RPS_R[$key]} }$rps"
    P50_R[$key]="${P50_R[$key]:+${P50_R[$key]} }$p50"
    P99_R[$key]="${P99_R[$key]:+${P99_R[$key]} }$p99"
    MEAN_R[$key]="${MEAN_R[$key]:+${MEAN_R[$key]} }$mean"
    CPU_R[$key]="${CPU_R[$key]:+${CPU_R[$key]} }$cpu"
    BUSY_R[$key]="${BUSY_R[$key]:+${BUSY_R[$key]} }$busy"
    HITS_R[$key]="${HITS_R[$key]:+${HITS_R[$key]} }$hits"
    REDIS_R[$key]="${REDIS_R[$key]:+${REDIS_R[$key]} }$redis_us"
    CALL_R[$key]="${CALL_R[$key]:+${CALL_R[$key]} }$per_call"
    CONN_R[$key]="${CONN_R[$key]:+${CONN_R[$key]} }$conns"
}

# bench_run MODE OUTFILE DURATION PORT : the load generator of MODE
bench_run() {
    case "$1" in
        http) run_wrk "$2" "$3" "$4" ;;
        https) run_wrk "$2" "$3" "$4" https ;;
        body1k | body64k) WRK_PATH="$(body_path "$1")" run_wrk "$2" "$3" "$4" ;;
        newconn) run_wrk "$2" "$3" "$4" http "Connection: close" ;;
        full) run_wrk "$2" "$3" "$4" http "${FULL_HDR[@]}" ;;
        auth) run_wrk "$2" "$3" "$4" http "${AUTH_HDR[@]}" ;;
        ratelimit) run_wrk "$2" "$3" "$4" http "${RL_HDR[@]}" ;;
        cache) run_wrk "$2" "$3" "$4" ;;
        aggregate) run_wrk_script "$2" "$3" "$4" "$AGG_SCRIPT" "$AGG_CONNS" ;;
        h2) run_h2load "$2" "$3" "$4" ;;
        handshake) run_handshakes "$2" "$3" "$4" ;;
    esac
}
tool_of() {
    case "$1" in
        http | https | body1k | body64k | newconn | auth | ratelimit | cache | aggregate | full) echo wrk ;;
        h2) echo h2load ;;
        handshake) echo "openssl s_time" ;;
    esac
}
load_desc() {
    case "$1" in
        http | https | auth | ratelimit | cache | full) echo "$CONNECTIONS connections" ;;
        body1k | body64k) echo "$CONNECTIONS connections, GET $(body_path "$1") ($(body_size "$1")-byte body)" ;;
        newconn) echo "$CONNECTIONS connections, Connection: close (a new connection per request)" ;;
        aggregate) echo "$AGG_CONNS connections" ;;
        h2) echo "$CONNECTIONS connections x $H2_STREAMS streams" ;;
        handshake) echo "$HS_CLIENTS parallel openssl s_time -new" ;;
    esac
}
# show_output MODE OUTFILE : the load generator's output on stderr (for s_time, OUTFILE is the
# summary; its raw output, one '*' per connection, stays in OUTFILE.cN)
show_output() {
    sed 's/^/    /' "$2" >&2
}

# tls_probe NAME PORT : protocol, cipher suite and key exchange the proxy negotiates with
# OpenSSL's defaults (what wrk and openssl s_time use), for the report
tls_probe() {
    local name="$1" port="$2" o
    record openssl s_client -connect "127.0.0.1:$port" -brief
    o="$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -brief </dev/null 2>&1 || true)"
    TLS_INFO[$name]="$(awk -F': *' '
        /^Protocol version:/ { p = $2 } /^Ciphersuite:/ { c = $2 } /^Server Temp Key:/ { k = $2 }
        /^Signature type:/ { s = $2 }
        END { printf "%s, %s, key exchange %s, signature %s", p ? p : "?", c ? c : "?", k ? k : "?", s ? s : "?" }' <<<"$o")"
}

declare -A RPS P50 P99 MEAN CPU BUSY HITS REDIS NOTE RPS_R P50_R P99_R MEAN_R CPU_R BUSY_R HITS_R REDIS_R CALL_R TLS_INFO H2_INFO
declare -A CONN_R MEM_RSS0_R MEM_RSS1_R MEM_RSS2_R MEM_PSS0_R MEM_PSS1_R MEM_KPC_R MEM_KPCP_R MEM_HELD_R
FAILED=0
# Proxies that cannot run at all (no gatehouse build, bad BASELINE_BIN) are noted once per mode.
RUN_LIST=()
for name in "${PROXY_LIST[@]}"; do
    reason="$(skip_reason "$name")"
    if [[ -n "$reason" ]]; then
        for mode in "${MODE_LIST[@]}"; do NOTE[$mode:$name]="$reason"; done
    else
        RUN_LIST+=("$name")
    fi
done
# Mode auth runs when gatehouse can (and its credentials were made); otherwise its variants
# carry the reason. A gatehouse that could not be built is a clean skip, as in other modes.
AUTH_RUN=0
if wants_mode auth; then
    reason="$(skip_reason gatehouse)"
    if [[ -z "$reason" && -n "$AUTH_STATUS" ]]; then
        reason="$AUTH_STATUS"
        FAILED=1
    fi
    if [[ -n "$reason" ]]; then
        for v in "${AUTH_VARIANTS[@]}"; do NOTE[auth:$v]="$reason"; done
    else
        AUTH_RUN=1
    fi
fi
# Mode ratelimit runs when gatehouse can and its limit check passes (a limiter that does not
# limit would make the figures meaningless); otherwise its variants carry the reason.
RL_RUN=0
if wants_mode ratelimit; then
    reason="$(skip_reason gatehouse)"
    if [[ -z "$reason" ]]; then
        log "---- gatehouse[ratelimit:check]: $RL_CHECK_POLICY on /limited, 3 requests (not measured) ----"
        if rl_limit_check; then
            log "ratelimit check ok: $RL_CHECK_RESULT"
        else
            reason="limit check failed ($RL_CHECK_REASON), not measured"
            log "ratelimit: $reason"
            FAILED=1
        fi
    fi
    if [[ -n "$reason" ]]; then
        for v in "${RL_VARIANTS[@]}"; do NOTE[ratelimit:$v]="$reason"; done
    else
        RL_RUN=1
    fi
fi
# Mode cache runs when gatehouse can; its checks are per measurement.
CACHE_RUN=0
if wants_mode cache; then
    reason="$(skip_reason gatehouse)"
    if [[ -n "$reason" ]]; then
        for v in "${CACHE_VARIANTS[@]}"; do NOTE[cache:$v]="$reason"; done
    else
        CACHE_RUN=1
    fi
fi
# Mode aggregate runs when gatehouse can; its checks are per measurement. Without the delaying
# backend, the *_delayed variants are not measured (a failure: they were asked for).
AGG_RUN=0
if wants_mode aggregate; then
    reason="$(skip_reason gatehouse)"
    if [[ -n "$reason" ]]; then
        for v in "${AGG_VARIANTS[@]}"; do NOTE[aggregate:$v]="$reason"; done
    else
        AGG_RUN=1
        if [[ -n "$DELAY_STATUS" ]]; then
            for v in "${AGG_VARIANTS[@]}"; do
                if [[ "$v" == *_delayed ]]; then NOTE[aggregate:$v]="$DELAY_STATUS"; fi
            done
            FAILED=1
        fi
    fi
fi
# Mode full runs when gatehouse can; its checks are per measurement.
FULL_RUN=0
if wants_mode full; then
    reason="$(skip_reason gatehouse)"
    if [[ -n "$reason" ]]; then
        for v in "${FULL_VARIANTS[@]}"; do NOTE[full:$v]="$reason"; done
    else
        FULL_RUN=1
    fi
fi
# Without a redis-server, the redis variants are not measured (a failure: they were asked for).
if [[ -n "$REDIS_STATUS" ]]; then
    for m in ratelimit cache; do
        if wants_mode "$m" && [[ -z "${NOTE[$m:redis]:-}" ]]; then
            NOTE[$m:redis]="$REDIS_STATUS"
            FAILED=1
        fi
    done
fi
# without_redis VARIANT... : the variants, less redis when there is no redis-server
without_redis() {
    local v out=()
    for v in "$@"; do
        if [[ "$v" == redis && -n "$REDIS_STATUS" ]]; then continue; fi
        out+=("$v")
    done
    echo "${out[*]}"
}
# names_of MODE : what MODE measures: the proxies, or (auth, ratelimit, cache, aggregate, full)
# the gatehouse variants
names_of() {
    if [[ "$1" == auth ]]; then
        ((AUTH_RUN)) && echo "${AUTH_VARIANTS[*]}"
    elif [[ "$1" == ratelimit ]]; then
        ((RL_RUN)) && without_redis "${RL_VARIANTS[@]}"
    elif [[ "$1" == cache ]]; then
        ((CACHE_RUN)) && without_redis "${CACHE_VARIANTS[@]}"
    elif [[ "$1" == full ]]; then
        ((FULL_RUN)) && echo "${FULL_VARIANTS[*]}"
    elif [[ "$1" == aggregate ]]; then
        if ((AGG_RUN)); then
            local v out=()
            for v in "${AGG_VARIANTS[@]}"; do
                if [[ "$v" == *_delayed && -n "$DELAY_STATUS" ]]; then continue; fi
                out+=("$v")
            done
            echo "${out[*]}"
        fi
    else
        echo "${RUN_LIST[*]}"
    fi
    return 0
}
# Rounds are interleaved: every round measures the whole list in every mode, each proxy
# freshly started (and warmed up) for each measurement; even rounds go in reverse order so
# that no proxy always runs first.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    if ((${#RUN_LIST[@]} == 0)); then break; fi
    for mode in "${MODE_LIST[@]}"; do
        read -r -a names <<<"$(names_of "$mode")"
        order=("${names[@]}")
        if ((ROUND % 2 == 0)); then
            order=()
            for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[i]}"); done
        fi
        if ((ROUNDS > 1 && ${#order[@]} > 0)); then log "==== round $ROUND/$ROUNDS, $mode: ${order[*]} ===="; fi
        for name in "${order[@]}"; do measure "$name" "$mode"; done
    done
done
# med_of LIST : median of a per-round list, "?" when no round has a figure
med_of() {
    local vals m
    read -r -a vals <<<"${1:-}"
    m="$(median "${vals[@]}")"
    echo "${m:-?}"
}
for mode in "${MODE_LIST[@]}"; do
    read -r -a names <<<"$(names_of "$mode")"
    for name in "${names[@]}"; do
        key="$mode:$name"
        read -r -a vals <<<"${RPS_R[$key]:-}"
        RPS[$key]="$(median "${vals[@]}")"
        P50[$key]="$(med_of "${P50_R[$key]:-}")"
        P99[$key]="$(med_of "${P99_R[$key]:-}")"
        MEAN[$key]="$(med_of "${MEAN_R[$key]:-}")"
        CPU[$key]="$(med_of "${CPU_R[$key]:-}")"
        BUSY[$key]="$(med_of "${BUSY_R[$key]:-}")"
        HITS[$key]="$(med_of "${HITS_R[$key]:-}")"
        REDIS[$key]="$(med_of "${REDIS_R[$key]:-}")"
    done
done

# ---------------------------------------------------------------- report
version_of() { "$@" 2>&1 | head -n 1 || true; }
GH_VERSION="n/a"
if [[ -n "$GATEHOUSE" ]]; then
    GH_VERSION="$(timeout 5 "$GATEHOUSE" --version 2>&1 | head -n 1 || true)"
    [[ -n "$GH_VERSION" ]] || GH_VERSION="(gatehouse --version printed nothing / failed)"
fi
BASE_VERSION="n/a"
if [[ -n "$BASELINE" ]]; then
    BASE_VERSION="$(timeout 5 "$BASELINE" --version 2>&1 | head -n 1 || true)"
    [[ -n "$BASE_VERSION" ]] || BASE_VERSION="(gatehouse --version printed nothing / failed)"
fi
CPU_MODEL="$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"

# per_round KEY : "51234 / 50876 / -" (one figure per round, "-" where it failed)
per_round() {
    local v out=() vals
    read -r -a vals <<<"${RPS_R[$1]:-}"
    for v in "${vals[@]}"; do
        if [[ "$v" == - ]]; then out+=("-"); else out+=("$(printf '%.0f' "$v")"); fi
    done
    if ((${#out[@]} == 0)); then echo "-"; return 0; fi
    local IFS=/
    v="${out[*]}"
    echo "${v//\// / }"
}
# ratio A B : A / B with two decimals, or n/a
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a" }'
}
# rounds_measured KEY : in how many rounds KEY has a figure
rounds_measured() {
    local v n=0 vals
    read -r -a vals <<<"${RPS_R[$1]:-}"
    for v in "${vals[@]}"; do [[ "$v" == - ]] || n=$((n + 1)); done
    echo "$n"
}
# base_line MODE UNIT [OP] : "gatehouse vs gatehouse-base: ..." under the table of MODE
base_line() {
    local mode="$1" unit="$2" op="${3:-}" g="$1:gatehouse" b="$1:gatehouse-base" n_cur n_base n_rounds
    wants gatehouse && wants gatehouse-base || return 0
    echo
    if [[ -z "${RPS[$g]:-}" || -z "${RPS[$b]:-}" ]]; then
        echo "gatehouse vs gatehouse-base: n/a (not both measured)"
        return 0
    fi
    n_cur="$(rounds_measured "$g")"
    n_base="$(rounds_measured "$b")"
    n_rounds="$n_cur"
    if ((n_cur != n_base)); then n_rounds="$n_cur and $n_base"; fi
    if [[ "$mode" == http ]]; then
        printf 'gatehouse vs gatehouse-base: %sx req/s (median of %s rounds), p99 %sx\n' \
            "$(ratio "${RPS[$g]}" "${RPS[$b]}")" "$n_rounds" "$(ratio "${P99[$g]}" "${P99[$b]}")"
    else
        printf 'gatehouse vs gatehouse-base: %sx %s (median of %s rounds), proxy CPU per %s %sx\n' \
            "$(ratio "${RPS[$g]}" "${RPS[$b]}")" "$unit" "$n_rounds" "$op" \
            "$(ratio "${CPU[$g]}" "${CPU[$b]}")"
    fi
}
# notes MODE : the notes of MODE's proxies, under its table
notes() {
    local name shown=0
    for name in "${PROXY_LIST[@]}"; do
        if [[ -n "${NOTE[$1:$name]:-}" ]]; then
            if ((shown == 0)); then echo; shown=1; fi
            echo "- $name: ${NOTE[$1:$name]}"
        fi
    done
}

report_http() {
    local name key rps nginx_ratio
    echo "## Reverse-proxy benchmark (HTTP/1.1, loopback)"
    echo
    if ((ROUNDS > 1)); then
        echo "Medians over $ROUNDS interleaved rounds; the last column lists each round."
        echo
    fi
    echo "| proxy | req/s | p50 (ms) | p99 (ms) | ratio vs nginx | req/s per round |"
    echo "|---|---:|---:|---:|---:|---|"
    for name in "${PROXY_LIST[@]}"; do
        key="http:$name"
        rps="${RPS[$key]:-}"
        if [[ -z "$rps" ]]; then
            echo "| $name | skipped | - | - | - | $(per_round "$key") |"
            continue
        fi
        nginx_ratio="n/a"
        if [[ -n "${RPS[http:nginx]:-}" ]]; then
            nginx_ratio="$(ratio "$rps" "${RPS[http:nginx]}")"
        fi
        printf '| %s | %.0f | %s | %s | %s | %s |\n' "$name" "$rps" "${P50[$key]}" "${P99[$key]}" "$nginx_ratio" "$(per_round "$key")"
    done
    base_line http "req/s"
    notes http
}

# report_tls MODE : the table of one TLS mode. Besides the measured rate it shows the proxy's
# CPU use and CPU time per request (or handshake): when the load generator, not the proxy, is
# the limit (proxy CPU well below 100%), the rates alone compare the load generators, and
# the CPU-time ratio is the one to read.
report_tls() {
    local mode="$1" title unit op lat_head name key rps lat n="nginx" r_rate r_cpu busy cpu
    case "$mode" in
        https)
            title="HTTPS keep-alive (HTTP/1.1 over TLS, loopback)"
            unit="req/s"
            op="request"
            lat_head="p50 / p99 (ms)"
            ;;
        handshake)
            title="Full TLS handshakes (a new connection each, no resumption, loopback)"
            unit="handshakes/s"
            op="handshake"
            lat_head=""
            ;;
        h2)
            title="HTTP/2 over TLS (h2load, ALPN h2, loopback)"
            unit="req/s"
            op="request"
            lat_head="mean (ms)"
            ;;
        body1k | body64k)
            title="$([[ "$mode" == body1k ]] && echo "1 KiB" || echo "64 KiB") body (HTTP/1.1 keep-alive, GET $(body_path "$mode") -> $(body_size "$mode") bytes, loopback)"
            unit="req/s"
            op="request"
            lat_head="p50 / p99 (ms)"
            ;;
        newconn)
            title="A new client connection per request (HTTP/1.1, Connection: close, loopback)"
            unit="req/s"
            op="request"
            lat_head="p50 / p99 (ms)"
            ;;
    esac
    echo "## $title"
    echo
    if ((ROUNDS > 1)); then
        echo "Medians over $ROUNDS interleaved rounds; the last column lists each round."
        echo
    fi
    local head="| proxy | $unit |" sep="|---|---:|"
    if [[ -n "$lat_head" ]]; then head+=" $lat_head |"; sep+="---:|"; fi
    head+=" proxy CPU | CPU µs per $op | ratio vs nginx | ratio vs nginx, per CPU second | $unit per round |"
    sep+="---:|---:|---:|---:|---|"
    echo "$head"
    echo "$sep"
    for name in "${PROXY_LIST[@]}"; do
        key="$mode:$name"
        rps="${RPS[$key]:-}"
        lat=""
        if [[ -z "$rps" ]]; then
            if [[ -n "$lat_head" ]]; then lat=" - |"; fi
            echo "| $name | skipped |$lat - | - | - | - | $(per_round "$key") |"
            continue
        fi
        case "$mode" in
            https | body1k | body64k | newconn) lat=" ${P50[$key]} / ${P99[$key]} |" ;;
            h2) lat=" ${MEAN[$key]} |" ;;
        esac
        r_rate="n/a"
        r_cpu="n/a"
        if [[ -n "${RPS[$mode:$n]:-}" ]]; then
            r_rate="$(ratio "$rps" "${RPS[$mode:$n]}")"
            # per CPU second: nginx's CPU per request / this proxy's = the ratio of the rates
            # each would reach with its core saturated
            r_cpu="$(ratio "${CPU[$mode:$n]}" "${CPU[$key]}")"
        fi
        busy="${BUSY[$key]}"
        [[ "$busy" == "?" ]] || busy="$(printf '%.0f%%' "$busy")"
        cpu="${CPU[$key]}"
        [[ "$cpu" == "?" ]] || cpu="$(printf '%.1f' "$cpu")"
        printf '| %s | %.0f |%s %s | %s | %s | %s | %s |\n' "$name" "$rps" "$lat" "$busy" "$cpu" \
            "$r_rate" "$r_cpu" "$(per_round "$key")"
    done
    echo
    echo "proxy CPU: its user + system time (all its processes and threads, from /proc/PID/stat)"
    echo "during the measured run, in % of its one core; CPU µs: that time divided by the ${op}s"
    echo "served. ratio vs nginx: measured rates. per CPU second: nginx's CPU µs / this proxy's, the"
    echo "ratio of what each would serve with its core saturated; read this one when proxy CPU is well"
    echo "below 100% (then the load generator was the limit and the measured rates mostly compare it)."
    case "$mode" in
        body1k | body64k) body_line "$mode" ;;
        newconn) newconn_line ;;
    esac
    base_line "$mode" "$unit" "$op"
    notes "$mode"
}

# body_line MODE : modes body1k, body64k: the body bytes each proxy passed per second (median
# req/s x body size), under the table
body_line() {
    local name out=() r
    for name in "${PROXY_LIST[@]}"; do
        r="${RPS[$1:$name]:-}"
        [[ -n "$r" ]] || continue
        out+=("$name $(awk -v r="$r" -v s="$(body_size "$1")" 'BEGIN { printf "%.0f", r * s / 1048576 }') MiB/s")
    done
    ((${#out[@]} > 0)) || return 0
    local IFS=,
    r="${out[*]}"
    echo
    echo "Body bytes passed (median req/s x $(body_size "$1") bytes): ${r//,/, }."
    echo "Checks: before measuring, each proxy's answer to \`GET $(body_path "$1")\` (curl) had to be 200 with exactly the"
    echo "backend's $(body_size "$1") bytes; under load, wrk's bytes read per request had to be at least the body's size."
}
# newconn_line : mode newconn: TCP connections accepted per request and the check's Connection
# header, per proxy, under the table
newconn_line() {
    local name out=() c
    for name in "${PROXY_LIST[@]}"; do
        [[ -n "${RPS[newconn:$name]:-}" ]] || continue
        c="$(med_of "${CONN_R[newconn:$name]:-}")"
        [[ "$c" == "?" ]] || c="$(printf '%.2f' "$c")"
        out+=("$name $c (answer: \`Connection: ${NEWCONN_CHECK[$name]:-?}\`)")
    done
    ((${#out[@]} > 0)) || return 0
    local IFS=';'
    c="${out[*]}"
    echo
    echo "TCP connections accepted per request during the run (/proc/net/snmp PassiveOpens, this host; median),"
    echo "and the check's answer to a request with \`Connection: close\` (round 1):"
    echo "${c//;/; }."
    echo "wrk sends \`Connection: close\` on every request and opens a new connection for the next one. About 1.00:"
    echo "every request came on its own client connection and the proxy reused its upstream connections; about 2:"
    echo "it opened an upstream connection per request too; below 1.00 the figure is discarded (client"
    echo "connections were kept open). Latency includes wrk's connect."
}

# per_round_ratio KEY BASE : "0.93 / 0.95 / -", KEY's figure over BASE's in each round
per_round_ratio() {
    local a b i out=() joined
    read -r -a a <<<"${RPS_R[$1]:-}"
    read -r -a b <<<"${RPS_R[$2]:-}"
    for ((i = 0; i < ${#a[@]}; i++)); do
        out+=("$(ratio "${a[i]}" "${b[i]:--}" | sed 's|^n/a$|-|')")
    done
    if ((${#out[@]} == 0)); then echo "-"; return 0; fi
    local IFS=/
    joined="${out[*]}"
    echo "${joined//\// / }"
}

# target_of MODE VARIANT : the issue's target for VARIANT's req/s as a multiple of none's
# (empty: reported, no target); mode full's is per CPU second (target_per_cpu)
target_of() {
    case "$1:$2" in
        auth:basic | auth:jwt | ratelimit:limited | ratelimit:limited_by_header) echo 0.9 ;;
        cache:memory) echo 2 ;;
        cache:redis) echo 1 ;;
        full:full) echo 0.85 ;;
    esac
}
# target_per_cpu MODE : whether MODE's target is on the ratio per CPU second (none's CPU µs per
# request / the variant's) rather than on the measured req/s
target_per_cpu() { [[ "$1" == full ]]; }

# variant_table MODE VARIANT... : modes auth, ratelimit and cache: the table of the variants,
# each against the first one (none), and the verdict on the targets (target_of). Mode cache
# adds the share of the measured requests answered from the cache.
variant_table() {
    local mode="$1" v key rps n="$1:none" r_rate r_cpu busy cpu r t tv hits_col="" hits_sep="" hits
    local common="" same=1 targeted=() untargeted=() line
    shift
    if [[ "$mode" == cache ]]; then
        hits_col=" cache hits |"
        hits_sep="---:|"
    fi
    if ((ROUNDS > 1)); then
        echo "Medians over $ROUNDS interleaved rounds; the last two columns list each round."
        echo
    fi
    echo "| variant | req/s | p50 (ms) | p99 (ms) |$hits_col proxy CPU | CPU µs per request | ratio vs none | ratio vs none, per CPU second | ratio vs none per round | req/s per round |"
    echo "|---|---:|---:|---:|$hits_sep---:|---:|---:|---:|---|---|"
    for v in "$@"; do
        key="$mode:$v"
        rps="${RPS[$key]:-}"
        hits=""
        if [[ "$mode" == cache ]]; then
            hits=" -"
            if [[ "$v" != none && -n "$rps" && "${HITS[$key]}" != "?" ]]; then hits=" $(printf '%.1f%%' "${HITS[$key]}")"; fi
            hits+=" |"
        fi
        if [[ -z "$rps" ]]; then
            echo "| $v | skipped | - | - |$([[ -n "$hits_col" ]] && echo " - |") - | - | - | - | - | $(per_round "$key") |"
            continue
        fi
        r_rate="n/a"
        r_cpu="n/a"
        if [[ -n "${RPS[$n]:-}" ]]; then
            r_rate="$(ratio "$rps" "${RPS[$n]}")"
            r_cpu="$(ratio "${CPU[$n]}" "${CPU[$key]}")"
        fi
        busy="${BUSY[$key]}"
        [[ "$busy" == "?" ]] || busy="$(printf '%.0f%%' "$busy")"
        cpu="${CPU[$key]}"
        [[ "$cpu" == "?" ]] || cpu="$(printf '%.1f' "$cpu")"
        printf '| %s | %.0f | %s | %s |%s %s | %s | %s | %s | %s | %s |\n' "$v" "$rps" "${P50[$key]}" "${P99[$key]}" \
            "$hits" "$busy" "$cpu" "$r_rate" "$r_cpu" "$(per_round_ratio "$key" "$n")" "$(per_round "$key")"
        [[ "$v" != none ]] || continue
        t="$(target_of "$mode" "$v")"
        if [[ -z "$t" ]]; then
            untargeted+=("$v $r_rate (reported, no target)")
            continue
        fi
        tv="$r_rate"
        if target_per_cpu "$mode"; then tv="$r_cpu"; fi
        r="$(awk -v x="$tv" -v t="$t" 'BEGIN { if (x == "n/a") print "n/a"; else if (x + 0 >= t + 0) print "met"; else print "not met" }')"
        targeted+=("$v $tv|$t|$r")
        if [[ -z "$common" ]]; then common="$t"; elif [[ "$common" != "$t" ]]; then same=0; fi
    done
    echo
    line=""
    if ((${#targeted[@]} > 0)); then
        if ((same)); then
            # one target for all (auth, ratelimit): "Target req/s >= 0.90x none (...): basic 0.90 (met), ..."
            for r in "${targeted[@]}"; do line+="${line:+, }${r%%|*} (${r##*|})"; done
            if target_per_cpu "$mode"; then
                line="Target req/s per CPU second >= $(printf '%.2f' "$common")x none (none's median CPU µs per request / the variant's): $line"
            else
                line="Target req/s >= $(printf '%.2f' "$common")x none (ratio of the medians): $line"
            fi
        else
            for r in "${targeted[@]}"; do
                t="${r#*|}"
                t="${t%%|*}"
                line+="${line:+, }${r%%|*} (target >= $(printf '%.2f' "$t")x: ${r##*|})"
            done
            line="Targets, req/s against none (ratio of the medians): $line"
        fi
    fi
    if ((${#untargeted[@]} > 0)); then
        t=""
        for r in "${untargeted[@]}"; do t+="${t:+, }$r"; done
        if [[ -n "$line" ]]; then line+="; $t"; else line="Req/s against none (ratio of the medians): $t"; fi
    fi
    if [[ -n "$line" ]]; then
        echo "$line."
        echo
    fi
}
# variant_notes MODE VARIANT... : the notes of the variants (and of gatehouse), under the table
variant_notes() {
    local mode="$1" v shown=0
    shift
    for v in "$@" gatehouse; do
        if [[ -n "${NOTE[$mode:$v]:-}" ]]; then
            if ((shown == 0)); then echo; shown=1; fi
            echo "- $v: ${NOTE[$mode:$v]}"
        fi
    done
}

# report_auth : Gatehouse with basic auth and with JWT against the same route without auth
report_auth() {
    echo "## Authentication cost (Gatehouse alone, HTTP/1.1, loopback)"
    echo
    echo "The same route, one Gatehouse process per variant: \`none\` (no auth, as in mode http),"
    echo "\`basic\` (\`auth: { methods: [basic] }\`, a consumer with an argon2id hash; every request"
    echo "carries the right password) and \`jwt\` (\`auth: { methods: [jwt] }\`, RS256 against an RSA 2048"
    echo "public key; every request carries the same valid token). Target: req/s >= 0.9 of \`none\`."
    echo
    variant_table auth "${AUTH_VARIANTS[@]}"
    echo "\`basic\` measures the cached path: a verified password is remembered for 60 s, so argon2id"
    echo "runs once per process (in the start-up check, before the warm-up); each measured request"
    echo "hashes user and password with SHA-256 (keyed) and looks that up. \`jwt\` verifies the token"
    echo "once (RS256 signature and claims) and then finds it in the verified-token cache (SHA-256 of"
    echo "the token, at most 60 s), as a client repeating its token does. Both remove"
    echo "\`Authorization\` and add the consumer header before forwarding; \`none\` gets no credential"
    echo "header at all. proxy CPU and CPU µs per request are measured as in the TLS modes"
    echo "(/proc/PID/stat, all threads); per CPU second: none's CPU µs per request / the variant's."
    variant_notes auth "${AUTH_VARIANTS[@]}"
}

# report_ratelimit : Gatehouse with an in-memory rate limit that is never reached against the
# same route without one
report_ratelimit() {
    echo "## Rate-limit cost (Gatehouse alone, memory and Redis store, HTTP/1.1, loopback)"
    echo
    echo "The same route, one Gatehouse process per variant: \`none\` (no rate_limit, as in mode http),"
    echo "\`limited\` (\`rate_limit: { key: client_ip, $RL_POLICY }\`), \`limited_by_header\`"
    echo "(\`rate_limit: { key: \"header:$RL_TENANT_HEADER\", $RL_POLICY }\`, every request carries"
    echo "\`$RL_TENANT_HEADER: $RL_TENANT\`) and \`redis\` (as \`limited\`, with \`$(store_yaml)\`: the script's"
    echo "own redis-server, on CPU $LOAD_CPU beside wrk). The limit is never reached: every request is"
    echo "counted (GCRA in the memory store, or one Lua script call in Redis) and passes. Target: req/s"
    echo ">= 0.9 of \`none\` for the memory store; \`redis\` is reported."
    echo
    variant_table ratelimit "${RL_VARIANTS[@]}"
    if [[ -n "$RL_CHECK_RESULT" ]]; then
        local verdict="Passed."
        [[ -z "$RL_CHECK_REASON" ]] || verdict="FAILED: $RL_CHECK_REASON; the variants were not measured."
        echo "Limit check (not measured, before the measurements): a separate Gatehouse, route \`/limited\`"
        echo "with \`rate_limit: { $RL_CHECK_POLICY }\` (memory store); 3 requests in a row got $RL_CHECK_RESULT."
        echo "$verdict"
        echo
    fi
    echo "Each limited request builds its key (the route's policy id + client IP or the header value),"
    echo "runs GCRA on it in the memory store and adds \`RateLimit-Limit\`, \`-Remaining\` and \`-Reset\` to"
    echo "the answer; \`none\` does none of this. \`redis\` runs GCRA in Redis instead (EVALSHA, one round"
    echo "trip per request over the one shared connection; checked before measuring: redis-server served"
    echo "EVALSHA (INFO commandstats) and nothing fell back to local limits; under load its EVAL/EVALSHA"
    echo "count is compared with wrk's requests). All requests share one key (127.0.0.1, or"
    echo "$RL_TENANT), so the figures say nothing about many keys (map growth, expiry). proxy CPU and CPU µs"
    echo "per request are measured as in the TLS modes (/proc/PID/stat, all threads); per CPU second:"
    echo "none's CPU µs per request / the variant's."
    redis_cpu_line ratelimit
    variant_notes ratelimit "${RL_VARIANTS[@]}"
}

# redis_cpu_line MODE : redis-server's CPU per request in MODE's redis variant, if measured
redis_cpu_line() {
    local r="${REDIS[$1:redis]:-?}"
    [[ "$r" != "?" ]] || return 0
    echo "redis-server (on CPU $LOAD_CPU, with wrk) used $(printf '%.1f' "$r") µs of CPU per request in \`redis\` (median)."
}

# report_cache : Gatehouse answering from its response cache (memory, Redis) against the same
# route proxying every request
report_cache() {
    local v
    echo "## Response cache (Gatehouse alone, hits from memory and from Redis, HTTP/1.1, loopback)"
    echo
    echo "The same route, one Gatehouse process per variant: \`none\` (no cache: every request is proxied"
    echo "to the backend, as in mode http), \`memory\` (\`cache: { $CACHE_POLICY }\`, memory store) and"
    echo "\`redis\` (the same with \`$(store_yaml)\`: the script's own redis-server, on CPU $LOAD_CPU beside"
    echo "wrk, flushed before each measurement). The backend's answer (200, \`text/plain\`, 6 bytes, no"
    echo "\`Cache-Control\`, \`Set-Cookie\` or validators) is stored for the route's ttl; after the check's"
    echo "first request every request of one key (\`127.0.0.1:PORT/\`) is a hit. Targets: \`memory\` >= 2x"
    echo "\`none\`, \`redis\` >= 1x."
    echo
    variant_table cache "${CACHE_VARIANTS[@]}"
    echo "Checks before each measurement (curl, two requests in a row after the readiness probe, which is a"
    echo "GET / too and usually fills the cache; each 200 with the backend's body):"
    for v in "${CACHE_VARIANTS[@]}"; do
        if [[ -n "${CACHE_CHECK[$v]:-}" ]]; then echo "- $v: Cache-Status of the ${CACHE_CHECK[$v]} (round 1)."; fi
    done
    echo "\`memory\` and \`redis\` must have a hit on the 2nd request (else not measured); \`redis\` must also"
    echo "have the answer in Redis (GETs served, a \`gatehouse:cache:*\` key) with no fallback in its log. cache hits:"
    echo "the hits counted by Gatehouse (\`gatehouse_cache_total{result=\"hit\"}\` from its admin listener,"
    echo "read before and after the run; every variant has the listener) over the requests wrk completed;"
    echo "slightly over 100% is requests still in flight at the end. A hit from memory looks the key up"
    echo "in moka, clones the stored answer and builds the response; a hit from Redis does a GET round trip"
    echo "(one shared connection) and decodes the stored bytes instead. proxy CPU and CPU µs per request"
    echo "as in the TLS modes; per CPU second: none's CPU µs per request / the variant's."
    redis_cpu_line cache
    variant_notes cache "${CACHE_VARIANTS[@]}"
}

# ratios_per_round A B : "1.52 / 1.48 / -", each of the figures in list A over the same round's in
# list B
ratios_per_round() {
    local a b i out=() joined
    read -r -a a <<<"${1:-}"
    read -r -a b <<<"${2:-}"
    for ((i = 0; i < ${#a[@]}; i++)); do
        out+=("$(ratio "${a[i]}" "${b[i]:--}" | sed 's|^n/a$|-|')")
    done
    if ((${#out[@]} == 0)); then echo "-"; return 0; fi
    local IFS=/
    joined="${out[*]}"
    echo "${joined//\// / }"
}
# report_aggregate : mode aggregate: the fan-out against the client making the 3 calls itself
# and against one call, with the fast backend and with the delaying one
report_aggregate() {
    local v key rps busy cpu calls backend client sfx s q f g verdict pair
    local pairs=() c50=() c99=()
    echo "## Aggregation (Gatehouse alone, fan-out of 3 calls, HTTP/1.1, loopback)"
    echo
    echo "One Gatehouse config, three clients: \`single\` asks for \`/c.json\` (one proxied call), \`sequential\`"
    echo "for \`/a.json\`, \`/b.json\`, \`/c.json\` in turn (three proxied calls, one after the other on a"
    echo "connection), \`fanout\` for \`/agg\`, whose \`aggregate:\` makes the three calls at once (upstreams"
    echo "svc_a, svc_b, svc_c, all to the same backend) and composes one JSON answer. The \`_delayed\` variants"
    echo "are the same against a backend that answers each call after ${AGG_DELAY} ms (python3 asyncio, on CPU"
    echo "$LOAD_CPU). Goal (issue 13): fan-out p50 <= 1.1x the slowest single call's."
    echo
    if ((ROUNDS > 1)); then
        echo "Medians over $ROUNDS interleaved rounds; the last two columns list each round."
        echo
    fi
    echo "| variant | backend | per request | req/s | p50 (ms) | p99 (ms) | per call p50 / p99 (ms) | proxy CPU | CPU µs per request | p50 (ms) per round | req/s per round |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"
    for v in "${AGG_VARIANTS[@]}"; do
        key="aggregate:$v"
        backend="nginx"
        [[ "$v" != *_delayed ]] || backend="delayed ${AGG_DELAY} ms"
        case "${v%_delayed}" in
            single) client="1 call" ;;
            sequential) client="3 calls in turn" ;;
            fanout) client="1 request, 3 calls at once" ;;
        esac
        rps="${RPS[$key]:-}"
        if [[ -z "$rps" ]]; then
            echo "| $v | $backend | $client | skipped | - | - | - | - | - | - | $(per_round "$key") |"
            continue
        fi
        calls="-"
        if [[ "$(agg_calls "$v")" != 1 ]]; then
            read -r -a pairs <<<"${CALL_R[$key]:-}"
            c50=()
            c99=()
            for pair in "${pairs[@]}"; do
                c50+=("${pair%/*}")
                c99+=("${pair#*/}")
            done
            calls="$(med_of "${c50[*]}") / $(med_of "${c99[*]}")"
        fi
        busy="${BUSY[$key]}"
        [[ "$busy" == "?" ]] || busy="$(printf '%.0f%%' "$busy")"
        cpu="${CPU[$key]}"
        [[ "$cpu" == "?" ]] || cpu="$(printf '%.1f' "$cpu")"
        q="${P50_R[$key]:-}"
        printf '| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$v" "$backend" "$client" "$rps" \
            "${P50[$key]}" "${P99[$key]}" "$calls" "$busy" "$cpu" "${q// / \/ }" "$(per_round "$key")"
    done
    echo
    for sfx in "" _delayed; do
        [[ "$sfx" != _delayed ]] || ((AGG_DELAY > 0)) || continue
        f="aggregate:fanout$sfx"
        g="aggregate:sequential$sfx"
        s="aggregate:single$sfx"
        if [[ -z "$sfx" ]]; then echo -n "Backend nginx: "; else echo -n "Backend delayed ${AGG_DELAY} ms: "; fi
        if [[ -z "${RPS[$f]:-}" ]]; then
            echo "fanout not measured."
            echo
            continue
        fi
        echo -n "fanout vs sequential (ratio of the medians): req/s $(ratio "${RPS[$f]}" "${RPS[$g]:-}")x, p50 $(ratio "${P50[$f]}" "${P50[$g]:-}")x, p99 $(ratio "${P99[$f]}" "${P99[$g]:-}")x. "
        q="$(ratio "${P50[$f]}" "${P50[$s]:-}")"
        verdict="$(awk -v x="$q" 'BEGIN { if (x == "n/a") print "n/a"; else if (x + 0 <= 1.1) print "met"; else print "not met" }')"
        echo "fanout p50 vs single p50: **${q}x** (goal <= 1.10x: $verdict; per round $(ratios_per_round "${P50_R[$f]:-}" "${P50_R[$s]:-}"))."
        echo
    done
    local delayed_c=""
    if ((AGG_DELAY > 0)); then delayed_c=", \`-c$AGG_DELAY_CONNECTIONS\` against the delayed backend"; fi
    echo "How it is measured: wrk (\`-t$WRK_THREADS -c$CONNECTIONS\`$delayed_c, a Lua script"
    echo "that picks the paths) counts and times each HTTP request it sends. For \`single\` and"
    echo "\`fanout\` that is the figure. For \`sequential\` wrk"
    echo "times each of the 3 calls: its req/s is wrk's divided by 3 (exact: every connection sends one"
    echo "call after the other, so 3 calls are one logical request), and its p50 and p99 are **3 times the"
    echo "per-call p50 and p99** (derived, not measured: wrk cannot time a group of 3; the per-call"
    echo "figures are in their own column). 3 x p50 is the median of 3 calls in turn when the calls take"
    echo "about the same time, as they do here; 3 x p99 overstates the p99 of a sum of 3 independent calls."
    echo "The rotation of paths is per wrk thread, not per connection: a connection's 3 calls in turn are"
    echo "not always a, b, c, but all three are alike (same backend, bodies of 33-41 bytes). CPU µs per"
    echo "request is per logical request (for \`sequential\`, the 3 calls). Checks before each"
    echo "measurement: every path the client asks answers 200 with the backend's JSON; \`/agg\` answers"
    echo "200, \`application/json\`, not degraded, with the three answers under \`a\`, \`b\` and \`c\`. Under"
    echo "load, any non-2xx discards the figure, and the fan-out's successful calls"
    echo "(\`gatehouse_aggregate_calls_total{result=\"ok\"}\` from the admin listener) must be 3 per request."
    if [[ -n "${AGG_CHECK[fanout]:-}" ]]; then echo "Round 1's checks: fanout: ${AGG_CHECK[fanout]}; sequential: ${AGG_CHECK[sequential]:-not run}."; fi
    if [[ -n "$AGG_FANOUT_TIME" ]]; then echo "One request each with curl, delayed backend: $AGG_FANOUT_TIME."; fi
    variant_notes aggregate "${AGG_VARIANTS[@]}"
}

# fmt_num DECIMALS VALUE : VALUE with DECIMALS decimals, or as it is when it is not a number
fmt_num() {
    if [[ "$2" =~ ^-?[0-9]+([.][0-9]*)?$ ]]; then printf "%.${1}f" "$2"; else printf '%s' "$2"; fi
}
# per_round_list LIST : "2.41 / 2.38 / -", the per-round figures of LIST as they are
per_round_list() {
    local vals joined
    read -r -a vals <<<"${1:-}"
    if ((${#vals[@]} == 0)); then echo "-"; return 0; fi
    local IFS=/
    joined="${vals[*]}"
    echo "${joined//\// / }"
}
# report_idle : mode idle: the memory each proxy holds per idle keep-alive client connection
report_idle() {
    local name key kpc r0 r1 q0 q1 kpcp held nginx_ratio n="idle:nginx"
    echo "## Memory per idle keep-alive client connection (HTTP/1.1, loopback)"
    echo
    echo "Each proxy started afresh (the config of mode http, with room for $IDLE_CONNS client connections), one"
    echo "request (the body check), then its memory (**before**); then a client opened $IDLE_CONNS connections, sent one"
    echo "keep-alive \`GET /\` on each and read the answer, and left them open and idle; after ${IDLE_SETTLE} s, the memory"
    echo "again (**after**). KiB per idle connection = (after - before) / $IDLE_CONNS. Memory: the sum over the proxy's"
    echo "processes (nginx: master and worker) of Rss (and Pss) in /proc/PID/smaps_rollup."
    echo
    if ((ROUNDS > 1)); then
        echo "Medians over $ROUNDS interleaved rounds; the last column lists each round."
        echo
    fi
    echo "| proxy | before (KiB) | after (KiB) | KiB per idle connection | ratio vs nginx | held open | PSS before / after (KiB) | PSS KiB per idle connection | KiB per idle connection per round |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    for name in "${PROXY_LIST[@]}"; do
        key="idle:$name"
        kpc="$(med_of "${MEM_KPC_R[$key]:-}")"
        if [[ "$kpc" == "?" ]]; then
            echo "| $name | skipped | - | - | - | - | - | - | $(per_round_list "${MEM_KPC_R[$key]:-}") |"
            continue
        fi
        r0="$(med_of "${MEM_RSS0_R[$key]:-}")"
        r1="$(med_of "${MEM_RSS1_R[$key]:-}")"
        q0="$(med_of "${MEM_PSS0_R[$key]:-}")"
        q1="$(med_of "${MEM_PSS1_R[$key]:-}")"
        kpcp="$(med_of "${MEM_KPCP_R[$key]:-}")"
        held="$(med_of "${MEM_HELD_R[$key]:-}")"
        nginx_ratio="n/a"
        if [[ "$(med_of "${MEM_KPC_R[$n]:-}")" != "?" ]]; then
            nginx_ratio="$(ratio "$kpc" "$(med_of "${MEM_KPC_R[$n]:-}")")"
        fi
        printf '| %s | %s | %s | %.2f | %s | %s | %s / %s | %s | %s |\n' "$name" "$(fmt_num 0 "$r0")" "$(fmt_num 0 "$r1")" \
            "$kpc" "$nginx_ratio" "$(fmt_num 0 "$held")" "$(fmt_num 0 "$q0")" "$(fmt_num 0 "$q1")" "$(fmt_num 2 "$kpcp")" \
            "$(per_round_list "${MEM_KPC_R[$key]:-}")"
    done
    echo
    local closed_list=() c
    for name in "${PROXY_LIST[@]}"; do
        c="$(med_of "${MEM_RSS2_R[idle:$name]:-}")"
        [[ "$c" == "?" ]] || closed_list+=("$name $(fmt_num 0 "$c") KiB")
    done
    if ((${#closed_list[@]} > 0)); then
        c="$(printf '%s, ' "${closed_list[@]}")"
        echo "RSS 1 s after the client closed its connections (median; what a proxy keeps once they are gone,"
        echo "in its allocator's free lists or caches, rather than holds per connection): ${c%, }."
        echo
    fi
    echo "held open: client connections established on the proxy's port (\`ss -tn state established\`) when the"
    echo "memory was read; a round with fewer than $IDLE_CONNS has no figure. Only the proxy's own memory counts: the"
    echo "kernel's socket buffers are not in it. Rss counts shared pages in each process (nginx's master and worker"
    echo "share most of theirs); Pss splits them. nginx allocates its connection slots (worker_connections) at start,"
    echo "so they are in its *before*; the others allocate per connection."
    notes idle
}

# report_full : mode full: Gatehouse with everything a production route has on (JSON access log,
# metrics, JWT, rate limit) against the bare route
report_full() {
    echo "## Everything on (Gatehouse alone: JSON access log, metrics, JWT, rate limit; HTTP/1.1, loopback)"
    echo
    echo "The same route, one Gatehouse process per variant: \`none\` (as in mode http: no policies,"
    echo "\`access_log: off\`, no admin listener; wrk sends no credential) and \`full\`: the JSON access log to a"
    echo "file (\`access_log: { format: json, path: …/access.log }\`), the admin listener (Prometheus metrics,"
    echo "scraped once after the run), \`auth: { methods: [jwt], jwt: { secret: \"\${$FULL_SECRET_ENV}\","
    echo "algorithms: [HS256] } }\` (every request carries the same valid token) and \`rate_limit: { key: client_ip,"
    echo "$RL_POLICY }\` (memory store, never reached). Target (issue 14): req/s per CPU second >= 0.85 of \`none\`."
    echo "\`log\`, \`jwt\` and \`limit\` each turn on one of these (the JSON access log, JWT auth, the rate limit)"
    echo "on the bare route, to split full's cost."
    echo
    variant_table full "${FULL_VARIANTS[@]}"
    echo "Checks before each measurement (curl):"
    local v
    for v in "${FULL_VARIANTS[@]}"; do
        if [[ -n "${FULL_CHECK[$v]:-}" ]]; then echo "- $v: ${FULL_CHECK[$v]} (round 1)."; fi
    done
    echo "After each measured run of \`full\`: the access log must have a line for every request wrk completed"
    echo "(none dropped), and /metrics must count at least as many 2xx answers"
    echo "(\`gatehouse_http_requests_total\`), JWT successes (\`gatehouse_auth_total\`) and rate-limit passes"
    echo "(\`gatehouse_rate_limit_total{result=\"allowed\"}\`), and none limited; any non-2xx under load discards"
    echo "the figure."
    if [[ -n "$FULL_AFTER" ]]; then echo "Round 1: $FULL_AFTER."; fi
    if [[ -n "$FULL_LOG_SAMPLE" ]]; then
        echo "An access-log line of the measured run (round 1):"
        echo
        echo '```'
        echo "$FULL_LOG_SAMPLE"
        echo '```'
    fi
    echo
    echo "Metrics are recorded in both variants (Gatehouse always keeps them; \`full\` only serves them)."
    echo "The JWT is verified once and then found in the verified-token cache (SHA-256 of the token, at"
    echo "most 60 s), as a client repeating its token does. The access log's writer thread and the rate"
    echo "limiter are part of the proxy's CPU (all threads, pinned to CPU $PROXY_CPU). proxy CPU and CPU µs per"
    echo "request as in the TLS modes; per CPU second: none's CPU µs per request / full's."
    variant_notes full "${FULL_VARIANTS[@]}"
}

first=1
for mode in "${MODE_LIST[@]}"; do
    ((first)) || echo
    first=0
    case "$mode" in
        http) report_http ;;
        auth) report_auth ;;
        ratelimit) report_ratelimit ;;
        cache) report_cache ;;
        aggregate) report_aggregate ;;
        full) report_full ;;
        idle) report_idle ;;
        *) report_tls "$mode" ;;
    esac
done

echo
echo "### Machine"
echo
echo "- nproc: $(nproc)"
echo "- CPU: ${CPU_MODEL:-unknown}"
echo "- kernel: $(uname -sr)"
echo "- CPU busy before start: ${CPU_BUSY_START}% (all CPUs, 1 s sample; should be near 0)"
REDIS_PIN=""
if [[ -n "$REDIS_URL" ]]; then REDIS_PIN=" (+ redis-server)"; fi
if [[ -n "$DELAY_PID" ]]; then REDIS_PIN+=" (+ the delaying backend)"; fi
if wants_mode idle; then REDIS_PIN+=" (+ the idle client of mode idle)"; fi
if ((GH_ONLY)); then
    echo "- pinning: gatehouse on CPU $PROXY_CPU; backend nginx + wrk$REDIS_PIN on CPU $LOAD_CPU"
elif ((HAS_TLS)); then
    echo "- pinning: proxy on CPU $PROXY_CPU; backend nginx + the load generator (wrk, h2load or openssl s_time) on CPU $LOAD_CPU"
else
    echo "- pinning: proxy on CPU $PROXY_CPU; backend nginx + wrk$REDIS_PIN on CPU $LOAD_CPU"
fi
if wants_mode http; then
    echo "- load: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), GET / -> 6-byte body"
fi
if wants_mode body1k || wants_mode body64k; then
    for m in body1k body64k; do
        if wants_mode "$m"; then echo "- $m: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), keep-alive, GET $(body_path "$m") -> $(body_size "$m")-byte body (the backend nginx serves a static file)"; fi
    done
fi
if wants_mode newconn; then
    echo "- newconn: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION -H 'Connection: close' (after a $WARMUP warm-up), GET / -> 6-byte body, a new client connection per request; the proxies keep their upstream connections alive"
fi
if wants_mode idle; then
    echo "- idle: $IDLE_CONNS client connections (python3 asyncio, at most 50 being opened at once), one keep-alive GET / each, then idle ${IDLE_SETTLE} s; fd limit $(ulimit -n); configs as in http plus nginx worker_connections / HAProxy maxconn / Gatehouse server.max_connections and max_connections_per_ip of at least $((IDLE_CONNS + 1000)) ($(version_of python3 --version))"
fi
if wants_mode full; then
    echo "- full: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), GET / -> 6-byte body; none sends no credential; full sends \`Authorization: Bearer\` with an HS256 token of ${FULL_JWT_LEN:-?} characters (header $FULL_JWT_HEADER, payload $(jwt_payload 0 | sed 's/0}$/now+3600}/'), secret: 64 random hex characters from openssl rand, given in the environment)"
fi
if wants_mode https; then
    echo "- https: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up) over TLS, keep-alive HTTP/1.1 (wrk sends no ALPN), GET / -> 6-byte body"
fi
if wants_mode handshake; then
    echo "- handshake: $HS_CLIENTS x openssl s_time -new -time $(seconds "$DURATION") in parallel (after a $(seconds "$WARMUP") s warm-up): each iteration a new TCP connection and a full handshake (s_time -new never resumes), no request, then close"
fi
if wants_mode auth; then
    echo "- auth: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), GET / -> 6-byte body; none sends no credential; basic sends \`Authorization: Basic\` (user $AUTH_USER; hash from \`gatehouse hash-password\`, argon2id ${AUTH_PARAMS:-?}); jwt sends \`Authorization: Bearer\` with an RS256 token of ${JWT_LEN:-?} characters (header $JWT_HEADER, payload $(jwt_payload 0 | sed 's/0}$/now+3600}/'), RSA 2048 key from openssl genpkey)"
fi
if wants_mode ratelimit; then
    echo "- ratelimit: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), GET / -> 6-byte body; none and limited send no extra header; limited_by_header sends \`$RL_TENANT_HEADER: $RL_TENANT\`; limit check before the measurements: 3 x curl to a route with \`rate_limit: { $RL_CHECK_POLICY }\` (${RL_CHECK_RESULT:-not run}); redis as limited, store in the script's redis-server"
fi
if wants_mode cache; then
    echo "- cache: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), GET / -> 6-byte body, one cache key; memory and redis: \`cache: { $CACHE_POLICY }\`; redis: store in the script's redis-server"
fi
if wants_mode aggregate; then
    echo "- aggregate: wrk -t$WRK_THREADS -c$CONNECTIONS (*_delayed: -c$AGG_DELAY_CONNECTIONS) -d$DURATION -s SCRIPT (after a $WARMUP warm-up); single: GET /c.json; sequential: GET /a.json, /b.json, /c.json in turn; fanout: GET /agg (3 calls at once); backend: the backend nginx (JSON of 33-41 bytes)$( ((AGG_DELAY > 0)) && echo "; *_delayed: a python3 asyncio server on 127.0.0.1:$DELAY_PORT answering each request after $AGG_DELAY ms ($(version_of python3 --version))")"
fi
if [[ -n "$REDIS_URL" ]]; then
    echo "- redis-server: $(version_of redis-server --version) on 127.0.0.1:$REDIS_PORT, --save \"\" --appendonly no, flushed before each redis measurement; gatehouse's store timeout $REDIS_TIMEOUT"
fi
if wants_mode h2; then
    echo "- h2: h2load -t1 -c$CONNECTIONS -m$H2_STREAMS -D $DURATION (after a $WARMUP warm-up), ALPN h2, GET / -> 6-byte body"
fi
if ((HAS_TLS)); then
    echo "- TLS: one self-signed ECDSA P-256 certificate and key for every proxy; TLSv1.2 and TLSv1.3 allowed; session resumption at each server's defaults (the clients never resume); nginx upstream keepalive $TLS_UPSTREAM_KEEPALIVE in the TLS modes (h2 has CONNECTIONS x H2_STREAMS requests in flight)"
    for name in "${PROXY_LIST[@]}"; do
        if [[ -n "${TLS_INFO[$name]:-}" ]]; then echo "- negotiated by $name with OpenSSL's client defaults (openssl s_client): ${TLS_INFO[$name]}"; fi
        if [[ -n "${H2_INFO[$name]:-}" ]]; then echo "- negotiated by $name with h2load: ${H2_INFO[$name]}"; fi
    done
fi
echo "- nginx: $(version_of "$NGINX" -v)"
if wants haproxy; then echo "- haproxy: $(version_of "$HAPROXY" -v)"; fi
if wants_mode http || wants_mode https || wants_mode body1k || wants_mode body64k || wants_mode newconn || wants_mode auth ||
    wants_mode ratelimit || wants_mode cache || wants_mode aggregate || wants_mode full; then echo "- wrk: $(version_of wrk -v)"; fi
if wants_mode h2; then echo "- h2load: $(version_of h2load --version)"; fi
if ((HAS_TLS)) || wants_mode auth || wants_mode full; then echo "- openssl: $(version_of openssl version)"; fi
if wants gatehouse; then echo "- gatehouse: $GH_VERSION"; fi
if wants gatehouse-base; then echo "- gatehouse-base: $BASE_VERSION (BASELINE_BIN=${BASELINE:-$BASELINE_BIN})"; fi

echo
echo "### Commands"
echo
if ((ROUNDS > 1)); then
    echo "Commands of round 1; the other rounds repeat the same proxy commands (even rounds in reverse order)."
    echo
fi
echo '```'
printf '%s\n' "${CMDS[@]}"
echo '```'

echo
echo "### Configs (ports are picked at run time)"
for f in "$BACKEND_DIR/nginx.conf" "$WORK/nginx/nginx.conf" "$WORK/haproxy/haproxy.cfg" "$WORK/gatehouse/gatehouse.yaml" \
    "$WORK/gatehouse-base/gatehouse.yaml" "$WORK/tls/nginx/nginx.conf" "$WORK/tls/haproxy/haproxy.cfg" \
    "$WORK/tls/gatehouse/gatehouse.yaml" "$WORK/tls/gatehouse-base/gatehouse.yaml" \
    "$WORK/auth/none/gatehouse.yaml" "$WORK/auth/basic/gatehouse.yaml" "$WORK/auth/jwt/gatehouse.yaml" \
    "$WORK/ratelimit/none/gatehouse.yaml" "$WORK/ratelimit/limited/gatehouse.yaml" \
    "$WORK/ratelimit/limited_by_header/gatehouse.yaml" "$WORK/ratelimit/redis/gatehouse.yaml" \
    "$WORK/ratelimit/check/gatehouse.yaml" "$WORK/cache/none/gatehouse.yaml" "$WORK/cache/memory/gatehouse.yaml" \
    "$WORK/cache/redis/gatehouse.yaml" "$WORK/aggregate/gatehouse.yaml" "$WORK/aggregate/gatehouse-delayed.yaml" \
    "$WORK/aggregate/sequential/client.lua" "$WORK/aggregate/delay-backend/server.py" \
    "$WORK/idle/nginx/nginx.conf" "$WORK/idle/haproxy/haproxy.cfg" "$WORK/idle/gatehouse/gatehouse.yaml" \
    "$WORK/idle/gatehouse-base/gatehouse.yaml" "$WORK/idle/client.py" \
    "$WORK/full/none/gatehouse.yaml" "$WORK/full/full/gatehouse.yaml"; do
    [[ -f "$f" ]] || continue
    echo
    echo "\`${f#"$WORK"/}\`:"
    echo
    echo '```'
    cat "$f"
    echo '```'
done

exit "$FAILED"
