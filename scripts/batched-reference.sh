#!/usr/bin/env bash
# Builds scripts/batched-reference.cpp (llama.cpp's own batched greedy decoding through llama.h,
# the reference for `cmrm serve --parallel N`), linked against the very libraries cmrm's release
# build compiled (same flags, same code), as scripts/reference-cli.sh builds llama-mtmd-cli, and
# prints its path. Seconds: one small file. Needs `cargo build --release` first. The binary goes
# to target/llama.cpp-build (not committed).
#   "$(scripts/batched-reference.sh)" MODEL N_SEQ N_GEN [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/llama.cpp-build/bin/batched-reference
cpp=scripts/batched-reference.cpp
libs=$(ls -td target/release/build/llama-cpp-sys-2-*/out/build 2>/dev/null | head -1)
[ -n "$libs" ] || { echo "batched-reference: build cmrm first (cargo build --release)" >&2; exit 1; }
if [ ! -x "$out" ] || [ "$libs/src/libllama.a" -nt "$out" ] || [ "$cpp" -nt "$out" ]; then
  src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-*/llama.cpp | head -1)
  # The CPU flags cmrm's llama.cpp was compiled with (.cargo/config.toml: x86-64-v3).
  march=$(sed -n 's/^CMAKE_C_FLAGS:STRING=.*\(-march=[^ ]*\).*/\1/p' "$libs/CMakeCache.txt" | head -1)
  # ggml's backend registry references the RPC backend when it was compiled in (GGML_RPC=ON).
  rpc=()
  [ -f "$libs/ggml/src/ggml-rpc/libggml-rpc.a" ] && rpc=("$libs/ggml/src/ggml-rpc/libggml-rpc.a")
  mkdir -p "$(dirname "$out")"
  g++ -O3 ${march:-} -std=c++17 -I"$src/include" -I"$src/ggml/include" -I"$src/common" \
    -I"$src/tools/mtmd" -I"$src/vendor" "$cpp" -o "$out.tmp" \
    "$libs/src/libllama.a" "$libs/ggml/src/libggml.a" "${rpc[@]}" "$libs/ggml/src/libggml-cpu.a" \
    "$libs/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl
  mv "$out.tmp" "$out"
fi
echo "$out"
