#!/usr/bin/env bash
# Continuous batching in `cmrm serve`: for C = 1, 2, 4, 8 clients on `--parallel C`, C text-only
# streaming requests at once (greedy, 48 tokens, ignore_eos): time to first token p50/p95 and the
# total generation throughput, against llama.cpp's own batched decoding of C sequences
# (scripts/batched-reference.cpp, built against the same libraries) in the same run; then 4 image
# requests with CMRM mixed in one batch (dataset-steered with unsteered, sample-level with
# dataset-level) against unmixed batches. Markdown to stdout and target/bench/batch.md.
#   scripts/bench-batch.sh [MODEL MMPROJ [REPEATS]]
# MODEL may be fixture/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (scripts/fixture.sh; its MMPROJ,
# fixture/mmproj-qwen-synthetic.gguf, is then the default).
# CMRM_NO_BUILD=1 skips `cargo build --release`; CMRM_BIN=PATH benchmarks another cmrm binary.
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
model=${1:-$fix/SmolLM2-135M-Instruct.Q4_1.gguf}
case $(basename "$model") in
  qwen2.5-*) mmproj=${2:-$fix/mmproj-qwen-synthetic.gguf} ;;
  *) mmproj=${2:-$fix/mmproj-smollm2-synthetic.gguf} ;;
esac
reps=${3:-3}
cmrm=${CMRM_BIN:-./target/release/cmrm}
[ -n "${CMRM_NO_BUILD:-}" ] || cargo build --release -q
ref=$(scripts/batched-reference.sh)
vec=target/bench/vectors-$(basename "$model" .gguf).gguf
mkdir -p target/bench
[ -f "$vec" ] || timeout 900 "$cmrm" calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 16 -o "$vec" 2>/dev/null
# The benchmark starts one server at a time and records its pid here; whatever way this script
# ends, the trap stops a server still running (the server also gets SIGTERM when Python dies).
pidfile=$(mktemp -t cmrm-bench-batch.XXXXXX)
py=
cleanup() {
  if [ -n "$py" ]; then kill "$py" 2>/dev/null || true; wait "$py" 2>/dev/null || true; fi
  if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The whole run is bounded (CMRM_BENCH_TIMEOUT seconds; it takes about 2 minutes with SmolLM2 and
# 3 repeats on 2 cores); each request, server start and reference run has its own timeout too.
exec 3> >(tee target/bench/batch.md)
tee_pid=$!
CMRM_BENCH_PIDFILE=$pidfile timeout "${CMRM_BENCH_TIMEOUT:-1800}" \
  python3 scripts/bench-serve.py --batch "$cmrm" "$model" "$mmproj" "$vec" \
  vendor/images/astronaut.jpg "$(nproc)" "$reps" "$ref" >&3 &
py=$!
wait "$py"
py=
exec 3>&-
wait "$tee_pid" 2>/dev/null || true
