#!/usr/bin/env python3
"""Write a llama-architecture GGUF with random weights and a real tokenizer.

For measuring speed on a machine the real weights cannot reach (scripts/gpu-check.sh): the
answers are noise, the arithmetic per token is that of a real model of the same shape. The
tokenizer (every tokenizer.* key) is copied from --tokenizer, a real GGUF such as the fixture's
SmolLM2, so prompts tokenize as they would. Weights are N(0, 0.02) in F16 (norms 1 in F32);
the output matrix is tied to the token embeddings. A 2048-wide, 24-layer model with FFN 5632
(about 1.2 B parameters, 2.5 GB) is written in a few seconds per GB.

    make_random_model.py --tokenizer SmolLM2.gguf --n-embd 2048 --n-layer 24 --n-ff 5632 \
        --n-head 32 --n-head-kv 8 -o model-f16.gguf
"""
import argparse
import os

import gguf
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="GGUF whose tokenizer.* keys are copied")
    ap.add_argument("--n-embd", type=int, required=True)
    ap.add_argument("--n-layer", type=int, required=True)
    ap.add_argument("--n-ff", type=int, required=True)
    ap.add_argument("--n-head", type=int, required=True)
    ap.add_argument("--n-head-kv", type=int, required=True)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    if a.n_embd % a.n_head or a.n_head % a.n_head_kv:
        raise SystemExit("--n-embd must divide by --n-head, and --n-head by --n-head-kv")

    r = gguf.GGUFReader(a.tokenizer)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    n_vocab = len(tokens)
    tmp = f"{a.output}.tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(f"random-llama-{a.n_embd}x{a.n_layer}")
    w.add_context_length(a.ctx)
    w.add_embedding_length(a.n_embd)
    w.add_block_count(a.n_layer)
    w.add_feed_forward_length(a.n_ff)
    w.add_head_count(a.n_head)
    w.add_head_count_kv(a.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for f in r.fields.values():
        if not f.name.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)

    rng = np.random.default_rng(a.seed)
    head = a.n_embd // a.n_head
    kv = head * a.n_head_kv
    shapes = [("token_embd.weight", (n_vocab, a.n_embd)), ("output_norm.weight", (a.n_embd,))]
    for i in range(a.n_layer):
        b = f"blk.{i}."
        shapes += [
            (b + "attn_norm.weight", (a.n_embd,)),
            (b + "attn_q.weight", (a.n_embd, a.n_embd)),
            (b + "attn_k.weight", (kv, a.n_embd)),
            (b + "attn_v.weight", (kv, a.n_embd)),
            (b + "attn_output.weight", (a.n_embd, a.n_embd)),
            (b + "ffn_norm.weight", (a.n_embd,)),
            (b + "ffn_gate.weight", (a.n_ff, a.n_embd)),
            (b + "ffn_up.weight", (a.n_ff, a.n_embd)),
            (b + "ffn_down.weight", (a.n_embd, a.n_ff)),
        ]

    def tensor(name, shape):
        if len(shape) == 1:
            return np.ones(shape, dtype=np.float32)
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    # Two passes (infos, then data) so that no more than one tensor is in memory at a time.
    for name, shape in shapes:
        dtype = np.float32 if len(shape) == 1 else np.float16
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in shapes:
        w.write_tensor_data(tensor(name, shape))
    w.close()
    os.replace(tmp, a.output)
    print(f"{a.output}: {n_vocab} tokens, {a.n_layer} layers of {a.n_embd}")


if __name__ == "__main__":
    main()
