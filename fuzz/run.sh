#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (scripts/test calls it after the Rust tests).
#
#   fuzz/run.sh                   each target for FERRY_FUZZ_SECONDS (default 20) seconds
#   FERRY_FUZZ_SECONDS=600 fuzz/run.sh mqtt_packet    one target, longer
#
# cargo-fuzz needs a nightly toolchain. Without one the run is skipped with a notice: the stable
# property tests over arbitrary bytes (router/src/codec/tests.rs, adapters/mqtt/src/topic/tests.rs,
# adapters/mqtt/tests/wire_properties.rs) still run in `cargo nextest`. The corpus grows in
# /var/tmp/ferry-fuzz/corpus across runs on one machine, seeded from fuzz/corpus/; a crash fails the
# run and leaves its input in /var/tmp/ferry-fuzz/artifacts/ (reproduce: cargo +nightly fuzz run
# TARGET FILE).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${FERRY_FUZZ_SECONDS:-20}"
state="${FERRY_FUZZ_DIR:-/var/tmp/ferry-fuzz}"
export CARGO_TARGET_DIR="${FERRY_FUZZ_TARGET_DIR:-/var/tmp/ferry-fuzz-target}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "    fuzz: skipped: no nightly toolchain (rustup toolchain install nightly to enable)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "    fuzz: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

mkdir -p "$state/artifacts"
echo "    fuzz: building (nightly, address sanitizer; log $state/build.log)"
if ! cargo +nightly fuzz build -O >"$state/build.log" 2>&1; then
    tail -n 40 "$state/build.log" >&2
    echo "fuzz: the fuzz targets do not build" >&2
    exit 1
fi

for target in "${targets[@]}"; do
    corpus="$state/corpus/$target"
    mkdir -p "$corpus"
    cp -n corpus/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "    fuzz: $target for ${seconds}s (corpus $corpus)"
    if ! cargo +nightly fuzz run -O "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$state/artifacts/$target-" -print_final_stats=1 \
        >"$state/$target.log" 2>&1; then
        tail -n 40 "$state/$target.log" >&2
        echo "fuzz: $target found a failure; input saved under $state/artifacts/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$state/$target.log" |
        sed 's/^/      /' || true
done
