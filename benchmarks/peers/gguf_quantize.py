#!/usr/bin/env python3
"""The peer of ``apr quantize --format gguf``: what a gguf-py user writes to make a GGUF from an HF export.

    python benchmarks/peers/gguf_quantize.py HF_DIR OUT.gguf --type Q8_0|Q4_0

Runs in its own venv (runs/peers/gguf: gguf, numpy, safetensors; no torch). Reads the
safetensors weights with safetensors' numpy loader, names them with gguf-py's tensor name map,
applies llama.cpp's rotary row order to Q/K, quantizes with ``gguf.quants.quantize`` (gguf-py's
numpy port of ggml's reference quantizers, one thread) and writes with ``GGUFWriter``: the
architecture keys, the BPE tokenizer from tokenizer.json (tokens, types, merges, special ids,
chat template) and the tensors. Which tensors are quantized is apr's choice for the same
scheme, so both do the same work: Q8_0 (apr's ``q8_0``) every 2-D weight; Q4_0 (apr's ``int4``,
whose blocks GGUF stores as Q4_0) the 2-D weights inside the transformer blocks, the embedding
F16. 1-D tensors are F32. apr's int4 rounds as AprQ4 (scale absmax/7, halves away from zero)
and gguf-py's Q4_0 as ggml (scale max/-8 of the signed largest element, truncation), so the
Q4_0 bytes differ while the layout and the work are the same; Q8_0 bytes are identical. Llama-family models only (SmolLM2), which is what the benchmark runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout: the two halves of each head's rows interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tokenizer(w: gguf.GGUFWriter, hf: Path, vocab_size: int) -> None:
    tok = json.loads((hf / "tokenizer.json").read_text())
    tcfg = json.loads((hf / "tokenizer_config.json").read_text()) if (hf / "tokenizer_config.json").exists() else {}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for piece, i in tok["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = piece, int(gguf.TokenType.NORMAL)
    for a in tok.get("added_tokens") or []:
        if a["id"] < vocab_size:
            tokens[a["id"]] = a["content"]
            types[a["id"]] = int(gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"].get("merges") or []])
    ids = {t: i for i, t in enumerate(tokens)}
    for key, add in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                     ("unk_token", w.add_unk_token_id), ("pad_token", w.add_pad_token_id)):
        value = tcfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in ids:
            add(ids[value])
    w.add_add_bos_token(bool(tcfg.get("add_bos_token", False)))
    if tcfg.get("chat_template"):
        w.add_chat_template(tcfg["chat_template"])
    elif (hf / "chat_template.jinja").exists():
        w.add_chat_template((hf / "chat_template.jinja").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=("Q8_0", "Q4_0"), default="Q8_0")
    args = ap.parse_args()
    hf = Path(args.hf_dir)
    cfg = json.loads((hf / "config.json").read_text())
    qtype = gguf.GGMLQuantizationType[args.type]
    n_layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(hf.glob("*.safetensors")):
        tensors.update(load_file(f))
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(hf.name)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0 if args.type == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    w.add_rope_freq_base(float(rope))
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_vocab_size(cfg["vocab_size"])
    add_tokenizer(w, hf, cfg["vocab_size"])
    for name, t in tensors.items():
        base, _, suffix = name.rpartition(".")
        gname = names.get_name(base) + "." + suffix
        t = t.astype(np.float32)
        if gname.endswith(("attn_q.weight", "attn_k.weight")):
            t = permute(t, heads if ".attn_q." in gname else kv_heads)
        quantize = t.ndim == 2 and t.shape[-1] % 32 == 0 and (args.type == "Q8_0" or ".layers." in name)
        if quantize:
            w.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        elif t.ndim >= 2:  # unquantized matrices as F16, convert_hf_to_gguf's (and apr's) default
            w.add_tensor(gname, t.astype(np.float16))
        else:
            w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
