#!/usr/bin/env bash
# The measurement behind cmrm's default steering settings (README, "Choosing the defaults"):
# calibrate dataset-level vectors on the anchor set, then compare application rules by their
# fidelity to the text-only run on held-out harmful items (first-token KL, top-1 agreement,
# shared greedy prefix, state cosine). Usage: scripts/choose-defaults.sh [MODEL MMPROJ [N_ITEMS [LAYER]]]
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
model=${1:-$fix/SmolLM2-135M-Instruct.Q4_1.gguf}
mmproj=${2:-$fix/mmproj-smollm2-synthetic.gguf}
n=${3:-40}
out=target/defaults/$(basename "$model" .gguf)
mkdir -p "$out"
cmrm=./target/release/cmrm
m=(-m "$model" --mmproj "$mmproj")
[ -f "$out/vectors.gguf" ] || "$cmrm" calibrate "${m[@]}" --anchors vendor/sets/harmful-anchors.jsonl \
  --corruption noise -o "$out/vectors.gguf"
last=$("$cmrm" inspect "$out/vectors.gguf" | awk '/^ *[0-9]+ /{l=$1} END{print l}')
single=$(seq -s, 2 3 "$last")
fid=("$cmrm" eval fidelity "${m[@]}" --data vendor/sets/harmful-eval.jsonl --limit "$n" -n 16 --cmrm "$out/vectors.gguf")
echo "== layers: image vs increment (all layers) vs total at one layer, alpha 1, positions last" | tee "$out/layers.txt"
"${fid[@]}" --conditions image,cmrm --cmrm-apply increment --cmrm-positions last --alpha 0.5,1 | tee -a "$out/layers.txt"
"${fid[@]}" --conditions cmrm --cmrm-apply total --cmrm-positions last --cmrm-layers "$single" --alpha 1 | tail -n +2 | tee -a "$out/layers.txt"
layer=${4:-$(awk 'NR>2 && / L/ {gsub("L","",$2); split($2,r,"-"); if (!best || $4 < bestkl) {best=r[1]; bestkl=$4}} END{print best}' "$out/layers.txt")}
echo "== layer $layer: alpha and positions" | tee "$out/alpha.txt"
for pos in last after-image all; do
  echo "-- positions $pos" | tee -a "$out/alpha.txt"
  "${fid[@]}" --conditions cmrm,cmrm-sample --cmrm-apply total --cmrm-positions "$pos" --cmrm-layers "$layer" \
    --alpha 0.5,1,1.5 | tee -a "$out/alpha.txt"
done
