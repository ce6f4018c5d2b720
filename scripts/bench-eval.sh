#!/usr/bin/env bash
# `cmrm eval safety --parallel N` against --parallel 1: wall time of the same run (ITEMS harmful
# items, conditions text, image and dataset CMRM, 64 tokens, greedy) and how many answers and
# verdicts agree with --parallel 1. Markdown to stdout and target/bench/eval-parallel.md.
#   scripts/bench-eval.sh [MODEL MMPROJ [ITEMS [N]]]
# Defaults: the Qwen2.5 fixture (scripts/fixture.sh --qwen), 40 items, N = 4.
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
model=${1:-$fix/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
mmproj=${2:-$fix/mmproj-qwen-synthetic.gguf}
items=${3:-40}
par=${4:-4}
cmrm=./target/release/cmrm
[ -n "${CMRM_NO_BUILD:-}" ] || cargo build --release -q
out=target/bench/eval-parallel
rm -rf "$out"
mkdir -p "$out"
vec=target/bench/vectors-$(basename "$model" .gguf).gguf
[ -f "$vec" ] || timeout 900 "$cmrm" calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 16 -o "$vec" 2>/dev/null
# Image paths made absolute: the data file lives elsewhere.
head -n "$items" vendor/sets/harmful-eval.jsonl | sed "s#\"\\.\\./images/#\"$PWD/vendor/images/#" \
  > "$out/items.jsonl"
run() { # parallel -> seconds
  local start end
  start=$(date +%s.%N)
  timeout 3600 "$cmrm" eval safety -m "$model" --mmproj "$mmproj" -t "$(nproc)" \
    --data "$out/items.jsonl" --out "$out/p$1" --conditions text,image,cmrm --cmrm "$vec" \
    -n 64 --parallel "$1" >/dev/null 2>"$out/p$1.log"
  end=$(date +%s.%N)
  python3 -c "print($end - $start)"
}
t1=$(run 1)
tn=$(run "$par")
python3 - "$out" "$par" "$t1" "$tn" "$model" "$items" <<'EOF' | tee target/bench/eval-parallel.md
import json, os, sys
out, par, t1, tn, model, items = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
def load(p):
    return {(r["id"], r["condition"]): r for r in map(json.loads, open(p))}
a = load(f"{out}/p1/safety.jsonl")
b = load(f"{out}/p{par}/safety.jsonl")
same = sum(a[k]["response"] == b[k]["response"] for k in a)
verd = sum(a[k]["verdict"] == b[k]["verdict"] for k in a)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"`cmrm eval safety`, {os.path.basename(model)} with its synthetic tower, {items} items x 3 conditions "
      f"(text, image, dataset CMRM), 64 tokens, greedy; {os.cpu_count()} threads, {cpu}.\n")
print("| --parallel | wall time | vs 1 | answers identical to --parallel 1 | verdicts identical |")
print("|---:|---:|---:|---:|---:|")
print(f"| 1 | {t1:.1f} s | 1.00 | - | - |")
print(f"| {par} | {tn:.1f} s | {tn / t1:.2f} | {same} / {len(a)} | {verd} / {len(a)} |")
EOF
