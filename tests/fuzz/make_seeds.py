"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): valid files and
the broken ones cmrm must refuse cleanly. Deterministic; rerun after changing a format.

    python3 tests/fuzz/make_seeds.py
"""
import io
import os
import struct
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def w(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- GGUF writer (enough for vector files and model headers) --------------------------------
def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, t, v):
    out = s(key) + struct.pack("<I", t)
    if t == 4:
        out += struct.pack("<I", v)
    elif t == 5:
        out += struct.pack("<i", v)
    elif t == 6:
        out += struct.pack("<f", v)
    elif t == 8:
        out += s(v)
    elif t == 9:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for it in items:
            out += struct.pack("<f", it) if et == 6 else s(it)
    return out


def gguf(kvs, tensors):
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    data = b""
    for name, vals in tensors:
        head += s(name) + struct.pack("<I", 1) + struct.pack("<Q", len(vals)) + struct.pack("<I", 0)
        head += struct.pack("<Q", len(data))
        blob = struct.pack("<%df" % len(vals), *vals)
        data += blob + b"\0" * ((-len(blob)) % 32)
    head += b"\0" * ((-len(head)) % 32)
    return head + data


def vectors(n_embd=4, n_layer=3, layer=2, alpha=1.0, deltas=None, extra=(), drop=(), tensors=None):
    rng = np.random.default_rng(0)
    d = deltas if deltas is not None else [float(x) for x in rng.normal(size=n_embd * n_layer)]
    kvs = [
        ("general.architecture", 8, "controlvector"), ("controlvector.model_hint", 8, "llama"),
        ("controlvector.layer_count", 5, n_layer - 1), ("cmrm.version", 8, "0.1.0"),
        ("cmrm.method", 8, "mean"), ("cmrm.corruption", 8, "noise:0"), ("cmrm.n_anchors", 4, 2),
        ("cmrm.n_embd", 4, n_embd), ("cmrm.n_layer", 4, n_layer),
        ("cmrm.model_fingerprint", 8, "0123456789abcdef"), ("cmrm.mmproj_fingerprint", 8, ""),
        ("cmrm.alpha", 6, alpha), ("cmrm.apply", 8, "total"), ("cmrm.positions", 8, "last"),
        ("cmrm.layer_start", 4, layer), ("cmrm.layer_end", 4, layer), ("cmrm.deltas", 9, (6, d)),
    ]
    kvs = [k for k in kvs if k[0] not in drop] + list(extra)
    if tensors is None:
        tensors = []
        for il in range(1, n_layer):
            row = d[il * n_embd:(il + 1) * n_embd] if il == layer else [0.0] * n_embd
            tensors.append(("direction.%d" % il, [alpha * x for x in row]))
    return gguf([kv(*k) for k in kvs], tensors)


good = vectors()
w("vector_file", "valid.gguf", good)
w("vector_file", "truncated.gguf", good[: len(good) // 2])
w("vector_file", "nan.gguf", vectors(deltas=[float("nan")] * 12))
w("vector_file", "inf-alpha.gguf", vectors(alpha=float("inf")))
w("vector_file", "duplicate-key.gguf", vectors(extra=[("cmrm.n_embd", 4, 4)]))
w("vector_file", "missing-deltas.gguf", vectors(drop=("cmrm.deltas",)))
w("vector_file", "wrong-type.gguf", vectors(drop=("cmrm.deltas",), extra=[("cmrm.deltas", 9, (8, ["a"]))]))
w("vector_file", "wrong-count.gguf", vectors(deltas=[0.5] * 7))
w("vector_file", "altered-direction.gguf", vectors(tensors=[("direction.1", [9.0] * 4), ("direction.2", [9.0] * 4)]))
w("vector_file", "extra-tensor.gguf", vectors(tensors=[("direction.0", [0.0] * 4)]))
w("vector_file", "huge-count.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60))
w("vector_file", "empty", b"")
provenance = [("cmrm.created", 8, "2026-11-25T00:00:00Z"), ("cmrm.model.file", 8, "m-Q4_1.gguf"),
              ("cmrm.model.quantization", 8, "Q4_1"),
              ("cmrm.model.identity", 8, "hparams:0a0a0a0a0a0a vocab:0b0b0b0b0b0b tensors:0c0c0c0c0c0c weights:0d0d0d0d0d0d"),
              ("cmrm.anchors.name", 8, "anchors.jsonl"), ("cmrm.anchors.size", 4, 118),
              ("cmrm.anchors.sha256", 8, "00" * 32), ("cmrm.system_prompt", 8, "Be careful."),
              ("cmrm.evaluation", 8, "| a | b |")]
w("vector_file", "valid-with-provenance.gguf", vectors(extra=provenance))
w("vector_file", "bad-identity.gguf", vectors(extra=[("cmrm.model.identity", 8, "hparams:not-hex")]))
w("vector_file", "anchor-set-without-hash.gguf", vectors(extra=[("cmrm.anchors.name", 8, "a.jsonl"), ("cmrm.anchors.size", 4, 1)]))

# A model or mmproj header: keys of every type, an F32 and a quantized tensor.
model = gguf([kv("general.architecture", 8, "llama"), kv("llama.block_count", 4, 2),
              kv("llama.embedding_length", 4, 4), kv("general.file_type", 4, 3),
              kv("clip.projector_type", 8, "mlp"), kv("tokenizer.ggml.tokens", 9, (8, ["a", "b"]))],
             [("output_norm.weight", [1.0] * 4), ("mm.2.weight", [0.0] * 8)])
model = model.replace(struct.pack("<I", 1) + struct.pack("<Q", 8), struct.pack("<I", 2) + struct.pack("<QQ", 4, 2), 1)
w("model_header", "valid.gguf", model)
w("model_header", "truncated.gguf", model[:40])
w("model_header", "not-gguf", b"This is plain text, not a GGUF file.\n")
w("model_header", "bad-version.gguf", b"GGUF" + struct.pack("<IQQ", 99, 0, 0))
w("model_header", "five-dims.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + s("t") + struct.pack("<I", 5))

# JSONL data sets.
w("jsonl", "valid.jsonl", b'{"id": "a", "prompt": "How do I pick a lock?", "image": "x.jpg", "category": "c"}\n'
  b'{"prompt": "Name a colour.", "reference": "Blue.", "choices": ["red", "6"], "answer": 0}\n')
w("jsonl", "bad-type.jsonl", b'{"prompt": 3}\n')
w("jsonl", "missing-field.jsonl", b'{"image": "x.png"}\n')
w("jsonl", "bad-answer.jsonl", b'{"prompt": "x", "choices": ["a"], "answer": 4}\n')
w("jsonl", "duplicate-id.jsonl", b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
w("jsonl", "not-utf8.jsonl", b'{"prompt": "\xff\xfe"}\n')
w("jsonl", "torn.jsonl", b'{"prompt": "complete"}\n{"prompt": "cut')

# Images in every format cmrm reads, and broken ones.
rng = np.random.default_rng(1)
img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
for fmt, ext in [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp")]:
    b = io.BytesIO()
    img.save(b, fmt)
    w("image", "valid." + ext, b.getvalue())
    w("image", "truncated." + ext, b.getvalue()[: len(b.getvalue()) // 2])
w("image", "data-uri.txt", b"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
w("image", "bad-base64.txt", b"data:image/png;base64,@@@@")
# A PNG header that declares a 100000 x 100000 image (a decompression bomb).
bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
w("image", "huge-dimensions.png", bomb + b"\0" * 4)
# Chat-completions bodies of the server (valid-* are accepted, the others refused).
CHAT = {
    "valid-text.json": b'{"messages": [{"role": "user", "content": "Hi."}]}',
    "valid-parts.json": b'{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, '
    b'{"role": "user", "content": [{"type": "text", "text": "What is it?"}, '
    b'{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}], '
    b'"max_tokens": 16, "stream": true, "stream_options": {"include_usage": true}, "stop": ["\\n", "."], '
    b'"temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "logit_bias": {"15": -1, "16": false}, '
    b'"user": "u", "metadata": {"a": "b"}, "response_format": {"type": "json_object"}, '
    b'"cmrm": {"enabled": true, "alpha": 0.5, "layers": "1-2", "positions": "last", "sample": true, "corruption": "noise:3"}}',
    "unknown-field.json": b'{"messages": [{"role": "user", "content": "Hi."}], "temprature": 1}',
    "tools.json": b'{"messages": [{"role": "user", "content": "Hi."}], "tools": [{"type": "function"}]}',
    "five-stops.json": b'{"messages": [{"role": "user", "content": "Hi."}], "stop": ["a", "b", "c", "d", "e"]}',
    "assistant-last.json": b'{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello"}]}',
    "assistant-image.json": b'{"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, '
    b'{"role": "user", "content": "Hi."}]}',
    "too-many-tokens.json": b'{"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 100000}',
    "bad-cmrm.json": b'{"messages": [{"role": "user", "content": "Hi."}], "cmrm": {"alpha": 1e9}}',
    "zero-penalty.json": b'{"messages": [{"role": "user", "content": "Hi."}], "repeat_penalty": 0}',
    "torn.json": b'{"messages": [{"role": "user", "content": "Hi',
    "not-json": b"\xff\xfe hello",
}
for name, body in CHAT.items():
    w("chat_request", name, body)
print("seeds written to", OUT, file=sys.stderr)
