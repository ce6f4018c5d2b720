#!/usr/bin/env python3
"""Write a deterministic, seeded, synthetic mmproj (vision tower + projector) for llama.cpp.

Each file is a small vision tower with random weights: it loads in llama.cpp's
clip/mtmd code unpatched and turns an image into embeddings of width --n-embd,
but it has learned nothing. It exists only to test the plumbing. Tensor names,
keys and shapes are the ones tools/mtmd/clip.cpp (load_hparams, load_tensors)
and the graph in tools/mtmd/models/ read for each projector type. Shapes below
are numpy's; ggml's ne is the reverse. Every vision FFN has F != D, or clip.cpp
would take ffn_down for a mis-named legacy ffn_up and swap the two.

--family mlp (default; LLaVA-1.5, models/llava.cpp):
  image 224x224, patch 16 -> 14x14 = 196 patches; D=64, 4 heads, F=128, 3 blocks
  (the graph runs the first n_layer-1 = 2 blocks, as LLaVA takes the penultimate
  layer; all 3 must exist), class embedding + pre-LN like CLIP ViT, no post-LN,
  gelu_quick FFN, then mm.0 (D->H=256), GELU, mm.2 (H->E). Any image is
  letterboxed to 224x224: one chunk of 196 tokens.
  --shape llava15 gives CLIP ViT-L/14-336's real shape instead, for benchmarks
  of image encoding: image 336, patch 14 -> 576 patches, D=1024, 16 heads,
  F=4096, 24 blocks (23 run), mm.0 D->E, mm.2 E->E (LLaVA's mlp2x_gelu); 2-D
  and 4-D weights F16, 1-D tensors F32 (general.file_type 1), ~0.6 GB.
--family llava-next (LLaVA-1.6 style slicing):
  the mlp tower plus clip.vision.image_grid_pinpoints (224x448, 448x224,
  448x448, 672x224, 224x672; multiples of 224, as the llava graph needs square
  slices). An image larger than 224 in either side takes llava-uhd slicing:
  the pinpoint that keeps most pixels, cut into 224x224 slices, each its own
  chunk of 196 tokens, then a 224x224 overview chunk (a 336x336 photo: 448x448,
  2x2 slices + overview = 5 chunks). No new tensors and no special tokens.
--family idefics3 (SmolVLM / Idefics3, models/siglip.cpp):
  SigLIP-style ViT: tile 256x256, patch 16 -> 16x16 = 256 patches (conv with
  bias, learned position embedding, no class embedding, no pre-LN), D=64,
  4 heads, F=128, 2 blocks (all run), gelu (tanh) FFN, post-LN, then pixel
  shuffle by 4 (4x4 patches -> one 1024-wide token) and mm.model.fc
  (1024->E, no bias): 16 tokens per tile. Preprocessing (preproc_image_size
  512): resize so the long side is 512, cut into a grid of at most 2x2 tiles,
  plus a 256x256 overview; one chunk per tile (a 336x336 photo: 5 chunks of
  16 tokens). With --image-min/max-tokens mtmd slices differently and grids
  can be larger. The text model needs the tokens <fake_token_around_image>,
  <global-img> and <row_R_col_C> (R, C <= 2): scripts/rewrite_gguf.py
  --idefics3-tokens adds them to SmolLM2.
--family qwen2.5vl (Qwen2.5-VL, projector "qwen2.5vl_merger", models/qwen2vl.cpp):
  patch 14, two patch kernels (the halves of HF's temporal Conv3d, summed on a
  still image), no bias, no class or position embedding; D=64, 4 heads, F=128,
  2 blocks, RMSNorm, q/k/v with bias, 2-D M-RoPE (rows on the first half of the
  rotary pairs, columns on the second), window attention (n_wa_pattern 2:
  block 0 attends within 112x112-pixel windows, block 1 to everything),
  SwiGLU FFN, post-RMSNorm, then 2x2 patches -> one token through the merger
  mm.0 (4D->H=256), GELU, mm.2 (H->E). Dynamic resolution: the image is
  resized to multiples of 28 and is one chunk of (w/28)x(h/28) tokens whose
  M-RoPE positions span only max(w, h)/28 when the text model is qwen2vl
  (scripts/rewrite_gguf.py --qwen2vl).

Output scale: after building the weights, a numpy mirror of the tower runs on
two calibration inputs (seeded uniform noise and flat mid-grey, normalised
with the tower's mean/std; one tile for the fixed-size towers, 280x224 for
qwen2.5vl so that windows are partial) and the last projection (mm.2 weight
and bias; mm.model.fc for idefics3) is multiplied by one factor so that the
mean L2 norm of the image embeddings equals the target norm: the mean L2 norm
of the rows of the text model's token_embd.weight when --reference-model is
given (SmolLM2-135M Q4_1: 3.20; measured at generation time), else
--target-norm (default 1.0). Target and factor are rounded (3 and 4
significant digits) so that the bytes do not depend on the last bits of the
BLAS in use. The mirrors are written to follow the graphs op for op (they
were not compared with llama.cpp's embeddings, which cmrm does not expose),
with two shortcuts that should leave the output unchanged: qwen2.5vl's window
attention is a mask on the tokens in their order instead of llama.cpp's
permutation of the tokens into window order and back, and llava15's mirror
runs in float32 on the F16-rounded weights (its norm agrees with float64 to 6
digits; 10-20 s per calibration image on a busy 2-core machine).
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass

import gguf
import numpy as np

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class Shape:
    """ViT shape: image (tile) size, patch, width, heads, FFN width, blocks, norm eps."""
    S: int
    P: int
    D: int
    heads: int
    F: int
    layers: int
    eps: float


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


class Draw:
    """Seeded weights. float64 for the small towers (the mlp bytes depend on it);
    with f16, float32 draws, and tensors of 2 or more dimensions stored as float16."""

    def __init__(self, seed, f16=False):
        self.rng = np.random.default_rng(seed)
        self.f16 = f16

    def normal(self, std, shape):
        if not self.f16:
            return self.rng.normal(0, std, shape)
        x = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        return x.astype(np.float16) if x.ndim > 1 else x

    def lin(self, out, inp):  # weight (out, in) ~ N(0, 1/in), bias (out,) ~ N(0, 0.02^2)
        return self.normal(inp ** -0.5, (out, inp)), self.normal(0.02, out)


# --- numpy pieces shared by the mirrors ----------------------------------------

def layer_norm(x, w, b, eps):
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w + b


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def gelu(x):  # ggml_gelu: the tanh approximation
    return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


def heads(x, n):
    """(tokens, D) -> (n, tokens, D / n)"""
    return x.reshape(x.shape[0], n, -1).transpose(1, 0, 2)


def attend(q, k, v, mask=None):
    """Softmax attention per head on (heads, tokens, d_head); mask: True = may attend.
    Returns (tokens, D)."""
    s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    o = (s / s.sum(-1, keepdims=True)) @ v
    return o.transpose(1, 0, 2).reshape(q.shape[1], -1)


def patchify(img, P, mean, std):
    """(h, w, 3) image in [0, 1] -> (h/P, w/P, 3*P*P) normalised patches, in the
    order of a conv kernel (D, 3, P, P) flattened."""
    h, w = img.shape[0] // P, img.shape[1] // P
    x = ((img - mean) / std).astype(img.dtype).transpose(2, 0, 1).reshape(3, h, P, w, P)
    return x.transpose(1, 3, 0, 2, 4).reshape(h, w, -1)


class Tower:
    """A projector family. build(draw) fills self.w (name -> array, in file order),
    forward(img) is the numpy mirror of llama.cpp's graph, keys(w) writes the
    family's keys; scaled names the tensors the output scale multiplies, calib_hw
    the calibration image's (height, width)."""
    mean, std = CLIP_MEAN, CLIP_STD
    f16 = False

    def __init__(self, E, shape):
        self.E, self.s = E, shape

    def t(self, name):
        return self.w[name]

    def lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def calib_hw(self):
        return self.s.S, self.s.S

    def common_keys(self, w):
        s = self.s
        for k, v in [("embedding_length", s.D), ("feed_forward_length", s.F),
                     ("block_count", s.layers), ("projection_dim", self.E),
                     ("attention.head_count", s.heads), ("image_size", s.S),
                     ("patch_size", s.P)]:
            w.add_uint32("clip.vision." + k, v)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", s.eps)
        w.add_array("clip.vision.image_mean", self.mean)
        w.add_array("clip.vision.image_std", self.std)


class Llava(Tower):
    """mlp (LLaVA-1.5), optionally with grid pinpoints (LLaVA-NeXT slicing)."""
    name = "synthetic-llava-mmproj"
    scaled = ("mm.2.weight", "mm.2.bias")

    def __init__(self, E, shape, H, pinpoints=None, f16=False):
        super().__init__(E, shape)
        self.H, self.pinpoints, self.f16 = H, pinpoints, f16
        if pinpoints:
            self.name = "synthetic-llava-next-mmproj"
        elif f16:
            self.name = "synthetic-llava15-shape-mmproj"

    def build(self, d):
        s = self.s
        N = (s.S // s.P) ** 2
        ones, zeros = (np.ones(s.D, np.float32), np.zeros(s.D, np.float32)) if self.f16 else \
            (np.ones(s.D), np.zeros(s.D))
        t = {"v.class_embd": d.normal(0.1, s.D),
             "v.patch_embd.weight": d.normal((3 * s.P * s.P) ** -0.5, (s.D, 3, s.P, s.P)),
             "v.position_embd.weight": d.normal(0.1, (N + 1, s.D)),
             "v.pre_ln.weight": ones, "v.pre_ln.bias": zeros}
        for i in range(s.layers):
            b = f"v.blk.{i}."
            for name, (o, n) in [("attn_q", (s.D, s.D)), ("attn_k", (s.D, s.D)),
                                 ("attn_v", (s.D, s.D)), ("attn_out", (s.D, s.D)),
                                 ("ffn_up", (s.F, s.D)), ("ffn_down", (s.D, s.F))]:
                t[b + name + ".weight"], t[b + name + ".bias"] = d.lin(o, n)
            for ln in ("ln1", "ln2"):
                t[b + ln + ".weight"], t[b + ln + ".bias"] = ones, zeros
        t["mm.0.weight"], t["mm.0.bias"] = d.lin(self.H, s.D)
        t["mm.2.weight"], t["mm.2.bias"] = d.lin(self.E, self.H)
        self.w = t

    def forward(self, img):
        """models/llava.cpp for one (S, S, 3) image in [0, 1]."""
        s, t = self.s, self.t
        ln = lambda x, n: layer_norm(x, t(n + ".weight"), t(n + ".bias"), s.eps)
        N = (s.S // s.P) ** 2
        x = patchify(img, s.P, self.mean, self.std).reshape(N, -1)
        x = x @ t("v.patch_embd.weight").reshape(s.D, -1).T
        h = np.concatenate([x, t("v.class_embd")[None]]) + t("v.position_embd.weight")
        h = ln(h, "v.pre_ln")
        for i in range(s.layers - 1):
            b = f"v.blk.{i}."
            a = ln(h, b + "ln1")
            h = h + self.lin(attend(*(heads(self.lin(a, b + n), s.heads)
                                      for n in ("attn_q", "attn_k", "attn_v"))), b + "attn_out")
            a = self.lin(ln(h, b + "ln2"), b + "ffn_up")
            h = h + self.lin(a / (1 + np.exp(-1.702 * a)), b + "ffn_down")  # gelu_quick
        y = self.lin(h[1:N + 1], "mm.0")  # "patches" rows are i + 1 when there is a class embedding
        return self.lin(gelu(y), "mm.2")

    def keys(self, w):
        w.add_bool("clip.has_llava_projector", True)
        w.add_string("clip.projector_type", "mlp")
        w.add_bool("clip.use_gelu", False)  # vision FFN uses gelu_quick, like CLIP ViT-L
        self.common_keys(w)
        if self.pinpoints:
            w.add_array("clip.vision.image_grid_pinpoints", self.pinpoints)


class Idefics3(Tower):
    """SigLIP ViT + pixel shuffle + mm.model.fc."""
    name = "synthetic-idefics3-mmproj"
    mean, std = SIGLIP_MEAN, SIGLIP_STD
    scaled = ("mm.model.fc.weight",)

    def __init__(self, E, shape, scale_factor, longest_edge):
        super().__init__(E, shape)
        self.sf, self.le = scale_factor, longest_edge

    def build(self, d):
        s = self.s
        N = (s.S // s.P) ** 2
        t = {"v.patch_embd.weight": d.normal((3 * s.P * s.P) ** -0.5, (s.D, 3, s.P, s.P)),
             "v.patch_embd.bias": d.normal(0.02, s.D),
             "v.position_embd.weight": d.normal(0.1, (N, s.D))}
        for i in range(s.layers):
            b = f"v.blk.{i}."
            for name, (o, n) in [("attn_q", (s.D, s.D)), ("attn_k", (s.D, s.D)),
                                 ("attn_v", (s.D, s.D)), ("attn_out", (s.D, s.D)),
                                 ("ffn_up", (s.F, s.D)), ("ffn_down", (s.D, s.F))]:
                t[b + name + ".weight"], t[b + name + ".bias"] = d.lin(o, n)
            for ln in ("ln1", "ln2"):
                t[b + ln + ".weight"], t[b + ln + ".bias"] = np.ones(s.D), np.zeros(s.D)
        t["v.post_ln.weight"], t["v.post_ln.bias"] = np.ones(s.D), np.zeros(s.D)
        k = s.D * self.sf ** 2
        t["mm.model.fc.weight"] = d.normal(k ** -0.5, (self.E, k))
        self.w = t

    def forward(self, img):
        """models/siglip.cpp (IDEFICS3) for one (S, S, 3) tile in [0, 1]."""
        s, t, f = self.s, self.t, self.sf
        ln = lambda x, n: layer_norm(x, t(n + ".weight"), t(n + ".bias"), s.eps)
        g = s.S // s.P
        x = patchify(img, s.P, self.mean, self.std).reshape(g * g, -1)
        h = x @ t("v.patch_embd.weight").reshape(s.D, -1).T + t("v.patch_embd.bias")
        h = h + t("v.position_embd.weight")
        for i in range(s.layers):
            b = f"v.blk.{i}."
            a = ln(h, b + "ln1")
            h = h + self.lin(attend(*(heads(self.lin(a, b + n), s.heads)
                                      for n in ("attn_q", "attn_k", "attn_v"))), b + "attn_out")
            h = h + self.lin(gelu(self.lin(ln(h, b + "ln2"), b + "ffn_up")), b + "ffn_down")
        h = ln(h, "v.post_ln")
        # pixel shuffle (clip.cpp build_patch_merge_permute): token (yb, xb) in raster
        # order, feature c + D*dx + D*f*dy
        h = h.reshape(g // f, f, g // f, f, s.D).transpose(0, 2, 1, 3, 4).reshape(-1, f * f * s.D)
        return h @ t("mm.model.fc.weight").T

    def keys(self, w):
        w.add_string("clip.projector_type", "idefics3")
        w.add_bool("clip.use_gelu", True)
        self.common_keys(w)
        w.add_uint32("clip.vision.projector.scale_factor", self.sf)
        w.add_uint32("clip.vision.preproc_image_size", self.le)


class Qwen25VL(Tower):
    """Qwen2.5-VL ViT (M-RoPE, window attention, SwiGLU) + 2x2 patch merger."""
    name = "synthetic-qwen2.5vl-mmproj"
    scaled = ("mm.2.weight", "mm.2.bias")
    WINDOW = 112  # pixels, fixed in clip.cpp for qwen2.5vl

    def __init__(self, E, shape, H, wa_pattern):
        super().__init__(E, shape)
        self.H, self.wa = H, wa_pattern

    def calib_hw(self):
        return 224, 280  # 8x10 merged tokens: windows of 4x4, 4x4 and 4x2

    def build(self, d):
        s = self.s
        k = (2 * 3 * s.P * s.P) ** -0.5  # the two kernels are summed
        t = {"v.patch_embd.weight": d.normal(k, (s.D, 3, s.P, s.P)),
             "v.patch_embd.weight.1": d.normal(k, (s.D, 3, s.P, s.P))}
        for i in range(s.layers):
            b = f"v.blk.{i}."
            for name, (o, n) in [("attn_q", (s.D, s.D)), ("attn_k", (s.D, s.D)),
                                 ("attn_v", (s.D, s.D)), ("attn_out", (s.D, s.D)),
                                 ("ffn_gate", (s.F, s.D)), ("ffn_up", (s.F, s.D)),
                                 ("ffn_down", (s.D, s.F))]:
                t[b + name + ".weight"], t[b + name + ".bias"] = d.lin(o, n)
            t[b + "ln1.weight"], t[b + "ln2.weight"] = np.ones(s.D), np.ones(s.D)
        t["v.post_ln.weight"] = np.ones(s.D)
        t["mm.0.weight"], t["mm.0.bias"] = d.lin(self.H, 4 * s.D)
        t["mm.2.weight"], t["mm.2.bias"] = d.lin(self.E, self.H)
        self.w = t

    def rope(self, x, py, px):
        """GGML_ROPE_TYPE_VISION, base 10000, on (heads, tokens, d_head): pair j is
        (j, j + d_head/2); pairs j < d_head/4 turn with the row, the rest with the
        column, at frequency 10000^(-4 (j mod d_head/4) / d_head)."""
        half = x.shape[-1] // 2
        j = np.arange(half)
        q = half // 2
        ang = np.where(j < q, py[:, None], px[:, None]) * 10000.0 ** (-2 * (j % q) / half)
        cos, sin = np.cos(ang), np.sin(ang)
        x0, x1 = x[..., :half], x[..., half:]
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1)

    def forward(self, img):
        """models/qwen2vl.cpp (QWEN25VL) for one (h, w, 3) image in [0, 1], h and w
        multiples of 2P. Tokens are kept in llama.cpp's order (2x2 groups, groups in
        raster order); the window attention is a mask on that order."""
        s, t = self.s, self.t
        gy, gx = img.shape[0] // s.P, img.shape[1] // s.P
        kern = (t("v.patch_embd.weight") + t("v.patch_embd.weight.1")).reshape(s.D, -1)
        x = patchify(img, s.P, self.mean, self.std) @ kern.T

        def group(a):  # (gy, gx, ...) -> (gy*gx, ...) in 2x2 groups
            a = a.reshape(gy // 2, 2, gx // 2, 2, *a.shape[2:]).transpose(0, 2, 1, 3, *range(4, a.ndim + 2))
            return a.reshape(gy * gx, *a.shape[4:])

        yy, xx = np.meshgrid(np.arange(gy), np.arange(gx), indexing="ij")
        h, py, px = group(x), group(yy), group(xx)
        gw = self.WINDOW // s.P // 2  # window side in merged tokens
        win = (py // 2 // gw) * gx + px // 2 // gw
        mask = win[:, None] == win[None, :]
        for i in range(s.layers):
            b = f"v.blk.{i}."
            a = rms_norm(h, t(b + "ln1.weight"), s.eps)
            q, k, v = (heads(self.lin(a, b + n), s.heads) for n in ("attn_q", "attn_k", "attn_v"))
            full = (i + 1) % self.wa == 0
            o = attend(self.rope(q, py, px), self.rope(k, py, px), v, None if full else mask)
            h = h + self.lin(o, b + "attn_out")
            a = rms_norm(h, t(b + "ln2.weight"), s.eps)
            g = self.lin(a, b + "ffn_gate")
            h = h + self.lin(g / (1 + np.exp(-g)) * self.lin(a, b + "ffn_up"), b + "ffn_down")
        h = rms_norm(h, t("v.post_ln.weight"), s.eps).reshape(-1, 4 * s.D)
        return self.lin(gelu(self.lin(h, "mm.0")), "mm.2")

    def keys(self, w):
        w.add_string("clip.projector_type", "qwen2.5vl_merger")
        w.add_bool("clip.use_silu", True)
        self.common_keys(w)  # image_size is required but unused by qwen2.5vl
        w.add_uint32("clip.vision.spatial_merge_size", 2)
        w.add_uint32("clip.vision.n_wa_pattern", self.wa)


TINY = Shape(S=224, P=16, D=64, heads=4, F=128, layers=3, eps=1e-5)
LLAVA15 = Shape(S=336, P=14, D=1024, heads=16, F=4096, layers=24, eps=1e-5)


def make_tower(family, shape, E):
    if family == "mlp" and shape == "llava15":
        return Llava(E, LLAVA15, H=E, f16=True)
    if shape != "tiny":
        raise SystemExit(f"--shape {shape} exists only for --family mlp")
    if family == "mlp":
        return Llava(E, TINY, H=256)
    if family == "llava-next":
        S = TINY.S
        return Llava(E, TINY, H=256, pinpoints=[S, 2 * S, 2 * S, S, 2 * S, 2 * S, 3 * S, S, S, 3 * S])
    if family == "idefics3":
        return Idefics3(E, Shape(S=256, P=16, D=64, heads=4, F=128, layers=2, eps=1e-6),
                        scale_factor=4, longest_edge=512)
    return Qwen25VL(E, Shape(S=224, P=14, D=64, heads=4, F=128, layers=2, eps=1e-6),
                    H=256, wa_pattern=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["mlp", "llava-next", "idefics3", "qwen2.5vl"],
                    default="mlp", help="projector family (default mlp)")
    ap.add_argument("--shape", choices=["tiny", "llava15"], default="tiny",
                    help="llava15: CLIP ViT-L/14-336's real shape, F16 (mlp only; ~0.6 GB)")
    ap.add_argument("--n-embd", type=int, required=True, help="text model's embedding width")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reference-model", help="text model GGUF: target norm from its token_embd")
    ap.add_argument("--target-norm", type=float, default=1.0)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    tw = make_tower(args.family, args.shape, args.n_embd)
    target = args.target_norm
    if args.reference_model:
        target = token_embd_norm(args.reference_model, args.n_embd)
    target = sig(target, 3)

    tw.build(Draw(args.seed, tw.f16))
    rng = np.random.default_rng(args.seed + 1000)
    hw = tw.calib_hw()
    calib = [rng.uniform(0, 1, (*hw, 3)), np.full((*hw, 3), 0.5)]
    if tw.f16:
        calib = [im.astype(np.float32) for im in calib]
    norm = np.mean([np.linalg.norm(tw.forward(im), axis=1).mean() for im in calib])
    scale = sig(target / norm, 4)
    for name in tw.scaled:
        tw.w[name] = tw.w[name] * scale

    tmp = f"{args.output}.tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, "clip")
    w.add_string("general.name", tw.name)
    w.add_description(f"Synthetic test tower with random weights (seed {args.seed}); "
                      f"not a trained model. Image embedding mean L2 norm ~{target}.")
    w.add_file_type(1 if tw.f16 else 0)  # 1: F16 weights, F32 1-D tensors; 0: all F32
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    tw.keys(w)
    w.add_uint32("cmrm.synthetic.seed", args.seed)
    w.add_float32("cmrm.synthetic.target_norm", target)
    w.add_float32("cmrm.synthetic.output_scale", scale)
    for name, arr in tw.w.items():
        dtype = np.float16 if arr.dtype == np.float16 else np.float32
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, args.output)
    print(f"{args.output}: target norm {target}, calibration norm {norm:.4f}, scale {scale}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
