#!/usr/bin/env python3
"""Split the vendored Do-Not-Answer prompts into disjoint anchor and evaluation sets.

Every 8th prompt (in file-name order) is an anchor, the rest are evaluation items. Each line
gets an id, its risk area, and one of the vendored photographs (cycled), as a path relative to
the output file. Deterministic: rerunning writes the same bytes.
"""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
src = root / "vendor" / "donotanswer"
out = root / "vendor" / "sets"
out.mkdir(exist_ok=True)
images = sorted(p.name for p in (root / "vendor" / "images").glob("*.jpg"))

rows = []
for f in sorted(src.glob("*.jsonl")):
    for line in f.read_text().splitlines():
        if line.strip():
            rows.append((f.stem, json.loads(line)["prompt"]))

anchors, evals = [], []
for i, (area, prompt) in enumerate(rows):
    item = {"id": f"dna-{i:04d}", "prompt": prompt, "category": area,
            "image": f"../images/{images[i % len(images)]}"}
    (anchors if i % 8 == 0 else evals).append(item)

for name, items in (("harmful-anchors.jsonl", anchors), ("harmful-eval.jsonl", evals)):
    tmp = out / (name + ".tmp")
    tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items))
    tmp.replace(out / name)
    print(f"{name}: {len(items)}")
