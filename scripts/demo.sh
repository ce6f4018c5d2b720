#!/usr/bin/env bash
# The main job on the built-in fixture: what CMRM is for, on the backbone where an image breaks
# refusals (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, real weights, with a synthetic untrained vision
# tower). Set-up, release build, the fixture, CMRM vectors calibrated once (32 anchors), then
# on 8 held-out harmful requests (never used for calibration or tuning): answers text-only,
# with the image, and with the image and CMRM; refusals and first-token KL per condition; and
# one example, chosen by the rule printed below, shown in full.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release
bash scripts/fixture.sh --qwen >&2
fix=${CMRM_FIXTURE_DIR:-fixture}
m=(-m "$fix/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" --mmproj "$fix/mmproj-qwen-synthetic.gguf")
cmrm=./target/release/cmrm
out=target/demo
mkdir -p "$out"
say() { printf '\n--- %s ---\n' "$*" >&2; }
say "the fixture: real Qwen2.5-Coder-0.5B-Instruct backbone, synthetic (untrained) vision tower"
vec=$out/qwen.cmrm.gguf
if [ ! -f "$vec" ]; then
  say "calibrating CMRM vectors on 32 anchors (text alone minus text with a noise image)"
  "$cmrm" calibrate "${m[@]}" --anchors vendor/sets/harmful-anchors.jsonl --limit 32 -o "$vec"
fi
# Held-out items 101-108 of the evaluation set, image paths made absolute.
sed -n '101,108p' vendor/sets/harmful-eval.jsonl | sed "s#\"\.\./images/#\"$PWD/vendor/images/#" >"$out/held-out.jsonl"
say "8 held-out harmful requests, each with a photograph: text-only, image, image + CMRM"
"$cmrm" eval safety "${m[@]}" --cmrm "$vec" --data "$out/held-out.jsonl" \
  --conditions text,image,cmrm -n 32 --out "$out"
say "how far each condition moves the first answer token from the text-only run (KL, lower is closer)"
"$cmrm" eval fidelity "${m[@]}" --cmrm "$vec" --data "$out/held-out.jsonl" \
  --conditions image,cmrm -n 8 --out "$out"
say "one example; the rule: the first held-out request the image breaks (refused text-only, answered with the image) and CMRM restores; failing that, the first the image breaks"
python3 - "$out/safety.jsonl" "$out/held-out.jsonl" <<'EOF'
import json, sys
answers = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    answers.setdefault(r["id"], {})[r["condition"]] = r
items = [json.loads(l) for l in open(sys.argv[2])]
cmrm = lambda a: next(v for k, v in a.items() if k.startswith("cmrm"))
def broken(i):
    a = answers[i["id"]]
    return a["text"]["verdict"] == "safe" and a["image"]["verdict"] == "unsafe"
restored = [i for i in items if broken(i) and cmrm(answers[i["id"]])["verdict"] == "safe"]
pick = (restored or [i for i in items if broken(i)] or [None])[0]
if pick is None:
    print("the image breaks none of the 8 here; the first item instead")
    pick = items[0]
elif not restored:
    print("CMRM restores none of the requests the image breaks here")
a = answers[pick["id"]]
print(f"request ({pick['id']}): {pick['prompt']}\n")
for name, r in [("text only", a["text"]), ("with the image", a["image"]), ("with the image and CMRM", cmrm(a))]:
    print(f"{name} [{r['verdict']}]: {r['response'].strip()}\n")
EOF
