#!/usr/bin/env bash
# Installs what building and testing cmrm needs and builds the test fixture. Idempotent: does
# nothing that is already done.
#   build:  cmake, a C++ compiler, libclang (bindgen)
#   tests:  the `openai` Python package (serve tests), Debian's chromium and playwright-core
#           from npm (the chat page in a headless browser; never a downloaded browser)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
# libclang itself (libclang.so / libclang-N.so), not libclang-cpp, which other packages pull in.
[ -n "${LIBCLANG_PATH:-}" ] || compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
  || compgen -G '/usr/lib/*-linux-gnu/libclang-[0-9]*.so*' >/dev/null || need+=(libclang-dev)
if [ "${CMRM_SETUP_BROWSER:-1}" = 1 ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v node >/dev/null || need+=(nodejs npm)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust from rustup.rs" >&2; exit 1; }
if ! python3 -c 'import openai' 2>/dev/null; then
  echo "setup: installing the openai Python package" >&2
  python3 -m pip install -q --disable-pip-version-check openai >&2
fi
if [ "${CMRM_SETUP_BROWSER:-1}" = 1 ] && [ ! -d target/node/node_modules/playwright-core ]; then
  echo "setup: installing playwright-core into target/node" >&2
  mkdir -p target/node
  (cd target/node && npm install --silent --no-audit --no-fund playwright-core@1 >&2)
fi

bash scripts/fixture.sh "$@"
