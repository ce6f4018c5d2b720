#!/usr/bin/env bash
# Speed of `cmrm serve`: time to first token and tokens/s per request at 1, 2 and 4 concurrent
# clients (with as many slots) for CMRM off, dataset-level and sample-level, against `cmrm chat`
# on the same request, and total throughput of 4 clients on 1, 2 and 4 slots.
#   scripts/bench-serve.sh [MODEL MMPROJ [REPEATS]]
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
model=${1:-$fix/SmolLM2-135M-Instruct.Q4_1.gguf}
mmproj=${2:-$fix/mmproj-smollm2-synthetic.gguf}
reps=${3:-3}
cargo build --release -q
vec=target/bench/vectors-$(basename "$model" .gguf).gguf
mkdir -p target/bench
[ -f "$vec" ] || ./target/release/cmrm calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 16 -o "$vec" 2>/dev/null
python3 scripts/bench-serve.py ./target/release/cmrm "$model" "$mmproj" "$vec" \
  vendor/images/astronaut.jpg "$(nproc)" "$reps" | tee target/bench/serve.md
