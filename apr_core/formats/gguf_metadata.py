"""The GGUF key-value metadata llama.cpp needs to run an exported model exactly as transformers does.

The key set per architecture is the one llama.cpp's own converter
(``convert_hf_to_gguf.py``, the version named in docs/quantize.md) writes for
Llama, Qwen2 and Gemma 3, derived here from the Hugging Face config in both
its flat and nested forms (transformers 5 nests rope settings in
``rope_parameters``, per layer type for Gemma 3). A setting llama.cpp cannot
express for that architecture (a Gemma 3 local rope base other than the
10000 llama.cpp hard-codes, an unsupported rope scaling ...) stops the export
with one line instead of writing a file that runs differently.

The tokenizer is written from ``tokenizer.json`` as transformers applies it
(`effective_tokenizer`): byte-level BPE as llama.cpp's
``gpt2`` model with the pre-tokenizer named after its regex, SentencePiece-style
vocabularies (Unigram, or BPE with byte fallback) as ``llama`` with
``add_space_prefix`` taken from whether the normalizer or pre-tokenizer
prepends "▁". ``add_bos_token``/``add_eos_token`` are what the Hugging Face
tokenizer does: ``tokenizer_config.json``'s flags where given, else its
post-processor's template.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ..errors import AprError
from ..model import Model

# llama.cpp hard-codes these for Gemma 3 (llama-model.cpp, LLM_ARCH_GEMMA3)
GEMMA3_LOCAL_ROPE_BASE = 10000.0
GEMMA3_SWA_PATTERN = 6


def model_name(model: Model, config: dict) -> str:
    """``general.name``: the model's name, never a local path.

    A Hub id (``hf://org/name`` as the source, or ``org/name`` in the config) gives ``name``; a
    GGUF import carries the source's ``general.name`` (transformers keeps it as
    ``_model_name_or_path``); otherwise the architecture's class name.
    """
    if model.source and model.source.startswith("hf://"):
        return model.source[len("hf://"):].split("@")[0].rstrip("/").split("/")[-1]
    for key in ("_name_or_path", "_model_name_or_path"):
        value = config.get(key) or model.config.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        value = value.strip()
        if os.path.isabs(value) or value.startswith((".", "~")) or os.path.exists(value) or "\\" in value:
            continue
        return value.rstrip("/").split("/")[-1]
    return model.architecture


def rope_settings(config: dict) -> dict[str, Any]:
    """Global rope base, local (sliding-layer) base and scaling from flat or nested config forms.

    transformers <5: ``rope_theta``, ``rope_local_base_freq``, ``rope_scaling``; transformers 5:
    ``rope_parameters`` holding ``rope_theta`` and the scaling keys, or one such dict per layer
    type (``full_attention``, ``sliding_attention``).
    """
    params = config.get("rope_parameters") or {}
    nested = isinstance(params, dict) and any(isinstance(v, dict) for v in params.values())
    full = (params.get("full_attention") or {}) if nested else params
    local = (params.get("sliding_attention") or {}) if nested else {}
    scaling = config.get("rope_scaling")
    if not scaling and full.get("rope_type") not in (None, "default"):
        scaling = full
    return {"theta": config.get("rope_theta") or full.get("rope_theta"),
            "local_theta": config.get("rope_local_base_freq") or local.get("rope_theta"),
            "scaling": scaling or None}


def _scaling_type(scaling: dict | None) -> str | None:
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    return None if kind in (None, "default") else str(kind)


def write_architecture(w, model: Model, config: dict, arch: str, file_type: int) -> None:
    """general.* and <arch>.* keys, as llama.cpp's converter writes them for ``arch``."""
    import gguf

    w.add_name(model_name(model, config))
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    default_ctx = 131072 if arch == "gemma3" else 2048
    w.add_context_length(int(config.get("max_position_embeddings") or default_ctx))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    rope = rope_settings(config)
    theta = rope["theta"] or (1_000_000.0 if arch == "gemma3" else None)
    if theta:
        w.add_rope_freq_base(float(theta))
    if arch != "gemma3":
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(int(config["vocab_size"]))
    _write_rope_scaling(w, arch, rope["scaling"], config)
    if arch == "gemma3":
        _write_gemma3(w, config, rope, head_dim)
    if arch == "qwen2" and config.get("use_sliding_window"):
        raise AprError("GGUF export: llama.cpp runs Qwen2 without sliding-window attention, but this "
                       "config enables it (use_sliding_window)")


def _write_rope_scaling(w, arch: str, scaling: dict | None, config: dict) -> None:
    import gguf

    kind = _scaling_type(scaling)
    if kind is None:
        return
    if kind == "linear" and arch in ("llama", "gemma3"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn" and arch == "qwen2":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind == "llama3" and arch == "llama":
        pass  # a rope_freqs tensor (see rope_freqs), no keys
    else:
        raise AprError(f"GGUF export: llama.cpp's {arch} has no {kind!r} rope scaling")


def rope_freqs(config: dict):
    """Llama 3's rope scaling as llama.cpp takes it: a ``rope_freqs`` tensor of per-frequency
    divisors (1 for short wavelengths, ``factor`` for long ones, interpolated between); None if
    the config has no llama3 scaling."""
    scaling = rope_settings(config)["scaling"]
    if _scaling_type(scaling) != "llama3":
        return None
    import torch

    base = float(rope_settings(config)["theta"] or 10000.0)
    dim = int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _write_gemma3(w, config: dict, rope: dict, head_dim: int) -> None:
    """Gemma 3's sliding window, and the settings llama.cpp fixes for it, checked against the config."""
    if not config.get("sliding_window"):
        raise AprError("GGUF export: a Gemma 3 config needs sliding_window")
    w.add_sliding_window(int(config["sliding_window"]))
    local = rope["local_theta"]
    if local is not None and float(local) != GEMMA3_LOCAL_ROPE_BASE:
        raise AprError(f"GGUF export: llama.cpp uses rope base {GEMMA3_LOCAL_ROPE_BASE:g} on Gemma 3's "
                       f"sliding layers; this config has {local:g}")
    layers = int(config["num_hidden_layers"])
    kinds = config.get("layer_types")
    expected = ["full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention" for i in range(layers)]
    pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern")
    if (kinds and list(kinds) != expected) or (pattern and int(pattern) != GEMMA3_SWA_PATTERN):
        raise AprError(f"GGUF export: llama.cpp runs every {GEMMA3_SWA_PATTERN}th Gemma 3 layer with full "
                       f"attention; this config's layer pattern differs")
    scalar = config.get("query_pre_attn_scalar")
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 62-layer 27B (hidden/heads)
    expected_scalar = int(config["hidden_size"]) // int(config["num_attention_heads"]) if layers == 62 else head_dim
    if scalar is not None and float(scalar) != float(expected_scalar):
        raise AprError(f"GGUF export: llama.cpp scales Gemma 3 queries by 1/sqrt({expected_scalar}); this "
                       f"config's query_pre_attn_scalar is {scalar}")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            raise AprError(f"GGUF export: llama.cpp's Gemma 3 has no {key}; this config sets {config[key]}")


# --------------------------------------------------------------------------- tokenizer

def _looks_special(token: str) -> bool:
    """Added tokens llama.cpp's converter marks CONTROL although not flagged special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def write_tokenizer(w, model: Model, config: dict) -> None:
    """tokenizer.ggml.* keys from tokenizer.json: BPE as 'gpt2', SentencePiece-style as 'llama'."""
    import gguf

    tok = effective_tokenizer(model)
    m = tok.get("model") or {}
    vocab_size = int(config["vocab_size"])
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    tokens: list[str] = [f"[PAD{i}]" for i in range(vocab_size)]
    spm_like = m.get("type") == "Unigram" or bool(m.get("byte_fallback"))
    scores = [(-10000.0 if spm_like else 0.0)] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    if m.get("type") == "Unigram":
        for i, (piece, score) in enumerate(m["vocab"][:vocab_size]):
            tokens[i], scores[i], types[i] = piece, float(score), gguf.TokenType.NORMAL
    else:
        for piece, i in m.get("vocab", {}).items():
            if i < vocab_size:
                tokens[i], scores[i], types[i] = piece, -float(i), gguf.TokenType.NORMAL
    tcfg = model.tokenizer_config()
    unk = _token_content(tcfg.get("unk_token"))
    for i, a in added.items():
        if i < vocab_size:
            tokens[i] = a["content"]
            if spm_like and a["content"] == unk:
                types[i] = gguf.TokenType.UNKNOWN
            elif a.get("special") or _looks_special(a["content"]):
                types[i] = gguf.TokenType.CONTROL
            else:
                types[i] = gguf.TokenType.USER_DEFINED
    if spm_like:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        for i, t in enumerate(tokens):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = gguf.TokenType.BYTE
        w.add_token_scores(scores)
        w.add_add_space_prefix(_prepends_space(tok))
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(bpe_pre_name(model, tok, vocab_size))
        merges = m.get("merges") or []
        w.add_token_merges([" ".join(x) if isinstance(x, list) else x for x in merges])
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    by_content = {t: i for i, t in enumerate(tokens)}
    for key, adder in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                       ("unk_token", w.add_unk_token_id), ("pad_token", w.add_pad_token_id)):
        val = _token_content(tcfg.get(key))
        tid = by_content.get(val) if isinstance(val, str) else config.get(key + "_id")
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if tid is not None:
            adder(int(tid))
    add_bos, add_eos = adds_special_tokens(tok, tcfg)
    w.add_add_bos_token(add_bos)
    if add_eos is not None:
        w.add_add_eos_token(add_eos)
    if model.chat_template:
        w.add_chat_template(model.chat_template)


def effective_tokenizer(model: Model) -> dict:
    """tokenizer.json as transformers applies it: the fast tokenizer it builds for this model.

    transformers 5 picks the tokenizer class by model type and some classes rebuild parts of the
    pipeline (Qwen2's class imposes Qwen2's pre-tokenizer regex whatever tokenizer.json says), so
    the file alone does not tell what llama.cpp must reproduce.
    """
    if not model.tokenizer.get("tokenizer.json"):
        raise AprError("GGUF export needs tokenizer.json; this model has no fast tokenizer")
    import hashlib

    from ..memo import memoized

    def build() -> str:
        from ..torch_bridge import load_tokenizer

        backend = getattr(load_tokenizer(model), "backend_tokenizer", None)
        if backend is None:
            raise AprError("GGUF export: transformers builds no fast tokenizer from this model's tokenizer.json")
        return backend.to_str()

    # what transformers builds depends on the files, the config (its class) and the versions only;
    # building it imports transformers (seconds), so the result is memoized (apr_core.memo)
    files = {name: hashlib.sha256(data if isinstance(data, bytes) else str(data).encode()).hexdigest()
             for name, data in model.tokenizer.items()}
    text = memoized("effective-tokenizer", {"files": files, "config": model.config}, build,
                    libraries=("transformers", "tokenizers"), valid=lambda v: isinstance(v, str))
    return json.loads(text)


def _token_content(value):
    return value.get("content") if isinstance(value, dict) else value


def adds_special_tokens(tok: dict, tcfg: dict) -> tuple[bool, bool | None]:
    """(add_bos, add_eos) as the Hugging Face tokenizer applies them: tokenizer_config's
    ``add_bos_token``/``add_eos_token`` when present, else the post-processor's single template
    (a leading bos, a trailing eos). add_eos is None when neither says."""
    bos, eos = _token_content(tcfg.get("bos_token")), _token_content(tcfg.get("eos_token"))
    first = last = None
    post = tok.get("post_processor") or {}
    for proc in post.get("processors", [post]) if post else []:
        if proc.get("type") == "TemplateProcessing" and proc.get("single"):
            first = proc["single"][0].get("SpecialToken", {}).get("id")
            last = proc["single"][-1].get("SpecialToken", {}).get("id")
    add_bos = tcfg["add_bos_token"] if isinstance(tcfg.get("add_bos_token"), bool) else (
        first is not None and first == bos)
    add_eos = tcfg["add_eos_token"] if isinstance(tcfg.get("add_eos_token"), bool) else (
        (last is not None and last == eos) if post else None)
    return bool(add_bos), add_eos


def _prepends_space(tok: dict) -> bool:
    """Whether the tokenizer prepends "▁" to the text (SentencePiece's add_dummy_prefix)."""
    def steps(node):
        if not node:
            return []
        if node.get("type") == "Sequence":
            return [s for sub in node.get("normalizers") or node.get("pretokenizers") or [] for s in steps(sub)]
        return [node]

    for step in steps(tok.get("normalizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
    for step in steps(tok.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never") != "never"
    return False


# pre-tokenizer regexes of tokenizer.json that llama.cpp knows by name
_QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def bpe_pre_name(model: Model, tok: dict, vocab_size: int) -> str:
    """llama.cpp's name for this byte-level BPE pre-tokenizer (tokenizer.ggml.pre)."""
    pre = tok.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    regex = next((p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"), None)
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        # GPT-2's regex; SmolLM2's files (llama, vocab 49152) add a digit split that transformers'
        # GGUF import drops, and llama.cpp's name for them is "smollm"
        return "smollm" if model.model_type == "llama" and vocab_size == 49152 else "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if regex == _QWEN2_REGEX:
        return "qwen2"
    if regex == _LLAMA3_REGEX:
        return "llama-bpe"
    if model.model_type in ("qwen2", "qwen3"):
        return "qwen2"
    if model.model_type == "llama" and vocab_size >= 128000:
        return "llama-bpe"
    raise AprError(f"GGUF export: llama.cpp knows no pre-tokenizer matching this tokenizer's "
                   f"({json.dumps(pre)[:120]})")
