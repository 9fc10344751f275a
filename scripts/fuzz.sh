#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time on its committed seed corpus, with
# libFuzzer (the libfuzzer-sys crate) on the stable toolchain: the coverage instrumentation is
# LLVM's sanitizer-coverage, switched on with stable -C flags, so neither nightly Rust nor
# cargo-fuzz is needed (no address sanitizer: that one needs nightly). A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh                    # every target, FUZZ_SECONDS (20) each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh config   # one target, 10 minutes
#
# New inputs libFuzzer finds go to a scratch corpus (fuzz/corpus-new/<target>), not into the
# committed seeds: copy the interesting ones over by hand.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^gatehouse-fuzz$')
fi

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-target}"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo-fuzz does).
HOST="$(rustc -vV | sed -n 's/^host: //p')"
echo "== fuzz: building ${TARGETS[*]} for $HOST"
cargo build --release --locked --bins --target "$HOST"
BIN_DIR="$CARGO_TARGET_DIR/$HOST/release"

status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "corpus-new/$t" "artifacts/$t"
  echo "== fuzz: $t for ${SECONDS_EACH}s ($(find "corpus/$t" -type f | wc -l) seeds)"
  if ! "$BIN_DIR/$t" "corpus-new/$t" "corpus/$t" \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 2> "artifacts/$t/log.txt"; then
    echo "== fuzz: $t FAILED; the input is in fuzz/artifacts/$t/, the log in fuzz/artifacts/$t/log.txt"
    tail -40 "artifacts/$t/log.txt"
    status=1
  else
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE' "artifacts/$t/log.txt" | tr '\n' ' '
    echo
  fi
done
exit "$status"
