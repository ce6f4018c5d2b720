"""Tables of scripts/transfer.sh: fidelity of vectors moved across quantizations.

For every model and target quantization T, and vectors calibrated on quantization S:
KL(text || cmrm) on T with S's vectors, the paired difference to T's own vectors (per item,
mean and 95% interval), and the cosine / norm ratio of S's and T's shifts at the recommended
layer and over all layers.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader


def deltas(path):
    r = GGUFReader(str(path))
    f = r.fields
    n_embd = int(f["cmrm.n_embd"].parts[-1][0])
    d = np.array([f["cmrm.deltas"].parts[i][0] for i in f["cmrm.deltas"].data], dtype=np.float64)
    layer = int(f["cmrm.layer_start"].parts[-1][0])
    return d.reshape(-1, n_embd), layer


def journal(path):
    """Per-item KL of the cmrm and image conditions."""
    kl = {"image": {}, "cmrm": {}}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        kind = "image" if rec["condition"] == "image" else "cmrm"
        kl[kind][rec["id"]] = rec["kl"]
    return kl


def mean_ci(xs):
    xs = np.asarray(xs)
    if len(xs) < 2:
        return float(xs.mean()), float("nan")
    return float(xs.mean()), 1.96 * float(xs.std(ddof=1)) / math.sqrt(len(xs))


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    work = Path(sys.argv[1])
    for name in sys.argv[2:]:
        d = work / name
        quants = sorted({p.name.split("-with-")[1] for p in d.glob("fidelity-*-with-*")},
                        key=lambda q: (q != "Q4_1" and q != "Q4_K_M", q))
        print(f"\n#### {name}: KL(text || cmrm) on held-out items, vectors from one quantization applied to another\n")
        print("| running | vectors from | n | image KL | cmrm KL | cut vs image | vs own vectors (paired) | cos at layer | norm ratio | mean cos, all layers |")
        print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
        for t in quants:
            own = journal(d / f"fidelity-{t}-with-{t}" / "fidelity.jsonl")
            dt, layer = deltas(d / f"vectors-from-{t}.gguf")
            for s in quants:
                j = journal(d / f"fidelity-{t}-with-{s}" / "fidelity.jsonl")
                ids = sorted(set(j["cmrm"]) & set(own["cmrm"]) & set(j["image"]))
                img = mean_ci([j["image"][i] for i in ids])
                kl = mean_ci([j["cmrm"][i] for i in ids])
                cut = mean_ci([j["image"][i] - j["cmrm"][i] for i in ids])
                diff = mean_ci([j["cmrm"][i] - own["cmrm"][i] for i in ids])
                ds, _ = deltas(d / f"vectors-from-{s}.gguf")
                per_layer = [cos(ds[l], dt[l]) for l in range(len(dt))]
                ratio = np.linalg.norm(ds[layer]) / np.linalg.norm(dt[layer])
                own_mark = " (own)" if s == t else ""
                paired = "-" if s == t else f"{diff[0]:+.4f} ± {diff[1]:.4f}"
                print(f"| {t} | {s}{own_mark} | {len(ids)} | {img[0]:.3f} | {kl[0]:.3f} ± {kl[1]:.3f} "
                      f"| {cut[0]:.3f} ± {cut[1]:.3f} | {paired} | {per_layer[layer]:.4f} | {ratio:.3f} "
                      f"| {np.mean(per_layer):.4f} |")


if __name__ == "__main__":
    main()
