#!/usr/bin/env bash
# The whole test suite: set-up, an optimized build of llama.cpp and cmrm, unit and end-to-end
# tests on the fixture, then formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release -- --test-threads=1
cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
