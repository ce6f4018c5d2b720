#!/usr/bin/env bash
# The whole test suite: set-up, an optimized build of llama.cpp and cmrm, unit and end-to-end
# tests on the fixture (parity with llama.cpp, the server with real clients and a browser, bad
# inputs, kills, a full disk), the library built without the server and command line, the
# example run on the fixture, a bounded fuzzing run of every reader of untrusted input, the
# Vulkan backend on lavapipe against the CPU (CMRM_SKIP_VULKAN=1 skips it), then formatting and
# lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release -- --test-threads=1
# The library alone, without the server and command-line dependencies (axum, tokio, clap, ureq).
cargo build --release --lib --no-default-features --features llama
# The example runs, bounded: a steered turn on the fixture, a few tokens.
timeout 300 cargo run --release --example steered_chat -- \
    fixture/SmolLM2-135M-Instruct.Q4_1.gguf fixture/mmproj-smollm2-synthetic.gguf \
    vendor/images/astronaut.jpg "What is in this picture?" 8
bash scripts/fuzz.sh "${CMRM_FUZZ_SECONDS:-60}"
[ "${CMRM_SKIP_VULKAN:-0}" = 1 ] || bash scripts/test-vulkan.sh --no-bench
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
