#!/usr/bin/env bash
# The main job on the built-in fixture: set-up, release build, then an image question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release
fix=${CMRM_FIXTURE_DIR:-fixture}
echo "--- cmrm chat (synthetic vision tower, real SmolLM2-135M-Instruct backbone) ---" >&2
./target/release/cmrm chat -m "$fix/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --mmproj "$fix/mmproj-smollm2-synthetic.gguf" --image vendor/images/astronaut.jpg \
  -p "What is in this picture?" --temp 0 -n 64
