#!/usr/bin/env bash
# cmrm on llama.cpp's Vulkan backend, on Mesa's lavapipe (a Vulkan 1.3 device on the CPU):
# every layer, `l_out-<il>` and the control vector in device buffers (-ngl 99), the path CUDA
# and Metal take. Builds the library with --features vulkan into target/vulkan (llama.cpp and
# its shaders; the server and command line only for the benchmark), runs tests/backends.rs on
# the CPU build to write the reference and on the Vulkan build to compare with it, then times
# dataset CMRM through the control vector and through the graph callback on that device.
#   scripts/test-vulkan.sh [--no-bench]   result in target/vulkan/result.md
# --no-bench: the tests only. The test command runs it so, after its own CPU run of
# tests/backends.rs has written the reference (CMRM_VULKAN_REFERENCE_READY=1 says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=1
[ "${1:-}" = "--no-bench" ] && bench=0
need=(libvulkan1 libvulkan-dev glslc spirv-headers mesa-vulkan-drivers vulkan-tools)
if ! dpkg -s "${need[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Debian bookworm's Vulkan headers (1.3.239) lack VK_EXT_layer_settings, which ggml-vulkan uses;
# trixie's libvulkan-dev 1.4.309 headers, unpacked beside the system (its loader stays).
headers=${VULKAN_HEADERS:-/opt/vulkan-headers}
grep -q 'struct LayerSettingEXT' "$headers/include/vulkan/vulkan_structs.hpp" 2>/dev/null ||
  bash scripts/install-vulkan-headers.sh "$headers"
export CMAKE_PREFIX_PATH=$headers
# ggml-vulkan skips CPU-type devices unless asked for them; lavapipe is device 0.
export GGML_VK_VISIBLE_DEVICES=0
vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|apiVersion' | head -2 || true
bash scripts/fixture.sh
out=target/vulkan
mkdir -p "$out"
export CMRM_BACKEND_REFERENCE=$PWD/$out/cpu-reference.json
if [ "${CMRM_VULKAN_REFERENCE_READY:-0}" != 1 ] || [ ! -s "$CMRM_BACKEND_REFERENCE" ]; then
  cargo test --release --test backends -- --test-threads=1 --nocapture 2>&1 | grep -E 'cpu:|test result'
fi
log=$out/test.log
CARGO_TARGET_DIR=$out cargo test --release --no-default-features --features vulkan --test backends \
  -- --test-threads=1 --nocapture 2>&1 | tee "$log" | grep -E 'vulkan|test result|panicked'
grep -q 'test result: ok. 2 passed' "$log"
[ "$bench" = 1 ] || exit 0
CARGO_TARGET_DIR=$out cargo build --release --features vulkan

# Cost of the callback path on the device: one synchronisation per steered layer and
# micro-batch, against the control vector (added inside the graph). Both steer the image, the
# text and every generated token (after-image): on Debian's lavapipe 22.3.6 the `last` control
# vector (switched on before the last prompt token is decoded on its own) aborts inside the
# driver's queue thread ("double free or corruption" in libvulkan_lvp.so); on lavapipe 25.0.7
# (bookworm-backports) the same run completes.
fix=${CMRM_FIXTURE_DIR:-fixture}
model=$fix/SmolLM2-135M-Instruct.Q4_1.gguf
mmproj=$fix/mmproj-smollm2-synthetic.gguf
vec=$out/vectors.gguf
[ -f "$vec" ] || ./target/release/cmrm calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 4 --corruption blank -o "$vec" 2>/dev/null
run() {
  "$out/release/cmrm" chat -m "$model" --mmproj "$mmproj" -ngl 99 --image vendor/images/astronaut.jpg \
    -p "Describe this picture in detail." -n 64 --temp 0 --ignore-eos -v "$@" 2>&1 >/dev/null | awk '
    /^prompt:/ {for (i=1;i<=NF;i++) {if ($i=="in" && $(i+2)=="ms" && !p) p=$(i+1); if ($i ~ /^tok\/s/) s=substr($(i-1),2)}}
    END {print p, s}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "## Vulkan on lavapipe ($(date -u +%F), $(vulkaninfo --summary 2>/dev/null | sed -n 's/^[[:space:]]*deviceName[[:space:]]*=[[:space:]]*//p' | head -1))"
  echo
  echo '```'
  grep -E '^(vulkan|cpu)|test result' "$log"
  echo '```'
  echo
  echo "| -ngl 99, image + 64 tokens, median of 3, layer 20 steered | prompt ms | generation tok/s |"
  echo "|---|---:|---:|"
  for mode in "no CMRM:--no-cmrm" "dataset CMRM, control vector:--cmrm $vec --cmrm-positions after-image" "dataset CMRM, graph callback:--cmrm $vec --cmrm-positions after-image --cmrm-path callback"; do
    name=${mode%%:*}; flags=${mode#*:}
    ps=(); gs=()
    for _ in 1 2 3; do
      # shellcheck disable=SC2086
      read -r p g < <(run $flags)
      ps+=("$p"); gs+=("$g")
    done
    echo "| $name | $(printf '%s\n' "${ps[@]}" | median) | $(printf '%s\n' "${gs[@]}" | median) |"
  done
} | tee "$out/result.md"
