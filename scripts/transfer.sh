#!/usr/bin/env bash
# Does one vector file serve every quantization of a model? Quantizes the fixture's backbones
# with llama.cpp's quantizer (`cmrm quantize`), calibrates vectors on each quantization, and
# measures on held-out items the fidelity (first-token KL to the text-only answer) of vectors
# calibrated on one quantization and applied to another, against vectors calibrated on the
# target itself. docs/vector-files.md's "Across quantizations, measured" table.
#   scripts/transfer.sh [N_HELD_OUT] [smollm2|qwen ...]
# The fixture ships 4-bit files only (SmolLM2 Q4_1, Qwen2.5 Q4_K_M), so the other types are
# re-encodings of those 4-bit weights (--allow-requantize): Q8_0 made from Q4_1 is nearly the
# Q4_1 model itself, Q4_K_M made from Q4_1 adds a second rounding. A Q8_0 quantized from the
# F16 original would differ from Q4_1 more than these do.
# Results in target/transfer/<model>/ and target/transfer/transfer.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2 qwen)
fix=${CMRM_FIXTURE_DIR:-fixture}
cmrm=./target/release/cmrm
work=target/transfer
python3 -c "import gguf, numpy" 2>/dev/null || pip install --quiet gguf numpy
for name in "${models[@]}"; do
  case $name in
    smollm2) base=$fix/SmolLM2-135M-Instruct.Q4_1.gguf; base_q=Q4_1; others=(Q8_0 Q4_K_M)
             mm=$fix/mmproj-smollm2-synthetic.gguf ;;
    qwen) bash scripts/fixture.sh --qwen
          base=$fix/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; base_q=Q4_K_M; others=(Q8_0)
          mm=$fix/mmproj-qwen-synthetic.gguf ;;
    *) echo "usage: $0 [N_HELD_OUT] [smollm2|qwen ...]" >&2; exit 2 ;;
  esac
  dir=$work/$name
  mkdir -p "$dir"
  ln -sf "$(realpath "$base")" "$dir/$name-$base_q.gguf"
  for q in "${others[@]}"; do
    [ -f "$dir/$name-$q.gguf" ] || "$cmrm" quantize --allow-requantize "$base" "$dir/$name-$q.gguf" "$q"
  done
  quants=("$base_q" "${others[@]}")
  for q in "${quants[@]}"; do
    v=$dir/vectors-from-$q.gguf
    [ -f "$v" ] || "$cmrm" calibrate -m "$dir/$name-$q.gguf" --mmproj "$mm" \
      --anchors vendor/sets/harmful-anchors.jsonl -o "$v"
  done
  for t in "${quants[@]}"; do
    for s in "${quants[@]}"; do
      echo "== $name: vectors from $s on $t" >&2
      "$cmrm" eval fidelity -m "$dir/$name-$t.gguf" --mmproj "$mm" --cmrm "$dir/vectors-from-$s.gguf" \
        --conditions image,cmrm --data vendor/sets/harmful-eval.jsonl --limit "$n" \
        --out "$dir/fidelity-$t-with-$s" > /dev/null
    done
  done
done
python3 scripts/transfer.py "$work" "${models[@]}" | tee "$work/transfer.md"
