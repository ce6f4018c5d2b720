#!/usr/bin/env python3
"""Write a deterministic, seeded, synthetic LLaVA-1.5 style mmproj (projector "mlp").

The file is a tiny CLIP-like vision tower with random weights: it loads in
llama.cpp's clip/mtmd code unpatched, and turns an image into 196 embeddings of
width --n-embd, but it has learned nothing. It exists only to test the plumbing.

Layout (what llama.cpp tools/mtmd/clip.cpp load_hparams/load_tensors and
models/llava.cpp read for PROJECTOR_TYPE_MLP):
  image 224x224, patch 16 -> 14x14 = 196 patches; D=64, 4 heads, F=128, 3 blocks
  (the graph runs the first n_layer-1 = 2 blocks, as LLaVA takes the penultimate
  layer; all 3 must exist), class embedding + pre-LN like CLIP ViT, no post-LN,
  then mm.0 (D->H=256), GELU, mm.2 (H->E).

Output scale: after building the weights, the tower is run in numpy on two
calibration inputs (seeded uniform noise and flat mid-grey, CLIP-normalised)
and mm.2 weight and bias are multiplied by one factor so that the mean L2 norm
of the image embeddings equals the target norm: the mean L2 norm of the rows of
the text model's token_embd.weight when --reference-model is given (SmolLM2-135M
Q8_0: 3.20; measured at generation time), else --target-norm (default 1.0).
Target and factor are rounded (3 and 4 significant digits) so that the bytes
do not depend on the last bits of the BLAS in use.
"""
import argparse
import os
import sys

import gguf
import numpy as np

S, P, D, HEADS, F, LAYERS, H = 224, 16, 64, 4, 128, 3, 256
N = (S // P) ** 2
EPS = 1e-5
MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's
STD = [0.26862954, 0.26130258, 0.27577711]


def sig(x, n):
    return float(f"{x:.{n}g}")


def token_embd_norm(path, n_embd):
    """Mean L2 norm of (up to ~8k evenly spaced) rows of token_embd.weight."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    if int(t.shape[0]) != n_embd:
        raise SystemExit(f"{path}: n_embd is {int(t.shape[0])}, not {n_embd}")
    rows = t.data[:: max(1, t.data.shape[0] // 8192)]
    w = gguf.quants.dequantize(rows, t.tensor_type).astype(np.float64)
    return float(np.linalg.norm(w, axis=1).mean())


def build(E, seed):
    rng = np.random.default_rng(seed)

    def lin(out, inp):  # weight (out, in) ~ N(0, 1/in), bias (out,) ~ N(0, 0.02^2)
        return rng.normal(0, inp ** -0.5, (out, inp)), rng.normal(0, 0.02, out)

    t = {"v.class_embd": rng.normal(0, 0.1, D),
         "v.patch_embd.weight": rng.normal(0, (3 * P * P) ** -0.5, (D, 3, P, P)),
         "v.position_embd.weight": rng.normal(0, 0.1, (N + 1, D)),
         "v.pre_ln.weight": np.ones(D), "v.pre_ln.bias": np.zeros(D)}
    for i in range(LAYERS):
        b = f"v.blk.{i}."
        for name, (o, n) in [("attn_q", (D, D)), ("attn_k", (D, D)), ("attn_v", (D, D)),
                             ("attn_out", (D, D)), ("ffn_up", (F, D)), ("ffn_down", (D, F))]:
            t[b + name + ".weight"], t[b + name + ".bias"] = lin(o, n)
        for ln in ("ln1", "ln2"):
            t[b + ln + ".weight"], t[b + ln + ".bias"] = np.ones(D), np.zeros(D)
    t["mm.0.weight"], t["mm.0.bias"] = lin(H, D)
    t["mm.2.weight"], t["mm.2.bias"] = lin(E, H)
    return t


def forward(t, img):
    """numpy mirror of models/llava.cpp for one (S, S, 3) image in [0, 1]."""
    def ln(x, w, b):
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * t[w] + t[b]

    def lin(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    g = S // P
    x = ((img - MEAN) / STD).transpose(2, 0, 1).reshape(3, g, P, g, P)
    x = x.transpose(1, 3, 0, 2, 4).reshape(N, -1) @ t["v.patch_embd.weight"].reshape(D, -1).T
    h = np.concatenate([x, t["v.class_embd"][None]]) + t["v.position_embd.weight"]
    h = ln(h, "v.pre_ln.weight", "v.pre_ln.bias")
    for i in range(LAYERS - 1):
        b = f"v.blk.{i}."
        a = ln(h, b + "ln1.weight", b + "ln1.bias")
        q, k, v = (lin(a, b + n).reshape(-1, HEADS, D // HEADS).transpose(1, 0, 2)
                   for n in ("attn_q", "attn_k", "attn_v"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D // HEADS)
        s = np.exp(s - s.max(-1, keepdims=True))
        o = (s / s.sum(-1, keepdims=True)) @ v
        h = h + lin(o.transpose(1, 0, 2).reshape(-1, D), b + "attn_out")
        a = lin(ln(h, b + "ln2.weight", b + "ln2.bias"), b + "ffn_up")
        h = h + lin(a / (1 + np.exp(-1.702 * a)), b + "ffn_down")  # gelu_quick
    y = lin(h[1:N + 1], "mm.0")  # "patches" rows are i + 1 when there is a class embedding
    y = 0.5 * y * (1 + np.tanh(0.7978845608 * (y + 0.044715 * y ** 3)))
    return lin(y, "mm.2")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-embd", type=int, required=True, help="text model's embedding width")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reference-model", help="text model GGUF: target norm from its token_embd")
    ap.add_argument("--target-norm", type=float, default=1.0)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    target = args.target_norm
    if args.reference_model:
        target = token_embd_norm(args.reference_model, args.n_embd)
    target = sig(target, 3)

    t = build(args.n_embd, args.seed)
    rng = np.random.default_rng(args.seed + 1000)
    calib = [rng.uniform(0, 1, (S, S, 3)), np.full((S, S, 3), 0.5)]
    norm = np.mean([np.linalg.norm(forward(t, im), axis=1).mean() for im in calib])
    scale = sig(target / norm, 4)
    t["mm.2.weight"] *= scale
    t["mm.2.bias"] *= scale

    tmp = f"{args.output}.tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, "clip")
    w.add_string("general.name", "synthetic-llava-mmproj")
    w.add_description(f"Synthetic test tower with random weights (seed {args.seed}); "
                      f"not a trained model. Image embedding mean L2 norm ~{target}.")
    w.add_file_type(0)  # all F32
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_llava_projector", True)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", False)  # vision FFN uses gelu_quick, like CLIP ViT-L
    for k, v in [("embedding_length", D), ("feed_forward_length", F), ("block_count", LAYERS),
                 ("projection_dim", args.n_embd), ("attention.head_count", HEADS),
                 ("image_size", S), ("patch_size", P)]:
        w.add_uint32("clip.vision." + k, v)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", EPS)
    w.add_array("clip.vision.image_mean", MEAN)
    w.add_array("clip.vision.image_std", STD)
    w.add_uint32("cmrm.synthetic.seed", args.seed)
    w.add_float32("cmrm.synthetic.target_norm", target)
    w.add_float32("cmrm.synthetic.output_scale", scale)
    for name, arr in t.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, args.output)
    print(f"{args.output}: target norm {target}, calibration norm {norm:.4f}, scale {scale}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
