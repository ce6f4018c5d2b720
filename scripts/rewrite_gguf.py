#!/usr/bin/env python3
"""Rewrite a GGUF text model's metadata for a test-fixture projector family.

Tensors (names, types, shapes and bytes) are copied unchanged, in order; only
key/value metadata changes. The output is written to a temporary file next to
it and renamed into place.

--idefics3-tokens (SmolLM2 for the idefics3 projector):
  mtmd looks up <fake_token_around_image> and <global-img> by their text and
  tokenizes "<fake_token_around_image><row_R_col_C>" before each tile; a
  missing token becomes id -1 in the prompt, which llama.cpp refuses. SmolLM2's
  vocabulary has none of them, so six of its unused CONTROL tokens, ids 11..16
  (<jupyter_*>, <empty_output>), are renamed to <fake_token_around_image>,
  <global-img>, <row_1_col_1>, <row_1_col_2>, <row_2_col_1>, <row_2_col_2>.
  Ids, types (CONTROL, so matched whole when special tokens are parsed) and
  embeddings stay; the idefics3 tower's grid is at most 2x2.
--qwen2vl (Qwen2.5 for the qwen2.5vl projector):
  general.architecture becomes qwen2vl, every qwen2.* key becomes qwen2vl.*,
  and qwen2vl.rope.dimension_sections = [8, 12, 12, 0] (INT32[4]; sums to
  head_dim/2 = 32) is added, so llama.cpp gives image tokens 2-D M-RoPE
  positions (an image takes max(rows, cols) positions, not one per token).
  The qwen2vl tensors are those of qwen2. This llama.cpp's qwen2vl does not
  read attention.layer_norm_rms_epsilon (it logs f_norm_rms_eps = 0), so
  logits differ slightly from the same weights run as qwen2.
"""
import argparse
import os

import gguf

IDEFICS3_TOKENS = {11: "<fake_token_around_image>", 12: "<global-img>",
                   13: "<row_1_col_1>", 14: "<row_1_col_2>",
                   15: "<row_2_col_1>", 16: "<row_2_col_2>"}
QWEN2VL_ROPE_SECTIONS = [8, 12, 12, 0]


def rewrite(src, dst, mode):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    if mode == "qwen2vl" and arch != "qwen2":
        raise SystemExit(f"{src}: architecture is {arch}, not qwen2")
    new_arch = "qwen2vl" if mode == "qwen2vl" else arch
    if "general.alignment" in r.fields:
        raise SystemExit(f"{src}: custom general.alignment is not handled")

    tmp = f"{dst}.tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, new_arch)  # writes general.architecture first
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        name, val = f.name, f.contents()
        if mode == "qwen2vl" and name.startswith("qwen2."):
            name = "qwen2vl." + name[len("qwen2."):]
        if mode == "idefics3" and name == "tokenizer.ggml.tokens":
            types = r.fields["tokenizer.ggml.token_type"].contents()
            for i, tok in IDEFICS3_TOKENS.items():
                if types[i] != gguf.TokenType.CONTROL or not val[i].startswith("<"):
                    raise SystemExit(f"{src}: token {i} {val[i]!r} is not an unused control token")
                val[i] = tok
            clash = set(IDEFICS3_TOKENS.values()) & set(val[17:])
            if clash:
                raise SystemExit(f"{src}: already has {sorted(clash)}")
        w.add_key_value(name, val, vtype, sub_type=sub)
    if mode == "qwen2vl":
        w.add_rope_dimension_sections(QWEN2VL_ROPE_SECTIONS)

    for t in r.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in r.tensors:
        w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()
    os.replace(tmp, dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--idefics3-tokens", dest="mode", action="store_const", const="idefics3",
                      help="rename SmolLM2's control tokens 11..16 to the Idefics3 image tokens")
    mode.add_argument("--qwen2vl", dest="mode", action="store_const", const="qwen2vl",
                      help="rewrite a qwen2 model as qwen2vl (M-RoPE)")
    ap.add_argument("input")
    ap.add_argument("output")
    args = ap.parse_args()
    if os.path.realpath(args.input) == os.path.realpath(args.output):
        raise SystemExit("input and output must differ")
    rewrite(args.input, args.output, args.mode)


if __name__ == "__main__":
    main()
