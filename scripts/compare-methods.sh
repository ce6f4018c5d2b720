#!/usr/bin/env bash
# The method comparison in docs/measurements.md ("Methods compared on Qwen2.5"): CMRM dataset, CMRM
# sample-level, interpolate and ShiftDC, each steering `last` (last prompt token + generated
# tokens) and `last-prompt` (the last prompt token only), against the text-only and image runs,
# on the Qwen2.5 fixture with its synthetic tower. The sweep applies the bar for a recommended
# default; a fidelity run adds first-token KL to the text-only run.
#   scripts/compare-methods.sh [N_HARMFUL]   (default 50; about 80 minutes on 2 cores before the
#   240 benign-xs items were added; several hours with them)
# Splits, all disjoint from the reported items:
#   CMRM shifts and ShiftDC's harmful side: vendor/sets/harmful-anchors.jsonl (118 items);
#   ShiftDC's benign side: the first 15 multiple-choice items of vendor/sets/benign.jsonl;
#   reported harmful items: harmful-eval.jsonl from item 101 on (the first 100 served earlier
#   Qwen measurements, the first 40 chose the default settings on SmolLM2);
#   reported benign items: the 30 open questions and the other 15 multiple-choice items of
#   benign.jsonl, and the 240 of benign-xs.jsonl (120 ordinary, 120 that look harmful but are
#   safe), so that over-refusal is a rate with an interval of a few points (the bar uses it).
# Results go to target/compare (a rerun resumes from the journals there).
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
n=${1:-50}
bash scripts/fixture.sh --qwen >&2
m=(-m "$fix/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" --mmproj "$fix/mmproj-qwen-synthetic.gguf")
out=target/compare
sets=$out/sets
mkdir -p "$sets"
cmrm=./target/release/cmrm
# Subsets with their image paths made absolute (they are relative to the data file).
subset() { sed "s#\"\.\./images/#\"$PWD/vendor/images/#" | grep -v '^$'; }
sed -n "101,$((100 + n))p" vendor/sets/harmful-eval.jsonl | subset >"$sets/harmful.jsonl"
grep '"benign-open-' vendor/sets/benign.jsonl | subset >"$sets/benign.jsonl"
grep '"benign-mc-' vendor/sets/benign.jsonl | sed -n '16,30p' | subset >>"$sets/benign.jsonl"
subset <vendor/sets/benign-xs.jsonl >>"$sets/benign.jsonl"
grep '"benign-mc-' vendor/sets/benign.jsonl | sed -n '1,15p' | subset >"$sets/benign-anchors.jsonl"
vec=$out/vectors.gguf
[ -f "$vec" ] || "$cmrm" calibrate "${m[@]}" --anchors vendor/sets/harmful-anchors.jsonl \
  --method shiftdc --benign "$sets/benign-anchors.jsonl" -o "$vec"
grid=(--cmrm "$vec" --positions-grid last,last-prompt)
"$cmrm" sweep "${m[@]}" "${grid[@]}" --methods cmrm,cmrm-sample,interpolate,shiftdc \
  --data "$sets/harmful.jsonl" --benign "$sets/benign.jsonl" -n 32 --out "$out/sweep"
"$cmrm" eval fidelity "${m[@]}" "${grid[@]}" --data "$sets/harmful.jsonl" -n 8 \
  --conditions image,cmrm,cmrm-sample,interpolate,shiftdc --out "$out/fidelity"
