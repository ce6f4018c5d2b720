#!/usr/bin/env bash
# Speed of cmrm against plain llama.cpp in the same run, as ratios: prompt (image) processing
# time and generation speed of `cmrm chat` (plain, dataset CMRM through the control vector,
# the graph-callback path, sample-level CMRM) and of llama.cpp's own llama-mtmd-cli, built from
# the same vendored llama.cpp source (into target/llama.cpp-build, not committed).
#   scripts/bench.sh [MODEL MMPROJ [REPEATS]]
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${CMRM_FIXTURE_DIR:-fixture}
model=${1:-$fix/SmolLM2-135M-Instruct.Q4_1.gguf}
mmproj=${2:-$fix/mmproj-smollm2-synthetic.gguf}
reps=${3:-5}
threads=$(nproc)
src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.160/llama.cpp | head -1)
build=target/llama.cpp-build
if [ ! -x "$build/bin/llama-mtmd-cli" ]; then
  echo "bench: building llama-mtmd-cli from $src (once, several minutes)" >&2
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$build" --target llama-mtmd-cli -j "$threads" >/dev/null
fi
cargo build --release -q
vec=target/bench/vectors.gguf
mkdir -p target/bench
[ -f "$vec" ] || ./target/release/cmrm calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 16 -o "$vec" 2>/dev/null
img=vendor/images/astronaut.jpg
prompt="Describe this picture in detail."
n=64

# Prints "prompt_ms gen_tok_per_s" for one run.
plain() {
  "$build/bin/llama-mtmd-cli" -m "$model" --mmproj "$mmproj" --image "$img" -p "$prompt" -n $n \
    --temp 0 --ignore-eos -t "$threads" 2>&1 >/dev/null | awk '
    /prompt eval time/ {for (i=1;i<=NF;i++) if ($i=="ms") {p=$(i-1); break}}
    /image slice encoded in|image decoded \(batch/ {for (i=1;i<=NF;i++) if ($i=="ms") {img+=$(i-1)}}
    /  eval time/ {for (i=1;i<=NF;i++) if ($i=="tokens") {t=$(i-4)}; for (i=1;i<=NF;i++) if ($i=="per" && $(i+1)=="second)") {s=$(i-1)}}
    END {print p+img, s}'
}
cmrm_run() {
  ./target/release/cmrm chat -m "$model" --mmproj "$mmproj" --image "$img" -p "$prompt" -n $n \
    --temp 0 --ignore-eos -t "$threads" -v "$@" 2>&1 >/dev/null | awk '
    /^prompt:/ {for (i=1;i<=NF;i++) {if ($i=="in" && $(i+2)=="ms") p=$(i+1); if ($i=="tok/s") s=substr($(i-1),2)}}
    END {print p, s}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() {
  local name=$1; shift
  local ps=() gs=()
  for _ in $(seq "$reps"); do
    read -r p g < <("$@")
    ps+=("$p"); gs+=("$g")
  done
  echo "$name $(printf '%s\n' "${ps[@]}" | median) $(printf '%s\n' "${gs[@]}" | median)"
}
{
  measure llama.cpp plain
  measure cmrm cmrm_run --no-cmrm
  measure cmrm-cvec cmrm_run --cmrm "$vec"
  measure cmrm-callback cmrm_run --cmrm "$vec" --cmrm-path callback
  measure cmrm-sample cmrm_run --cmrm-sample
} > target/bench/results.txt
echo "model: $(basename "$model"), $threads threads, $reps runs each (median), image + ${n} tokens"
awk 'NR==1 {bp=$2; bg=$3} {printf "%-14s prompt %8.1f ms (x%.2f)   generation %7.1f tok/s (x%.2f)\n", $1, $2, $2/bp, $3, $3/bg}' \
  target/bench/results.txt
