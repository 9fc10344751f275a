#!/usr/bin/env bash
# The README's test command. Installs what the tests need when it is missing, then runs the
# whole suite with `cargo test` (extra arguments are passed on, e.g. `--test conformance`).
#
# What the tests need besides Rust, all from Debian's packages:
#   chromium   the dashboard test drives the page in a headless browser
#   nginx      real upstream for the forwarding tests (tests/real_upstreams.rs)
#   python3    real upstream (http.server) for the forwarding tests
#   strace     to see the flags the gateway creates config write-back files with
#   curl       a real TLS and HTTP/2 client for the TLS tests (SNI, ALPN, client certificates)
#   redis-server  the shared store for the rate-limit tests (started on ephemeral ports: one
#              node, one over TLS, a 3-master cluster)
#   redis-tools   `redis-cli --cluster create` for the cluster test (redis-server depends on it)
#   procps     `kill`, to signal the gateway binary
#   coreutils  `timeout`, to bound the browser
# Nothing is started here: each test starts its own servers on ephemeral loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "cargo is required (Rust >= 1.95)" >&2; exit 1; }

missing=()
command -v kill >/dev/null 2>&1 || missing+=(procps)
command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start their services (nginx would take port 80): the tests start their own.
  policy=/usr/sbin/policy-rc.d
  added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    added_policy=1
    # Removed however the install ends, so services may start normally afterwards.
    trap '[ -z "$added_policy" ] || $sudo rm -f "$policy"' EXIT
  fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$added_policy" ] || $sudo rm -f "$policy"
  added_policy=""
fi

# tests/faults.rs opens 10,000 client connections at once (slowloris): raise the open-file
# limit (root may raise the hard limit too; otherwise up to the hard limit).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo test --locked "$@"
