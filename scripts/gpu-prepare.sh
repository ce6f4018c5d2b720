#!/usr/bin/env bash
# Prepares scripts/gpu-check.sh for a GPU machine that has no Rust toolchain (this project's lent
# H200): builds cmrm and tests/backends.rs here with llama-cpp-2's dynamic-link feature (they
# then load libllama.so.0, libmtmd.so.0, libggml*.so.0 by SONAME: the GPU machine builds those
# with CUDA from the same source), and packs into gpu-payload/ (git-ignored through
# .git/info/exclude; about 30 MB) the stripped binaries, that llama.cpp source without the
# backends it does not build, the Python `gguf` package and a tokenizer-only GGUF of the
# fixture's SmolLM2. About 8 minutes on 2 cores (llama.cpp built a second time, as shared
# libraries, into target/dynamic).
set -euo pipefail
cd "$(dirname "$0")/.."
payload=gpu-payload
grep -qx "/$payload/" .git/info/exclude 2>/dev/null || echo "/$payload/" >>.git/info/exclude
export CARGO_TARGET_DIR=target/dynamic
cargo build --release --features llama-cpp-2/dynamic-link
cargo test --release --features llama-cpp-2/dynamic-link --test backends --no-run
rm -rf "$payload" && mkdir -p "$payload/python"
cp target/dynamic/release/cmrm "$payload/cmrm"
cp "$(ls -t target/dynamic/release/deps/backends-* | grep -v '\.d$' | head -1)" "$payload/backends"
strip "$payload/cmrm" "$payload/backends"
echo "$PWD" >"$payload/built-in"
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$(
  sed -n 's/^llama-cpp-sys-2 = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)"/llama.cpp | head -1)
tar cJf "$payload/llama.cpp.tar.xz" -C "$(dirname "$src")" \
  --exclude='ggml/src/ggml-'{sycl,opencl,vulkan,hexagon,musa,cann,webgpu,zdnn,zendnn,openvino,virtgpu,et,metal,hip} \
  --exclude='tools/server/public*' --exclude='*.gguf' --exclude=docs --exclude=examples \
  llama.cpp
python3 - "$payload/python" <<'EOF'
import os, shutil, sys
import gguf
shutil.copytree(os.path.dirname(gguf.__file__), os.path.join(sys.argv[1], "gguf"),
                ignore=shutil.ignore_patterns("__pycache__"))
EOF
bash scripts/fixture.sh >/dev/null
python3 - "${CMRM_FIXTURE_DIR:-fixture}/SmolLM2-135M-Instruct.Q4_1.gguf" "$payload/tokenizer.gguf" <<'EOF'
import sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
w = gguf.GGUFWriter(sys.argv[2], "llama")
for f in r.fields.values():
    if f.name.startswith("tokenizer."):
        t = f.types[0]
        w.add_key_value(f.name, f.contents(), t,
                        sub_type=f.types[-1] if t == gguf.GGUFValueType.ARRAY else None)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file(); w.close()
EOF
du -sh "$payload" "$payload"/*
echo "gpu-prepare: ready; on the GPU machine run: bash scripts/gpu-check.sh (carry $payload)"
