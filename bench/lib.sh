# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/soak.sh (sourced; both keep their child pids in
# the array PIDS).

# Once reaped, a pid may be reused by an unrelated process: drop it from PIDS.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# SIGTERM, up to 5 s to go, then SIGKILL; reaped and forgotten. An empty pid is nothing to do.
stop_pid() {
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do # up to 5 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# How busy all CPUs are, in %, over about 1 s (from /proc/stat): someone else's cargo build
# on a 2-core box would skew the numbers, so the scripts warn about it before they start.
cpu_busy_pct() {
    local a b
    a="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
    sleep 1
    b="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)"
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]
        printf "%.0f", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}
