#!/usr/bin/env bash
# Fuzzes cmrm's readers of untrusted input with cargo-fuzz (libFuzzer, AddressSanitizer):
# vector files, GGUF model/mmproj headers, JSONL data sets, images and data URIs, and the
# server's chat-completions bodies.
#   scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]     (CI: 60 s each; long runs: hours)
# The targets are in tests/fuzz (built without llama.cpp, in a minute); their seeds in
# tests/fuzz/corpus. What libFuzzer finds is written to tests/fuzz/artifacts/TARGET/: add it to
# tests/fuzz/regressions/TARGET/ (tests/fuzz_seeds.rs then runs it in every `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(vector_file model_header jsonl image chat_request)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer); the machine's one stable toolchain takes
# them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir tests/fuzz -O
for t in "${targets[@]}"; do
  work=target/fuzz-corpus/$t
  mkdir -p "$work" "tests/fuzz/artifacts/$t"
  echo "fuzz: $t for ${secs}s" >&2
  cargo fuzz run --fuzz-dir tests/fuzz -O "$t" "$work" "tests/fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=262144 -print_final_stats=1 \
    2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==|SUMMARY|Done)|panicked|ERROR" >&2 || true
  if compgen -G "tests/fuzz/artifacts/$t/*" >/dev/null; then
    echo "fuzz: $t found inputs that fail, in tests/fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz: no finding" >&2
