#!/usr/bin/env bash
# The whole test suite: set-up, an optimized build of llama.cpp and cmrm, unit and end-to-end
# tests on the fixture (parity with llama.cpp, the server with real clients and a browser, bad
# inputs, kills, a full disk), a bounded fuzzing run of every reader of untrusted input, the
# Vulkan backend on lavapipe against the CPU (CMRM_SKIP_VULKAN=1 skips it), then formatting and
# lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release -- --test-threads=1
bash scripts/fuzz.sh "${CMRM_FUZZ_SECONDS:-60}"
[ "${CMRM_SKIP_VULKAN:-0}" = 1 ] || bash scripts/test-vulkan.sh --no-bench
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
