#!/usr/bin/env bash
# Builds llama.cpp's own llama-mtmd-cli from the llama.cpp source vendored in llama-cpp-sys-2,
# linked against the very libraries cmrm's release build compiled (same flags, same code), and
# prints its path. Seconds, not minutes: only mtmd-cli.cpp is compiled. Needs `cargo build
# --release` first. The binary goes to target/llama.cpp-build (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/llama.cpp-build/bin/llama-mtmd-cli
libs=$(ls -td target/release/build/llama-cpp-sys-2-*/out/build 2>/dev/null | head -1)
[ -n "$libs" ] || { echo "reference-cli: build cmrm first (cargo build --release)" >&2; exit 1; }
if [ ! -x "$out" ] || [ "$libs/src/libllama.a" -nt "$out" ]; then
  src=$(ls -d ~/.cargo/registry/src/*/llama-cpp-sys-2-*/llama.cpp | head -1)
  # The CPU flags cmrm's llama.cpp was compiled with (.cargo/config.toml: x86-64-v3).
  march=$(sed -n 's/^CMAKE_C_FLAGS:STRING=.*\(-march=[^ ]*\).*/\1/p' "$libs/CMakeCache.txt" | head -1)
  # ggml's backend registry references the RPC backend when it was compiled in (GGML_RPC=ON).
  rpc=()
  [ -f "$libs/ggml/src/ggml-rpc/libggml-rpc.a" ] && rpc=("$libs/ggml/src/ggml-rpc/libggml-rpc.a")
  mkdir -p "$(dirname "$out")"
  g++ -O3 ${march:-} -std=c++17 -I"$src/include" -I"$src/ggml/include" -I"$src/common" \
    -I"$src/tools/mtmd" -I"$src/vendor" "$src/tools/mtmd/mtmd-cli.cpp" -o "$out.tmp" \
    "$libs/tools/mtmd/libmtmd.a" "$libs/common/libllama-common.a" "$libs/common/libllama-common-base.a" \
    "$libs/src/libllama.a" "$libs/ggml/src/libggml.a" "${rpc[@]}" "$libs/ggml/src/libggml-cpu.a" \
    "$libs/ggml/src/libggml-base.a" "$libs/vendor/hash/libvendor-hash.a" \
    "$libs/vendor/cpp-httplib/libcpp-httplib.a" -fopenmp -lpthread -ldl -lssl -lcrypto
  mv "$out.tmp" "$out"
fi
echo "$out"
