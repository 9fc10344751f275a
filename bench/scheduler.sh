#!/usr/bin/env bash
# The two schedulers of Gatehouse on all the machine's cores (issue 14, step 5): `scheduler:
# work_stealing` (one multi-threaded tokio runtime) against `scheduler: per_core` (one
# single-threaded runtime per worker, each accepting on its own SO_REUSEPORT socket), both with
# `workers: N`, next to nginx (`worker_processes N`) and HAProxy (`nbthread N`) as proxies in
# front of the same backend, in the same run. Small GETs over keep-alive connections.
#
# Unlike bench/run.sh nothing is pinned: proxy, backend and wrk share every CPU, as they would
# on a box that runs them all. So besides req/s the script reports what steadier figure there
# is: the proxy's CPU time per request (utime + stime of its processes over the measured run).
# Each round runs every proxy once, in an order that alternates between rounds; the table shows
# medians and each figure's ratio to nginx's.
#
#   GATEHOUSE_BIN=target/release/gatehouse bash bench/scheduler.sh
#
# Environment: GATEHOUSE_BIN (required), WORKERS (all CPUs: nproc), ROUNDS (3), DURATION (10:
# seconds per measured run), CONNECTIONS (100: wrk -c), THREADS (2: wrk -t), PROXIES
# ("work_stealing per_core nginx haproxy"), KEEP_TMP (1: keep the temp dir and its logs).
# Needs wrk, nginx, haproxy, curl, python3.
set -euo pipefail

BIN="${GATEHOUSE_BIN:?set GATEHOUSE_BIN to a release gatehouse binary}"
WORKERS="${WORKERS:-$(nproc)}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-100}"
THREADS="${THREADS:-2}"
read -r -a PROXIES <<<"${PROXIES:-work_stealing per_core nginx haproxy}"
TMP="$(mktemp -d /tmp/gatehouse-scheduler.XXXXXX)"
log() { printf '[scheduler] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
for t in wrk nginx haproxy curl python3; do command -v "$t" >/dev/null || die "needs $t"; done
[[ -x "$BIN" ]] || die "GATEHOUSE_BIN=$BIN is not an executable"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { # wait_ok URL : a 200 within 10 s
    local i
    for i in $(seq 1 100); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
# cpu_ticks PID : utime + stime of PID and its children processes (nginx workers), in ticks
cpu_ticks() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        [[ -r "/proc/$p/stat" ]] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
TICK=$(getconf CLK_TCK)

# ------------------------------------------------------------------------------ the backend
BACKEND_PORT="$(free_port)"
mkdir -p "$TMP/backend/tmp"
nginx_temp() { local d="$1/tmp"; echo "client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d; uwsgi_temp_path $d; scgi_temp_path $d;"; }
cat >"$TMP/backend/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    $(nginx_temp "$TMP/backend")
    server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 "hello\n"; } }
}
EOF
nginx -p "$TMP/backend/" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log" -g 'daemon off;' \
    >"$TMP/backend/stdout.log" 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$BACKEND_PORT/" || die "the backend nginx did not start"

# ------------------------------------------------------------------------------ the proxies
# start NAME : writes NAME's config, starts it; sets PID and PORT
start() {
    local name="$1" dir="$TMP/$1"
    mkdir -p "$dir/tmp"
    PORT="$(free_port)"
    case "$name" in
        work_stealing | per_core)
            cat >"$dir/gatehouse.yaml" <<EOF
listen: "127.0.0.1:$PORT"
workers: $WORKERS
scheduler: $name
access_log: off
upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend
EOF
            "$BIN" run --config "$dir/gatehouse.yaml" >"$dir/gatehouse.log" 2>&1 &
            ;;
        nginx)
            cat >"$dir/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    $(nginx_temp "$dir")
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PORT;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
            nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$dir/stdout.log" 2>&1 &
            ;;
        haproxy)
            cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096
    pidfile $dir/haproxy.pid
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$PORT
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
EOF
            haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
            ;;
        *) die "unknown proxy $name" ;;
    esac
    PID=$!
    PIDS+=("$PID")
    wait_ok "http://127.0.0.1:$PORT/" || die "$name did not start (see $dir)"
    local body
    body="$(curl -s --max-time 2 "http://127.0.0.1:$PORT/")"
    [[ "$body" == hello ]] || die "$name answered '$body', not the backend's 'hello'"
}

declare -A RPS CPU P99
measure() { # measure NAME ROUND
    local name="$1" out="$TMP/$1/wrk-r$2.txt" t0 t1 req p99
    start "$name"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT/" >/dev/null
    t0="$(cpu_ticks "$PID")"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/" >"$out"
    t1="$(cpu_ticks "$PID")"
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    grep -q 'Non-2xx' "$out" && die "$name: non-2xx answers (see $out)"
    req="$(awk '/requests in/ {print $1}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    RPS[$name]+="$(python3 -c "print(round($req / $DURATION))") "
    CPU[$name]+="$(python3 -c "print(round(($t1 - $t0) / $TICK * 1e6 / $req, 2))") "
    P99[$name]+="$p99 "
    log "round $2 $name: $(python3 -c "print(round($req / $DURATION))") req/s, $(python3 -c "print(round(($t1 - $t0) / $TICK * 1e6 / $req, 2))") CPU us/request, p99 $p99"
}

log "workers $WORKERS, $ROUNDS rounds of ${DURATION}s, wrk -t$THREADS -c$CONNECTIONS, in $TMP"
for r in $(seq 1 "$ROUNDS"); do
    order=("${PROXIES[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#PROXIES[@]} - 1; i >= 0; i--)); do order+=("${PROXIES[$i]}"); done
    fi
    for p in "${order[@]}"; do measure "$p" "$r"; done
done

# ------------------------------------------------------------------------------ the table
{
    echo "| proxy | req/s (median) | vs nginx | CPU µs per request (median) | nginx's / this (per CPU s) | p99 (median) | rounds: CPU µs/request |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    for p in "${PROXIES[@]}"; do
        python3 - "$p" "${RPS[$p]}" "${CPU[$p]}" "${P99[$p]}" "${RPS[nginx]:-}" "${CPU[nginx]:-}" <<'EOF'
import statistics, sys
name, rps, cpu, p99, nrps, ncpu = sys.argv[1:7]
f = lambda s: [float(x) for x in s.split()]
def ms(s):
    s = s.strip()
    for unit, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * k
    return float("nan")
r, c = statistics.median(f(rps)), statistics.median(f(cpu))
p = statistics.median([ms(x) for x in p99.split()])
vs = f"{r / statistics.median(f(nrps)):.2f}x" if nrps.strip() else "-"
per = f"{statistics.median(f(ncpu)) / c:.2f}x" if ncpu.strip() else "-"
print(f"| {name} | {r:,.0f} | {vs} | {c:.2f} | {per} | {p:.2f} ms | {' '.join(cpu.split())} |")
EOF
    done
} | tee "$TMP/table.md"
