#!/usr/bin/env bash
# Profile Gatehouse on the small-GET keep-alive path (issue 14, step 1): a CPU profile with
# perf and a count of heap allocations per request with heaptrack, each with the access log
# off and on (text to stdout, sent to /dev/null). Same setup as bench/run.sh mode http: a
# loopback nginx backend answering "hello\n", Gatehouse pinned to PROXY_CPU with workers: 1,
# wrk and the backend pinned to LOAD_CPU.
#
#   GATEHOUSE_BIN=target/release/gatehouse bash bench/profile.sh [perf] [alloc]
#
# Environment: GATEHOUSE_BIN (required: a release build, ideally with debug line tables, as
# the release profile has), DURATION (10: seconds perf records), CONNECTIONS (50: wrk -c),
# REQUESTS (10000: requests counted for allocations; a run of REQUESTS/5 is subtracted so that
# startup and the connection setup cancel out), PROXY_CPU / LOAD_CPU (0 / 1),
# OUT (a new temp dir: perf.data, reports, heaptrack files are left there).
# Needs perf, heaptrack (heaptrack_print), wrk, nginx, curl, taskset.
set -euo pipefail

BIN="${GATEHOUSE_BIN:?set GATEHOUSE_BIN to a release gatehouse binary}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
REQUESTS="${REQUESTS:-10000}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
OUT="${OUT:-$(mktemp -d /tmp/gatehouse-profile.XXXXXX)}"
WHAT="${*:-perf alloc}"
mkdir -p "$OUT"
log() { printf '[profile] %s\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT : up to 20 s (heaptrack starts slowly)
    local i
    for i in $(seq 1 200); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    return 1
}
htfile() { local f; for f in "$1.zst" "$1.gz"; do [[ -e "$f" ]] && { echo "$f"; return 0; }; done; return 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in clock ticks

PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# ---------------------------------------------------------------- backend (as in run.sh)
BACKEND_PORT="$(free_port)"
mkdir -p "$OUT/backend/tmp"
cat >"$OUT/backend/nginx.conf" <<EOF
worker_processes 1;
pid $OUT/backend/nginx.pid;
error_log $OUT/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $OUT/backend/tmp;
    proxy_temp_path $OUT/backend/tmp;
    fastcgi_temp_path $OUT/backend/tmp;
    uwsgi_temp_path $OUT/backend/tmp;
    scgi_temp_path $OUT/backend/tmp;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { default_type text/plain; return 200 "hello\\n"; }
    }
}
EOF
taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -c "$OUT/backend/nginx.conf" -g 'daemon off;' \
    >"$OUT/backend/stdout.log" 2>&1 &
PIDS+=($!)
wait_port "$BACKEND_PORT" || { log "backend nginx did not start"; exit 1; }

# config LOG : writes $OUT/LOG.yaml; LOG = off (access_log: off) or on (the default: text to stdout)
config() {
    local port="$1" logline=""
    [[ "$2" == off ]] && logline="access_log: off"
    cat >"$OUT/$2.yaml" <<EOF
listen: "127.0.0.1:$port"
workers: 1
$logline
upstreams:
  backend:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - match: { path_prefix: "/" }
    upstream: backend
EOF
}

# ---------------------------------------------------------------- perf
if [[ " $WHAT " == *" perf "* ]]; then
    for mode in off on; do
        port="$(free_port)"
        config "$port" "$mode"
        taskset -c "$PROXY_CPU" "$BIN" run --config "$OUT/$mode.yaml" >/dev/null 2>"$OUT/perf-$mode.stderr" &
        gh=$!
        PIDS+=("$gh")
        wait_port "$port" || { log "gatehouse did not start"; exit 1; }
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$((DURATION + 2))s" --latency \
            "http://127.0.0.1:$port/" >"$OUT/perf-$mode.wrk.txt" &
        wrk_pid=$!
        sleep 1
        t0="$(cpu_ticks "$gh")"; w0="$(date +%s.%N)"
        # cpu-clock sampling (this VM exposes no hardware counters), user and kernel stacks
        perf record -q -F 2000 -g -p "$gh" -o "$OUT/perf-$mode.data" -- sleep "$DURATION" 2>"$OUT/perf-$mode.record.log"
        t1="$(cpu_ticks "$gh")"; w1="$(date +%s.%N)"
        wait "$wrk_pid"
        kill -TERM "$gh"; wait "$gh" || true
        rps="$(awk '/Requests\/sec/ {print $2}' "$OUT/perf-$mode.wrk.txt")"
        hz="$(getconf CLK_TCK)"
        # CPU per request from the proxy's utime+stime over the perf window (perf's own start and
        # stop included) and wrk's mean rate over its whole run: an estimate, not an exact count
        awk -v t="$((t1 - t0))" -v hz="$hz" -v w="$(echo "$w1 - $w0" | bc)" -v r="$rps" 'BEGIN {
            printf "access log %s: %.0f req/s (wrk mean), proxy CPU %.0f%% of its core over %.1f s, ~%.1f us CPU per request (perf sampling included)\n",
                "'"$mode"'", r, 100 * t / hz / w, w, 1e6 * t / hz / (r * w) }' | tee "$OUT/perf-$mode.summary"
        perf report -i "$OUT/perf-$mode.data" --no-children --sort dso --stdio -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -12 >"$OUT/perf-$mode.dso.txt" || true
        perf report -i "$OUT/perf-$mode.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -80 >"$OUT/perf-$mode.symbols.txt" || true
        perf report -i "$OUT/perf-$mode.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
            >"$OUT/perf-$mode.all.txt" || true
        python3 "$(dirname "${BASH_SOURCE[0]}")/perf_groups.py" "$OUT/perf-$mode.all.txt" 25 | tee "$OUT/perf-$mode.groups.md"
        log "perf $mode: $OUT/perf-$mode.{dso,symbols,groups}.*"
    done
fi

# ---------------------------------------------------------------- allocations
# One keep-alive connection (curl, URLs from a config file), REQUESTS and REQUESTS/5 GETs
# of "/" with only a Host header, like wrk's; the difference of the two runs divided by the
# difference of the request counts is the per-request figure.
if [[ " $WHAT " == *" alloc "* ]]; then
    small=$((REQUESTS / 5))
    for mode in off on; do
        for n in "$small" "$REQUESTS"; do
            port="$(free_port)"
            config "$port" "$mode"
            awk -v n="$n" -v u="url = \"http://127.0.0.1:$port/\"" 'BEGIN { for (i = 0; i < n; i++) print u }' >"$OUT/urls-$n.txt"
            rm -f "$OUT/heaptrack-$mode-$n".{zst,gz}
            taskset -c "$PROXY_CPU" heaptrack -o "$OUT/heaptrack-$mode-$n" \
                "$BIN" run --config "$OUT/$mode.yaml" >/dev/null 2>"$OUT/heaptrack-$mode-$n.stderr" &
            ht=$!
            PIDS+=("$ht")
            wait_port "$port" || { log "gatehouse (heaptrack) did not start"; exit 1; }
            taskset -c "$LOAD_CPU" curl -s -H 'User-Agent:' -H 'Accept:' \
                -K "$OUT/urls-$n.txt" -w '%{http_code}\n' | grep -v hello | sort | uniq -c >"$OUT/curl-$mode-$n.txt"
            # heaptrack runs gatehouse as a child (LD_PRELOAD): stop that process, not the script
            for p in $(pgrep -f -- "--config $OUT/$mode.yaml"); do
                [[ "$(readlink "/proc/$p/exe" 2>/dev/null)" == "$(readlink -f "$BIN")" ]] && kill -TERM "$p"
            done
            wait "$ht" || true
            f="$(htfile "$OUT/heaptrack-$mode-$n")"
            heaptrack_print -f "$f" -p 0 -a 0 -T 0 -l 0 >"$OUT/heaptrack-$mode-$n.txt" 2>/dev/null || true
            calls="$(sed -n 's/^calls to allocation functions: \([0-9]*\).*/\1/p' "$OUT/heaptrack-$mode-$n.txt")"
            bytes="$(sed -n 's/^bytes allocated in total (ignoring deallocations): \(.*\)$/\1/p' "$OUT/heaptrack-$mode-$n.txt")"
            echo "$mode $n $calls $bytes" | tee -a "$OUT/alloc.txt"
            log "curl responses: $(tr -s ' ' <"$OUT/curl-$mode-$n.txt" | tr '\n' ' ')"
        done
    done
    # per-request allocation sites: the big run minus the small one (divide by REQUESTS - small)
    for mode in off on; do
        heaptrack_print -f "$(htfile "$OUT/heaptrack-$mode-$REQUESTS")" \
            -d "$(htfile "$OUT/heaptrack-$mode-$small")" \
            -p 0 -a 1 -T 0 -l 0 -n 40 -s 3 >"$OUT/heaptrack-$mode-diff.txt" 2>/dev/null || true
        heaptrack_print -f "$(htfile "$OUT/heaptrack-$mode-$REQUESTS")" \
            -d "$(htfile "$OUT/heaptrack-$mode-$small")" \
            -p 0 -a 0 -T 0 -l 0 -F "$OUT/heaptrack-$mode-diff.stacks" >/dev/null 2>&1 || true
        log "allocation sites per $((REQUESTS - small)) requests: $OUT/heaptrack-$mode-diff.txt"
    done
fi
log "output in $OUT"
