#!/usr/bin/env bash
# Gatehouse vs nginx vs HAProxy: plain HTTP/1.1 reverse-proxy throughput on loopback.
#
#   bash bench/run.sh [--proxies "nginx haproxy gatehouse"] [--duration 10s] [--connections 50]
#                     [--baseline PATH] [--rounds N]
#
# Environment: DURATION (10s), CONNECTIONS (50), PROXIES ("nginx haproxy gatehouse"),
# GATEHOUSE_BIN (skip the cargo build and use this binary), WARMUP (2s),
# BASELINE_BIN (another gatehouse binary, e.g. of the previous commit: adds the proxy
# "gatehouse-base", run exactly like "gatehouse"), ROUNDS (1; N > 1 measures the whole list
# N times, interleaved, and reports medians), PROXY_CPU / LOAD_CPU (default: first /
# second CPU this process may run on), KEEP_TMP=1 (keep the temp dir with configs, logs
# and raw wrk output). See bench/README.md. The table goes to stdout, progress to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-50}"
PROXIES="${PROXIES:-nginx haproxy gatehouse}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-1}"
BASELINE_BIN="${BASELINE_BIN:-}"
WRK_THREADS="${WRK_THREADS:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
CARGO_LOCK="/tmp/cargo.lock"
CARGO_LOCK_WAIT="${CARGO_LOCK_WAIT:-1800}" # seconds to wait for the shared cargo lock
START_TIMEOUT_S=10

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($# > 0)); do
    case "$1" in
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

wants() {
    local x
    for x in "${PROXY_LIST[@]}"; do [[ "$x" == "$1" ]] && return 0; done
    return 1
}

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

# ---------------------------------------------------------------- dependencies
ensure_tools() {
    local missing=() pkgs=() t
    # command -> Debian package
    local -A pkg_of=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl
        [taskset]=util-linux [python3]=python3 [flock]=util-linux)
    local need=(nginx wrk curl taskset python3)
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

stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; forget_pid "$pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do # up to 5 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}
# Once reaped, a pid may be reused by an unrelated process: drop it from PIDS.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

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
cpu_busy_pct() { # busy % of all CPUs over ~1 s, from /proc/stat
    local a b
    a="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
    sleep 1
    b="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]
        printf "%.0f", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}
CPU_BUSY_START="$(cpu_busy_pct)"
if ((CPU_BUSY_START > 15)); then
    log "WARNING: CPUs are already ${CPU_BUSY_START}% busy before the benchmark starts (another cargo build?); numbers will be noisy"
fi

# Lots of connections need file descriptors; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- ports
# Bind port 0 on 127.0.0.1 for each slot (all sockets open at once, so the ports differ),
# print the ports and release them. The window until our servers bind them is tiny.
read -r BACKEND_PORT NGINX_PORT HAPROXY_PORT GATEHOUSE_PORT BASELINE_PORT <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(5):
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

nginx_common() { # $1 = instance dir
    cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
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

# wait_ready NAME PID PORT LOGFILE : bounded wait until http://127.0.0.1:PORT/ answers
# On failure WAIT_REASON says why.
wait_ready() {
    local name="$1" pid="$2" port="$3" logf="$4" i
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
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
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

# ---------------------------------------------------------------- backend
BACKEND_DIR="$WORK/backend"
mkdir -p "$BACKEND_DIR/tmp"
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
        }
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
log "backend ready on 127.0.0.1:$BACKEND_PORT"

# ---------------------------------------------------------------- proxies
# start_proxy NAME : writes config, starts pinned to PROXY_CPU; sets PROXY_PID PROXY_PORT PROXY_LOG
start_proxy() {
    local name="$1" dir="$WORK/$1"
    mkdir -p "$dir/tmp"
    case "$name" in
        nginx)
            PROXY_PORT=$NGINX_PORT
            PROXY_LOG="$dir/error.log"
            {
                nginx_common "$dir"
                cat <<EOF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$(nginx_temp_paths "$dir")
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
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
            if ((maxconn < 4096)); then maxconn=4096; fi
            cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
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
            cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$PROXY_PORT"
workers: 1
access_log: off
upstreams:
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

# run_wrk OUTFILE DURATION PORT
run_wrk() {
    local out="$1" dur="$2" port="$3"
    local cmd=(taskset -c "$LOAD_CPU" wrk "-t$WRK_THREADS" "-c$CONNECTIONS" "-d$dur" --latency "http://127.0.0.1:$port/")
    record "${cmd[@]}"
    "${cmd[@]}" >"$out" 2>&1
}

# median VALUE... : median of the numeric arguments (others, e.g. "-" or "?", are ignored);
# prints "" when there is none. An odd count gives the middle value unchanged, an even
# count the mean of the two middle ones.
median() {
    awk 'BEGIN {
        n = 0
        for (i = 1; i < ARGC; i++) if (ARGV[i] ~ /^[0-9]+([.][0-9]*)?$/) v[++n] = ARGV[i]
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

# add_note NAME TEXT : append to the proxy's note (prefixed with the round when ROUNDS > 1)
add_note() {
    local name="$1" text="$2"
    if ((ROUNDS > 1)); then text="round $ROUND: $text"; fi
    NOTE[$name]="${NOTE[$name]:+${NOTE[$name]}; }$text"
}

# measure NAME : one round for one proxy: start it, check it, warm up, measure, stop it.
# Appends this round's req/s, p50 and p99 ("-" if there is no figure) to RPS_R/P50_R/P99_R.
measure() {
    local name="$1" sfx="" out body errs rnote="" rps="" p50="-" p99="-"
    if ((ROUNDS > 1)); then
        sfx="-r$ROUND"
        log "---- $name (round $ROUND/$ROUNDS) ----"
    else
        log "---- $name ----"
    fi
    start_proxy "$name"
    if ! wait_ready "$name" "$PROXY_PID" "$PROXY_PORT" "$PROXY_LOG"; then
        add_note "$name" "failed to start: $WAIT_REASON, skipped (its log tail is on stderr)"
        FAILED=1
        stop_pid "$PROXY_PID"
    else
        record curl -s "http://127.0.0.1:$PROXY_PORT/"
        body="$(curl -s --max-time 5 "http://127.0.0.1:$PROXY_PORT/" || true)"
        if [[ "$body" != "$EXPECTED_BODY" ]]; then
            log "$name returned body '$body', expected '$EXPECTED_BODY'"
            add_note "$name" "wrong response body, skipped"
            FAILED=1
            stop_pid "$PROXY_PID"
        else
            log "$name ok on 127.0.0.1:$PROXY_PORT; warm-up $WARMUP"
            run_wrk "$WORK/$name/wrk-warmup$sfx.txt" "$WARMUP" "$PROXY_PORT" || true
            log "$name: measuring $DURATION, $CONNECTIONS connections"
            out="$WORK/$name/wrk$sfx.txt"
            if ! run_wrk "$out" "$DURATION" "$PROXY_PORT"; then
                sed 's/^/    /' "$out" >&2
                add_note "$name" "wrk failed"
                FAILED=1
                stop_pid "$PROXY_PID"
            else
                sed 's/^/    /' "$out" >&2
                if ! kill -0 "$PROXY_PID" 2>/dev/null; then
                    rnote="proxy died during the run"
                    FAILED=1
                fi
                rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
                p50="$(ms "$(awk '$1 == "50%" {print $2}' "$out")")"
                p99="$(ms "$(awk '$1 == "99%" {print $2}' "$out")")"
                errs="$(grep -E '^ *(Socket errors|Non-2xx or 3xx responses):' "$out" | sed 's/^ *//' | paste -sd';' - || true)"
                if [[ -n "$errs" ]]; then
                    rnote="${rnote:+$rnote; }wrk reported: $errs"
                fi
                if [[ -z "$rps" ]]; then
                    rnote="could not parse wrk output"
                    FAILED=1
                fi
                if [[ -n "$rnote" ]]; then add_note "$name" "$rnote"; fi
                stop_pid "$PROXY_PID"
            fi
        fi
    fi
    if [[ -z "$rps" ]]; then rps="-" p50="-" p99="-"; fi
    RPS_R[$name]="${RPS_R[$name]:+${RPS_R[$name]} }$rps"
    P50_R[$name]="${P50_R[$name]:+${P50_R[$name]} }$p50"
    P99_R[$name]="${P99_R[$name]:+${P99_R[$name]} }$p99"
}

declare -A RPS P50 P99 NOTE RPS_R P50_R P99_R
FAILED=0
# Proxies that cannot run at all (no gatehouse build, bad BASELINE_BIN) are noted once.
RUN_LIST=()
for name in "${PROXY_LIST[@]}"; do
    reason="$(skip_reason "$name")"
    if [[ -n "$reason" ]]; then
        NOTE[$name]="$reason"
    else
        RUN_LIST+=("$name")
    fi
done
# Rounds are interleaved: every round measures the whole list, each proxy freshly started
# (and warmed up); even rounds go in reverse order so that no proxy always runs first.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    if ((${#RUN_LIST[@]} == 0)); then break; fi
    order=("${RUN_LIST[@]}")
    if ((ROUND % 2 == 0)); then
        order=()
        for ((i = ${#RUN_LIST[@]} - 1; i >= 0; i--)); do order+=("${RUN_LIST[i]}"); done
    fi
    if ((ROUNDS > 1)); then log "==== round $ROUND/$ROUNDS: ${order[*]} ===="; fi
    for name in "${order[@]}"; do measure "$name"; done
done
for name in "${RUN_LIST[@]}"; do
    read -r -a vals <<<"${RPS_R[$name]:-}"
    RPS[$name]="$(median "${vals[@]}")"
    read -r -a vals <<<"${P50_R[$name]:-}"
    P50[$name]="$(median "${vals[@]}")"
    [[ -n "${P50[$name]}" ]] || P50[$name]="?"
    read -r -a vals <<<"${P99_R[$name]:-}"
    P99[$name]="$(median "${vals[@]}")"
    [[ -n "${P99[$name]}" ]] || P99[$name]="?"
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

echo "## Reverse-proxy benchmark (HTTP/1.1, loopback)"
echo
# per_round NAME : "51234 / 50876 / -" (one figure per round, "-" where it failed)
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

if ((ROUNDS > 1)); then
    echo "Medians over $ROUNDS interleaved rounds; the last column lists each round."
    echo
fi
echo "| proxy | req/s | p50 (ms) | p99 (ms) | ratio vs nginx | req/s per round |"
echo "|---|---:|---:|---:|---:|---|"
for name in "${PROXY_LIST[@]}"; do
    rps="${RPS[$name]:-}"
    if [[ -z "$rps" ]]; then
        echo "| $name | skipped | - | - | - | $(per_round "$name") |"
        continue
    fi
    nginx_ratio="n/a"
    if [[ -n "${RPS[nginx]:-}" ]]; then
        nginx_ratio="$(ratio "$rps" "${RPS[nginx]}")"
    fi
    printf '| %s | %.0f | %s | %s | %s | %s |\n' "$name" "$rps" "${P50[$name]}" "${P99[$name]}" "$nginx_ratio" "$(per_round "$name")"
done
if wants gatehouse && wants gatehouse-base; then
    echo
    if [[ -n "${RPS[gatehouse]:-}" && -n "${RPS[gatehouse-base]:-}" ]]; then
        read -r -a vals <<<"${RPS_R[gatehouse]}"
        n_cur=0
        for v in "${vals[@]}"; do [[ "$v" == - ]] || n_cur=$((n_cur + 1)); done
        read -r -a vals <<<"${RPS_R[gatehouse-base]}"
        n_base=0
        for v in "${vals[@]}"; do [[ "$v" == - ]] || n_base=$((n_base + 1)); done
        n_rounds="$n_cur"
        if ((n_cur != n_base)); then n_rounds="$n_cur and $n_base"; fi
        printf 'gatehouse vs gatehouse-base: %sx req/s (median of %s rounds), p99 %sx\n' \
            "$(ratio "${RPS[gatehouse]}" "${RPS[gatehouse-base]}")" "$n_rounds" \
            "$(ratio "${P99[gatehouse]}" "${P99[gatehouse-base]}")"
    else
        echo "gatehouse vs gatehouse-base: n/a (not both measured)"
    fi
fi
NOTES_SHOWN=0
for name in "${PROXY_LIST[@]}"; do
    if [[ -n "${NOTE[$name]:-}" ]]; then
        if ((NOTES_SHOWN == 0)); then echo; NOTES_SHOWN=1; fi
        echo "- $name: ${NOTE[$name]}"
    fi
done

echo
echo "### Machine"
echo
echo "- nproc: $(nproc)"
echo "- CPU: ${CPU_MODEL:-unknown}"
echo "- kernel: $(uname -sr)"
echo "- CPU busy before start: ${CPU_BUSY_START}% (all CPUs, 1 s sample; should be near 0)"
echo "- pinning: proxy on CPU $PROXY_CPU; backend nginx + wrk on CPU $LOAD_CPU"
echo "- load: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up), GET / -> 6-byte body"
if ((ROUNDS > 1)); then
    echo "- rounds: $ROUNDS, interleaved (each round runs every proxy once, freshly started and warmed up; even rounds in reverse order); figures are medians"
fi
echo "- nginx: $(version_of "$NGINX" -v)"
if wants haproxy; then echo "- haproxy: $(version_of "$HAPROXY" -v)"; fi
echo "- wrk: $(version_of wrk -v)"
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
    "$WORK/gatehouse-base/gatehouse.yaml"; do
    [[ -f "$f" ]] || continue
    echo
    echo "\`${f#"$WORK"/}\`:"
    echo
    echo '```'
    cat "$f"
    echo '```'
done

exit "$FAILED"
