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
cargo build --release -q
# Plain llama.cpp: llama.cpp's own llama-mtmd-cli, compiled from the llama.cpp source vendored
# in llama-cpp-sys-2 and linked against the very libraries cmrm uses (same build, same flags).
src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.160/llama.cpp | head -1)
libs=$(ls -td target/release/build/llama-cpp-sys-2-*/out/build | head -1)
plain_cli=target/llama.cpp-build/bin/llama-mtmd-cli
if [ ! -x "$plain_cli" ]; then
  echo "bench: compiling llama-mtmd-cli" >&2
  mkdir -p "$(dirname "$plain_cli")"
  g++ -O3 -march=x86-64-v3 -std=c++17 -I"$src/include" -I"$src/ggml/include" -I"$src/common" \
    -I"$src/tools/mtmd" -I"$src/vendor" "$src/tools/mtmd/mtmd-cli.cpp" -o "$plain_cli" \
    "$libs/tools/mtmd/libmtmd.a" "$libs/common/libllama-common.a" "$libs/common/libllama-common-base.a" \
    "$libs/src/libllama.a" "$libs/ggml/src/libggml.a" "$libs/ggml/src/libggml-cpu.a" \
    "$libs/ggml/src/libggml-base.a" "$libs/vendor/hash/libvendor-hash.a" \
    "$libs/vendor/cpp-httplib/libcpp-httplib.a" -fopenmp -lpthread -ldl -lssl -lcrypto
fi
# Vectors for speed only (their values do not change the cost): a few anchors, blank corruption.
vec=target/bench/vectors-$(basename "$model" .gguf)-$(basename "$mmproj" .gguf).gguf
mkdir -p target/bench
[ -f "$vec" ] || ./target/release/cmrm calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 4 --corruption blank -o "$vec" 2>/dev/null
img=vendor/images/astronaut.jpg
prompt="Describe this picture in detail."
n=64

# Prints "prompt_ms gen_tok_per_s" for one run (prompt = image encoding + prefill: llama.cpp's
# "prompt eval time" spans the image encoding too).
plain() {
  "$plain_cli" -m "$model" --mmproj "$mmproj" --image "$img" -p "$prompt" -n $n \
    --temp 0 --ignore-eos -t "$threads" --perf -v 2>&1 >/dev/null | awk '
    /prompt eval time/ {for (i=1;i<=NF;i++) if ($i=="=") {p=$(i+1); break}}
    /  eval time/ {for (i=1;i<=NF;i++) if ($i=="tokens" && $(i+1)=="per") s=$(i-1)}
    END {print p, s}'
}
cmrm_run() {
  ./target/release/cmrm chat -m "$model" --mmproj "$mmproj" --image "$img" -p "$prompt" -n $n \
    --temp 0 --ignore-eos -t "$threads" -v "$@" 2>&1 >/dev/null | awk '
    /^prompt:/ {for (i=1;i<=NF;i++) {if ($i=="in" && $(i+2)=="ms" && !p) p=$(i+1); if ($i ~ /^tok\/s/) s=substr($(i-1),2)}}
    END {print p, s}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Medians of prompt ms, generation tok/s, and the whole command's wall time (ms; includes
# loading and, for sample-level CMRM, its two extra prefills).
measure() {
  local name=$1; shift
  local ps=() gs=() ws=()
  for _ in $(seq "$reps"); do
    local t0; t0=$(date +%s%N)
    read -r p g < <("$@")
    ws+=("$(( ($(date +%s%N) - t0) / 1000000 ))")
    ps+=("$p"); gs+=("$g")
  done
  echo "$name $(printf '%s\n' "${ps[@]}" | median) $(printf '%s\n' "${gs[@]}" | median) $(printf '%s\n' "${ws[@]}" | median)"
}
{
  measure llama.cpp plain
  measure cmrm cmrm_run --no-cmrm
  measure cmrm-cvec cmrm_run --cmrm "$vec"
  measure cmrm-callback cmrm_run --cmrm "$vec" --cmrm-path callback
  measure cmrm-sample cmrm_run --cmrm-sample
} > target/bench/results.txt
echo "model: $(basename "$model"), $threads threads, $reps runs each (median), image + ${n} tokens"
awk 'NR==1 {bp=$2; bg=$3; bw=$4} {printf "%-14s prompt %7.1f ms (x%.2f)  generation %6.1f tok/s (x%.2f)  whole run %6d ms (x%.2f)\n", $1, $2, $2/bp, $3, $3/bg, $4, $4/bw}' \
  target/bench/results.txt
