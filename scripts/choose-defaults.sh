#!/usr/bin/env bash
# The measurement behind cmrm's default steering settings (docs/method.md, "Choosing the defaults"):
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
# Stage 1: which rule and layer. Each stage's per-item results are in its --out folder
# (a rerun resumes).
"${fid[@]}" --out "$out/increment" --conditions image,cmrm --cmrm-apply increment --cmrm-positions last --alpha 0.5,1
"${fid[@]}" --out "$out/layers" --conditions cmrm --cmrm-apply total --cmrm-positions last --layer-grid "$single" --alpha 1
# The layer with the lowest first-token KL to the text-only run.
layer=${4:-$(awk -F'|' '$2 ~ / L[0-9]/ {split($2, a, " L"); kl = $4 + 0; if (best == "" || kl < bestkl) {best = a[2] + 0; bestkl = kl}} END {print best}' "$out/layers/fidelity-summary.md")}
echo "best single layer: $layer" >&2
# Stage 2: alpha and positions at that layer, dataset- and sample-level, and sample-level
# interpolation toward the text-only state (callback path).
for pos in last after-image all; do
  "${fid[@]}" --out "$out/layer$layer-$pos" --conditions cmrm,cmrm-sample --cmrm-apply total \
    --cmrm-positions "$pos" --cmrm-layers "$layer" --alpha 0.5,1
done
"${fid[@]}" --out "$out/interpolate" --conditions cmrm-sample --cmrm-corruption anchor --cmrm-path callback \
  --cmrm-apply interpolate --cmrm-positions last --cmrm-layers 0-$last --alpha 0.5,1
