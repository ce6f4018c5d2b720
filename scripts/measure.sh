#!/usr/bin/env bash
# The measurements in docs/measurements.md: safety, fidelity, utility and the representation gap for
# text / image / CMRM (recommended settings) / sample-level CMRM on one fixture backbone.
#   scripts/measure.sh [smollm2|qwen] [N_HARMFUL]
# Greedy answers are 48 tokens long for SmolLM2 and 32 for Qwen (the README's runs);
# CMRM_TOKENS overrides.
# Results (per-sample JSONL, summaries, plots, report.html) go to target/measure/<name>.
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
name=${1:-smollm2}
n=${2:-100}
case $name in
  smollm2) m=(-m "$fix/SmolLM2-135M-Instruct.Q4_1.gguf" --mmproj "$fix/mmproj-smollm2-synthetic.gguf")
           tokens=48 ;;
  qwen) bash scripts/fixture.sh --qwen
        m=(-m "$fix/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" --mmproj "$fix/mmproj-qwen-synthetic.gguf")
        tokens=32 ;;
  *) echo "usage: $0 [smollm2|qwen] [N_HARMFUL]" >&2; exit 2 ;;
esac
out=target/measure/$name
mkdir -p "$out"
cmrm=./target/release/cmrm
vec=$out/vectors.gguf
[ -f "$vec" ] || "$cmrm" calibrate "${m[@]}" --anchors vendor/sets/harmful-anchors.jsonl -o "$vec"
c=(--cmrm "$vec" --out "$out")
"$cmrm" eval safety "${m[@]}" "${c[@]}" --data vendor/sets/harmful-eval.jsonl --limit "$n" -n "${CMRM_TOKENS:-$tokens}"
"$cmrm" eval fidelity "${m[@]}" "${c[@]}" --data vendor/sets/harmful-eval.jsonl --limit "$n"
"$cmrm" eval utility "${m[@]}" "${c[@]}" --data vendor/sets/benign.jsonl
# Over-refusal on 240 more benign requests, half of them harmful-looking (their own folder).
"$cmrm" eval utility "${m[@]}" --cmrm "$vec" --out "$out/benign-xs" --data vendor/sets/benign-xs.jsonl
"$cmrm" analyze gap "${m[@]}" "${c[@]}" --data vendor/sets/harmful-eval.jsonl --limit 32 --conditions image,cmrm,cmrm-sample
"$cmrm" report --out "$out"
