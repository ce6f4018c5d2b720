#!/usr/bin/env bash
# cmrm on an NVIDIA GPU, in one run of under 10 minutes on a 16-core machine: build, the backend
# tests against the CPU of the same machine, then speed (plain, control vector, graph callback at
# one layer and at every layer, sample-level CMRM) on a model large enough to matter.
#
#   scripts/gpu-check.sh            results in $OUT (or target/gpu): result.md, logs
#
# Two ways to build, chosen by what the machine has:
# - cargo there: `cargo build --release --features cuda` and the backends test (the CUDA toolkit,
#   cmake, a C++ compiler and libclang needed, as the README's install section says);
# - no cargo there (this project's lent GPU machine): scripts/gpu-prepare.sh, run on a machine
#   with cargo, leaves in gpu-payload/ cmrm and the backends test built with llama-cpp-2's
#   dynamic-link feature, the llama.cpp source they were built from and the Python `gguf`
#   package; this script builds that source there as shared libraries with CUDA (about 250 s on
#   16 cores with one architecture and the flash-attention kernels off) and runs the binaries
#   against them. No code changes between the two: libllama.so pulls libggml-cuda.so.
#
# The models are made here: random weights with the fixture's real tokenizer
# (scripts/make_random_model.py), so answers are noise and the arithmetic per token is that of a
# real model of the shape. Speed: a 2048-wide, 24-layer llama (FFN 5632, ~1.2 B parameters)
# quantized to Q4_K_M by cmrm's own quantizer; the vision tower is synthetic
# (scripts/make_mmproj.py), 196 image tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/target/gpu}
mkdir -p "$out"
work=${CMRM_GPU_WORK:-/tmp/cmrm-gpu}
mkdir -p "$work"
exec > >(tee "$out/log.txt") 2>&1
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "gpu-check: no NVIDIA GPU (nvidia-smi failed)" >&2
  exit 1
}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
arch=${arch:-90}
payload=$root/gpu-payload

# --- build ---------------------------------------------------------------------------------
if command -v cargo >/dev/null; then
  stamp "building cmrm with --features cuda (CUDA architecture $arch)"
  export CMAKE_CUDA_ARCHITECTURES=$arch
  CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda
  CARGO_TARGET_DIR=target/cuda cargo test --release --features cuda --test backends --no-run
  bin=$root/target/cuda/release/cmrm
  tests=$(ls -t target/cuda/release/deps/backends-* | grep -v '\.d$' | head -1)
  gguf_py=""
else
  [ -x "$payload/cmrm" ] || {
    echo "gpu-check: no cargo here and no $payload/cmrm: run scripts/gpu-prepare.sh on a machine with cargo first" >&2
    exit 1
  }
  stamp "building llama.cpp's shared libraries with CUDA (architecture $arch)"
  rm -rf "$work/llama.cpp" && mkdir -p "$work/llama.cpp"
  tar xJf "$payload/llama.cpp.tar.xz" -C "$work/llama.cpp" --strip-components=1
  cmake -S "$work/llama.cpp" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF -DGGML_RPC=ON -DGGML_NATIVE=OFF -DGGML_AVX=ON \
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_SSE42=ON -DGGML_OPENMP=ON \
    -DLLAMA_BUILD_MTMD=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >"$out/cmake.log"
  cmake --build "$work/build" -j"$(nproc)" >>"$out/cmake.log"
  export LD_LIBRARY_PATH=$work/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  bin=$payload/cmrm
  tests=$payload/backends
  gguf_py=$payload/python
  # The test binary finds vendor/ under the folder it was built in.
  built_in=$(cat "$payload/built-in")
  if [ "$built_in" != "$root" ] && [ ! -e "$built_in" ]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$root" "$built_in"
  fi
fi
stamp "built"
"$bin" --version
"$bin" devices | tee "$out/devices.txt"
grep -q CUDA "$out/devices.txt" || { echo "gpu-check: cmrm sees no CUDA device" >&2; exit 1; }

# --- models --------------------------------------------------------------------------------
export PYTHONPATH=${gguf_py}${PYTHONPATH:+:$PYTHONPATH}
tok=${CMRM_TOKENIZER:-$payload/tokenizer.gguf}
[ -f "$tok" ] || tok=${CMRM_FIXTURE_DIR:-fixture}/SmolLM2-135M-Instruct.Q4_1.gguf
small=$work/small-f16.gguf big16=$work/big-f16.gguf big=$work/big-q4_k_m.gguf
[ -f "$small" ] || python3 scripts/make_random_model.py --tokenizer "$tok" --n-embd 576 \
  --n-layer 8 --n-ff 1536 --n-head 9 --n-head-kv 3 -o "$small"
[ -f "$work/mmproj-576.gguf" ] || python3 scripts/make_mmproj.py --n-embd 576 -o "$work/mmproj-576.gguf" >/dev/null
[ -f "$big16" ] || python3 scripts/make_random_model.py --tokenizer "$tok" --n-embd 2048 \
  --n-layer 24 --n-ff 5632 --n-head 32 --n-head-kv 8 -o "$big16"
[ -f "$big" ] || "$bin" quantize "$big16" "$big" Q4_K_M >/dev/null
[ -f "$work/mmproj-2048.gguf" ] || python3 scripts/make_mmproj.py --n-embd 2048 -o "$work/mmproj-2048.gguf" >/dev/null
stamp "models ready"

# --- backend tests: the CPU of this machine, then the GPU, compared -------------------------
export CMRM_BACKEND_MODEL=$small CMRM_BACKEND_MMPROJ=$work/mmproj-576.gguf
export CMRM_BACKEND_REFERENCE=$out/cpu-reference.json
CMRM_BACKEND=cpu "$tests" --test-threads=1 --nocapture 2>&1 | tee "$out/test-cpu.log" | grep -E '^cpu|test result|panicked' || true
CMRM_BACKEND=cuda "$tests" --test-threads=1 --nocapture 2>&1 | tee "$out/test-cuda.log" | grep -E '^cuda|test result|panicked' || true
tests_ok=no
grep -q 'test result: ok. 2 passed' "$out/test-cuda.log" && tests_ok=yes
stamp "backend tests: $tests_ok"

# --- speed ---------------------------------------------------------------------------------
vec=$work/big.cmrm.gguf
[ -f "$vec" ] || "$bin" calibrate -m "$big" --mmproj "$work/mmproj-2048.gguf" -ngl 99 \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 8 --corruption blank -o "$vec" 2>"$out/calibrate.log" ||
  echo "gpu-check: calibration failed (see calibrate.log); the steered rows will be empty"
# prompt ms and generation tok/s from `cmrm chat -v`'s timing line.
run() {
  "$bin" chat -m "$big" --mmproj "$work/mmproj-2048.gguf" --image vendor/images/astronaut.jpg \
    -p "Describe this picture in detail." -n 128 --temp 0 --ignore-eos -v "$@" 2>&1 >/dev/null | awk '
    /^prompt:/ {for (i=1;i<=NF;i++) {if ($i=="in" && $(i+2)=="ms" && !p) p=$(i+1); if ($i ~ /^tok\/s/) s=substr($(i-1),2)}}
    END {print p, s}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
table() { # $1: -ngl, $2: repetitions, then "name:flags" rows
  local ngl=$1 reps=$2
  shift 2
  for mode in "$@"; do
    name=${mode%%:*}; flags=${mode#*:}
    ps=(); gs=()
    for _ in $(seq "$reps"); do
      # shellcheck disable=SC2086
      read -r p g < <(run -ngl "$ngl" $flags)
      ps+=("$p"); gs+=("$g")
    done
    echo "| $name | $(printf '%s\n' "${ps[@]}" | median) | $(printf '%s\n' "${gs[@]}" | median) |"
  done
}
last=23
rows=(
  "no CMRM:--no-cmrm"
  "dataset CMRM, control vector, layer 16:--cmrm $vec --cmrm-layers 16-16 --cmrm-positions last"
  "dataset CMRM, graph callback, layer 16:--cmrm $vec --cmrm-layers 16-16 --cmrm-positions last --cmrm-path callback"
  "dataset CMRM, control vector, layers 1-$last:--cmrm $vec --cmrm-layers 1-$last --cmrm-positions last"
  "dataset CMRM, graph callback, layers 1-$last:--cmrm $vec --cmrm-layers 1-$last --cmrm-positions last --cmrm-path callback"
  "sample-level CMRM (probe prefills), layer 16, last-prompt:--cmrm $vec --cmrm-sample --cmrm-layers 16-16"
)
{
  echo "## CUDA: $gpu ($(date -u +%F), $(nproc) CPU cores, scripts/gpu-check.sh)"
  echo
  echo "Backend tests (tests/backends.rs, random-weight 576x8 model, this machine's CPU as reference): $tests_ok"
  echo
  echo '```'
  grep -hE '^(cpu|cuda)|test result' "$out/test-cpu.log" "$out/test-cuda.log"
  echo '```'
  echo
  echo "Speed: random-weight llama 2048x24 (FFN 5632, ~1.2 B parameters) Q4_K_M, synthetic tower"
  echo "(196 image tokens), 'Describe this picture in detail.' + 128 generated tokens, greedy, median of 3."
  echo "Dataset rows steer \`last\` (the last prompt token and every generated token: the callback's"
  echo "worst case); the sample-level row steers the default \`last-prompt\` after its two probe prefills."
  echo
  echo "| -ngl 99 (all layers on the GPU) | prompt ms | generation tok/s |"
  echo "|---|---:|---:|"
  table 99 3 "${rows[@]}"
  echo
  echo "| -ngl 0 (the same machine's $(nproc) CPU cores), median of 1 | prompt ms | generation tok/s |"
  echo "|---|---:|---:|"
  table 0 1 "${rows[0]}" "${rows[1]}" "${rows[4]}"
} | tee "$out/result.md"
stamp "done"
