#!/usr/bin/env bash
# Fuzzes the wire decoders (fuzz/fuzz_targets/decode.rs) for SECONDS (default 600).
#
#   scripts/fuzz.sh [SECONDS]
#
# Installs cargo-fuzz from crates.io if it is missing. cargo-fuzz passes nightly-only flags
# (-Z sanitizer=address, ...) to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them (a
# nightly toolchain works too: `cargo +nightly fuzz run ...`). New inputs go to fuzz/work/decode
# (git-ignored); the seeds in fuzz/corpus/decode are only read. A crash leaves its input in
# fuzz/artifacts/decode/ and makes this script fail; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run decode fuzz/artifacts/decode/<file>
set -euo pipefail
seconds="${1:-600}"
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/work/decode
exec cargo fuzz run decode fuzz/work/decode fuzz/corpus/decode -- \
    -max_total_time="$seconds" -dict=fuzz/decode.dict -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
