"""What `apr inspect` reports about a model: architecture, sizes, dtypes, tokenizer, provenance."""

from __future__ import annotations

import json
from typing import Any

from .model import Model

ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")


def tokenizer_info(model: Model) -> dict[str, Any]:
    info: dict[str, Any] = {"files": sorted(model.tokenizer), "type": None, "vocab_size": None,
                            "added_tokens": 0, "chat_template": model.chat_template,
                            "special_tokens": {}}
    raw = model.tokenizer.get("tokenizer.json")
    if raw:
        tok = json.loads(raw)
        m = tok.get("model") or {}
        info["type"] = m.get("type")
        vocab = m.get("vocab")
        added = tok.get("added_tokens") or []
        ids = [a.get("id", -1) for a in added]
        size = len(vocab) if vocab is not None else 0
        info["vocab_size"] = max([size - 1, *ids]) + 1 if (size or ids) else 0
        info["added_tokens"] = len(added)
    cfg = model.tokenizer_config()
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        val = cfg.get(key)
        if isinstance(val, dict):
            val = val.get("content")
        if val is not None:
            info["special_tokens"][key] = val
    return info


def describe(model: Model, with_tensors: bool = False, verified: bool = False) -> dict[str, Any]:
    cfg = model.text_config()
    info: dict[str, Any] = {
        "source": model.source,
        "architecture": model.architecture,
        "model_type": model.model_type,
        "params": model.param_count,
        "bytes": model.nbytes,
        "bits_per_weight": round(8 * model.nbytes / model.param_count, 3) if model.param_count else None,
        "tensor_count": len(model.tensors),
        "dtypes": model.dtype_counts(),
        "config": {k: cfg.get(k) for k in ARCH_KEYS},
        "tokenizer": tokenizer_info(model),
        "generation_config": model.generation_config,
        "provenance": model.provenance,
        "checksum_verified": verified and model.sha256 is not None,
        "sha256": model.sha256,
    }
    if with_tensors:
        info["tensors"] = [{"name": n, "dtype": model.spec(n).dtype, "shape": list(model.spec(n).shape),
                            "bits_per_weight": round(8 * model.spec(n).nbytes / model.spec(n).numel, 3)
                            if model.spec(n).numel else None}
                           for n in model.names()]
    return info
