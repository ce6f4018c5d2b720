#!/usr/bin/env bash
# The whole test suite: set-up, an optimized build of llama.cpp and cmrm, unit and end-to-end
# tests on the fixture (parity with llama.cpp, the server with real clients and a browser, bad
# inputs, kills, a full disk), the library built without the server and command line, the
# example run on the fixture, a bounded fuzzing run of every reader of untrusted input, the
# Vulkan backend on lavapipe against the CPU (CMRM_SKIP_VULKAN=1 skips it), then formatting and
# lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's wall time on stderr, so a slow CI run shows where its time went.
stage() { echo "test.sh: $1 done at ${SECONDS}s" >&2; }
bash scripts/setup.sh
stage setup
# tests/backends.rs writes its CPU results here for the Vulkan run to compare with.
mkdir -p target/vulkan
export CMRM_BACKEND_REFERENCE=$PWD/target/vulkan/cpu-reference.json
rm -f "$CMRM_BACKEND_REFERENCE"
cargo test --release -- --test-threads=1
stage "cargo test"
# The library alone, without the server and command-line dependencies (axum, tokio, clap, ureq).
cargo build --release --lib --no-default-features --features llama
# The example runs, bounded: a steered turn on the fixture, a few tokens.
timeout 300 cargo run --release --example steered_chat -- \
    fixture/SmolLM2-135M-Instruct.Q4_1.gguf fixture/mmproj-smollm2-synthetic.gguf \
    vendor/images/astronaut.jpg "What is in this picture?" 8
stage "library build and example"
# A bounded smoke run of each fuzz target (long runs: scripts/fuzz.sh 3600).
bash scripts/fuzz.sh "${CMRM_FUZZ_SECONDS:-30}"
stage fuzz
if [ "${CMRM_SKIP_VULKAN:-0}" != 1 ]; then
  CMRM_VULKAN_REFERENCE_READY=1 bash scripts/test-vulkan.sh --no-bench
  stage vulkan
fi
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
stage "fmt and clippy"
