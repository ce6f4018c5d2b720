#!/usr/bin/env bash
# The trade-off in README's method section and docs/measurements.md ("The trade-off on both
# backbones"): unsafe rate on harmful requests with images against over-refusal on the 240
# benign requests with images of vendor/sets/benign-xs.jsonl (half of them harmful-looking but
# safe, XSTest's kind), for text-only, the image, and dataset CMRM, sample-level CMRM and
# ShiftDC at the default positions (`last-prompt`), with Wilson intervals, paired tests and the
# over-refusal per benign-xs category.
#   scripts/tradeoff.sh [smollm2|qwen] [N_HARMFUL] [PARALLEL]   (defaults: smollm2 50 4)
# SmolLM2 takes about 35 minutes on 2 cores, Qwen2.5 about three times as long.
# CMRM_TRADEOFF_QUICK=1 drops ShiftDC and the sweep's text-only run of the benign set (eval
# safety + eval utility instead of the sweep; calibration without safety directions): about
# 30 minutes for Qwen2.5.
# Splits, disjoint: CMRM shifts and ShiftDC's harmful side from harmful-anchors.jsonl; ShiftDC's
# benign side the first 15 multiple-choice items of benign.jsonl; reported harmful items
# harmful-eval.jsonl from item 101 on; reported benign items benign-xs.jsonl.
# Results go to target/tradeoff/<name> (a rerun resumes from the journals there).
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
name=${1:-smollm2}
n=${2:-50}
par=${3:-4}
case $name in
  smollm2) m=(-m "$fix/SmolLM2-135M-Instruct.Q4_1.gguf" --mmproj "$fix/mmproj-smollm2-synthetic.gguf") ;;
  qwen) bash scripts/fixture.sh --qwen >&2
        m=(-m "$fix/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" --mmproj "$fix/mmproj-qwen-synthetic.gguf") ;;
  *) echo "usage: $0 [smollm2|qwen] [N_HARMFUL] [PARALLEL]" >&2; exit 2 ;;
esac
out=target/tradeoff/$name
sets=$out/sets
mkdir -p "$sets"
cmrm=./target/release/cmrm
# Subsets with their image paths made absolute (they are relative to the data file).
subset() { sed "s#\"\.\./images/#\"$PWD/vendor/images/#" | grep -v '^$'; }
sed -n "101,$((100 + n))p" vendor/sets/harmful-eval.jsonl | subset >"$sets/harmful.jsonl"
grep '"benign-mc-' vendor/sets/benign.jsonl | sed -n '1,15p' | subset >"$sets/benign-anchors.jsonl"
vec=$out/vectors.gguf
if [ "${CMRM_TRADEOFF_QUICK:-0}" = 1 ]; then
  [ -f "$vec" ] || "$cmrm" calibrate "${m[@]}" --anchors vendor/sets/harmful-anchors.jsonl \
    --parallel "$par" -o "$vec"
  c=(--cmrm "$vec" --positions-grid last-prompt --parallel "$par" -n 32)
  "$cmrm" eval safety "${m[@]}" "${c[@]}" --data "$sets/harmful.jsonl" \
    --conditions text,image,cmrm,cmrm-sample --out "$out/eval"
  "$cmrm" eval utility "${m[@]}" "${c[@]}" --conditions image,cmrm,cmrm-sample --out "$out/eval"
  exit 0
fi
[ -f "$vec" ] || "$cmrm" calibrate "${m[@]}" --anchors vendor/sets/harmful-anchors.jsonl \
  --method shiftdc --benign "$sets/benign-anchors.jsonl" --parallel "$par" -o "$vec"
"$cmrm" inspect "$vec" >"$out/inspect.txt"
"$cmrm" sweep "${m[@]}" --cmrm "$vec" --positions-grid last-prompt \
  --methods cmrm,cmrm-sample,shiftdc --data "$sets/harmful.jsonl" \
  --benign vendor/sets/benign-xs.jsonl -n 32 --parallel "$par" --out "$out/sweep"
