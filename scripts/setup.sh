#!/usr/bin/env bash
# Installs what building cmrm needs (cmake, libclang for bindgen, a C++ compiler) and builds the
# test fixture. Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
# libclang itself (libclang.so / libclang-N.so), not libclang-cpp, which other packages pull in.
[ -n "${LIBCLANG_PATH:-}" ] || compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
  || compgen -G '/usr/lib/*-linux-gnu/libclang-[0-9]*.so*' >/dev/null || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust from rustup.rs" >&2; exit 1; }

bash scripts/fixture.sh "$@"
