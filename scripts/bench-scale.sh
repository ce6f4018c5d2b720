#!/usr/bin/env bash
# Cost at a real VLM's scale: the benchmark-only tower of LLaVA-1.5's shape (CLIP ViT-L/14 at
# 336 px: 24 layers, width 1024, 576 image tokens, f16; synthetic weights) on SmolLM2-135M, where
# image encoding dominates as it does for a real VLM on a CPU. Four ratios, all in one run:
#   1. end to end and per phase against llama-mtmd-cli, and dataset steering against none
#      (scripts/bench.sh on this tower);
#   2. sample-level time to first token against dataset-level, in a running chat (the second
#      image of a session: the corruption image was encoded by the first and is not again);
#   3. calibration per anchor against its text-only prefill plus one plain image prompt.
#   scripts/bench-scale.sh [REPEATS]      results in target/bench/scale.md
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
fix=${CMRM_FIXTURE_DIR:-fixture}
bash scripts/fixture.sh --bench
model=$fix/SmolLM2-135M-Instruct.Q4_1.gguf
mmproj=$fix/mmproj-llava15-shape-576.gguf
cmrm=./target/release/cmrm
threads=$(nproc)
out=target/bench/scale.md
mkdir -p target/bench
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# 1. Against llama.cpp, and steering against none.
part1=$(bash scripts/bench.sh "$model" "$mmproj" "$reps")

# 2. Time to first token of the second image of a chat session, dataset vs sample-level.
vec=target/bench/vectors-$(basename "$model" .gguf)-$(basename "$mmproj" .gguf).gguf  # bench.sh's
second_ttft() {
  printf '/image vendor/images/chelsea.jpg\nWhat is this?\n/clear\n/image vendor/images/coffee.jpg\nWhat is this?\n' |
    "$cmrm" chat -m "$model" --mmproj "$mmproj" -n 4 --temp 0 -t "$threads" -v "$@" 2>&1 >/dev/null |
    awk '/^prompt:/ {n++; for (i=1;i<=NF;i++) if ($i=="in" && $(i+2)=="ms") {ms=$(i+1); break}; if (n==2) print ms}'
}
ttft() {
  local xs=()
  for _ in $(seq "$reps"); do xs+=("$(second_ttft "$@")"); done
  printf '%s\n' "${xs[@]}" | median
}
ttft_plain=$(ttft --no-cmrm)
ttft_dataset=$(ttft --cmrm "$vec")
ttft_sample_blank=$(ttft --cmrm-sample --cmrm-corruption blank)
ttft_sample_noise=$(ttft --cmrm-sample --cmrm-corruption noise)

# 3. Calibration per anchor (the difference of 2 and 6 anchors, so loading cancels out)
# against a text-only prefill plus a plain image prompt of the same anchors' texts.
calib_per_anchor() {
  local t=()
  for n in 2 6; do
    local t0; t0=$(date +%s%N)
    "$cmrm" calibrate -m "$model" --mmproj "$mmproj" --anchors vendor/sets/harmful-anchors.jsonl \
      --limit "$n" -t "$threads" -o target/bench/calib-tmp.gguf "$@" 2>/dev/null
    t+=("$(( ($(date +%s%N) - t0) / 1000000 ))")
  done
  rm -f target/bench/calib-tmp.gguf
  echo $(( (t[1] - t[0]) / 4 ))
}
calib_noise=$(calib_per_anchor --corruption noise)
calib_blank=$(calib_per_anchor --corruption blank)
# The reference: for 4 anchors, the anchor's text alone, then with an image never seen before.
reference=$(python3 - "$model" "$mmproj" "$threads" <<'EOF'
import json, subprocess, sys
model, mmproj, threads = sys.argv[1:4]
texts = [json.loads(l)["prompt"] for l in open("vendor/sets/harmful-anchors.jsonl")][2:6]
images = ["astronaut", "chelsea", "coffee", "rocket"]
lines = []
for t, im in zip(texts, images):
    t = t.replace("\n", " ")
    lines += [t, "/clear", f"/image vendor/images/{im}.jpg", t, "/clear"]
p = subprocess.run(["./target/release/cmrm", "chat", "-m", model, "--mmproj", mmproj, "-n", "1",
                    "--temp", "0", "-t", threads, "-v"], input="\n".join(lines) + "\n",
                   capture_output=True, text=True, check=True)
ms = [float(l.split(" in ", 1)[1].split(" ms")[0]) for l in p.stderr.splitlines() if l.startswith("prompt:")]
print(round(sum(ms) / len(texts)))
EOF
)

{
  echo "## Cost at LLaVA-1.5's scale ($(date -u +%F), $(nproc) threads, $(lscpu | sed -n 's/^Model name: *//p'))"
  echo
  echo "SmolLM2-135M-Instruct Q4_1 with a synthetic tower of LLaVA-1.5's shape (576 image tokens)."
  echo
  echo '```'
  echo "$part1"
  echo '```'
  echo
  echo "| measure | ms | ratio | target |"
  echo "|---|---:|---:|---|"
  awk -v p="$ttft_plain" -v d="$ttft_dataset" -v b="$ttft_sample_blank" -v n="$ttft_sample_noise" 'BEGIN {
    printf "| time to first token, 2nd image of a chat: no CMRM | %d | %.2f | |\n", p, p/d
    printf "| ... dataset-level CMRM | %d | 1.00 | |\n", d
    printf "| ... sample-level CMRM, blank corruption | %d | %.2f | <= 1.5 |\n", b, b/d
    printf "| ... sample-level CMRM, noise corruption | %d | %.2f | <= 1.5 |\n", n, n/d }'
  awk -v r="$reference" -v c="$calib_noise" -v b="$calib_blank" 'BEGIN {
    printf "| anchor reference: text-only prefill + plain image prompt | %d | 1.00 | |\n", r
    printf "| calibration per anchor, noise corruption (a new noise image each) | %d | %.2f | <= 1.2 |\n", c, c/r
    printf "| calibration per anchor, blank corruption (encoded once) | %d | %.2f | <= 1.2 |\n", b, b/r }'
} | tee "$out"
