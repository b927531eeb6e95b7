"""GGUF: import (dequantizing, or keeping raw blocks) and export for llama.cpp.

Tensor names are translated with gguf-py's own name tables against the
parameter names of the Hugging Face model class, so every family gguf-py
knows maps without a hand-written table. Two families store weights
differently from Hugging Face and are undone/redone here: llama's Q and K
rows are permuted for llama.cpp's rotary layout, and Gemma's RMSNorm weights
are stored with +1 folded in. Config and tokenizer come from transformers'
public GGUF support (``from_pretrained(..., gguf_file=...)``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..dtypes import BY_GGUF_ID, by_name
from ..errors import AprError, CorruptFileError, first_line
from ..model import LazyTensor, Model, TensorSpec
from ..names import tokenizer_files
from ..validate import check_config

# HF model_type -> GGUF architecture name
GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gemma2": "gemma2",
    "gemma": "gemma",
    "phi3": "phi3",
}
PERMUTED_QK = {"llama"}
NORM_PLUS_ONE = {"gemma", "gemma2", "gemma3"}


def _permute_qk(w, n_head: int, inverse: bool):
    """llama.cpp's rotary row order: halves of each head interleaved (and back)."""
    rows = w.shape[0]
    dim = rows // n_head // 2
    if inverse:
        return w.reshape(n_head, dim, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
    return w.reshape(n_head, 2, dim, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _arch_enum(arch: str):
    import gguf

    for key, value in gguf.MODEL_ARCH_NAMES.items():
        if value == arch:
            return key
    raise AprError(f"GGUF architecture {arch!r} is not known to the installed gguf package")


def hf_to_gguf_names(hf_names: list[str], arch: str, n_blocks: int) -> dict[str, str]:
    """Map Hugging Face parameter names to GGUF tensor names (unmapped names are left out)."""
    import gguf

    name_map = gguf.get_tensor_name_map(_arch_enum(arch), n_blocks)
    out = {}
    for hf in hf_names:
        base, _, suffix = hf.rpartition(".")
        if suffix not in ("weight", "bias"):
            base, suffix = hf, ""
        g = name_map.get_name(base)
        if g is not None:
            out[hf] = g + ("." + suffix if suffix else "")
    return out


def _hf_param_names(config: dict[str, Any]) -> list[str]:
    from ..torch_bridge import meta_model

    return list(meta_model(config).state_dict().keys())


def _read_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


# --------------------------------------------------------------------------- read

def read_gguf(path: str | os.PathLike, dtype: str | None = None, preserve_quant: bool = False) -> Model:
    """Open a GGUF file as a `Model`; quantized tensors are dequantized lazily per tensor."""
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AprError(f"no such file: {path}")
    try:
        reader = gguf.GGUFReader(path)
        arch = str(_read_field(reader, "general.architecture"))
    except Exception as exc:  # gguf-py raises ValueError, struct.error, IndexError... on bad files
        raise CorruptFileError(f"{path}: corrupt GGUF file: {first_line(exc)}") from None
    _check_layout(reader, path)
    config, tokenizer, gen = _config_and_tokenizer(path)
    check_config(config, path)
    n_blocks = int(config.get("num_hidden_layers") or 0)
    try:
        hf_names = _hf_param_names(config)
    except AprError:
        raise
    except Exception as exc:  # transformers' module constructors reject odd values with many types
        raise CorruptFileError(f"{path}: the GGUF's architecture keys do not make a valid model: "
                               f"{first_line(exc)}") from None
    to_gguf = hf_to_gguf_names(hf_names, arch, n_blocks)
    to_hf = {g: h for h, g in to_gguf.items()}
    tensors: dict[str, LazyTensor] = {}
    for t in reader.tensors:
        hf = to_hf.get(t.name)
        if hf is None:
            continue  # llama.cpp-only extras such as rope_freqs
        tensors[hf] = _lazy_gguf_tensor(t, hf, arch, config, dtype, preserve_quant)
    missing = [h for h in hf_names if h not in tensors and not (
        h == "lm_head.weight" and config.get("tie_word_embeddings", True))]
    if missing:
        raise CorruptFileError(f"{path}: GGUF file lacks tensor for {missing[0]} "
                               f"({len(missing)} missing)")
    return Model(tensors=tensors, config=config, tokenizer=tokenizer, generation_config=gen,
                 source=path, files=(path,), keepalive=reader)


GGML_MAX_DIMS = 4


def _check_layout(reader, path: str) -> None:
    """What gguf-py leaves unchecked: every tensor has a name, at most 4 dims whose product does
    not overflow, an aligned range inside the file that overlaps no other tensor; the padding
    before the data is zeros and at most one alignment unit follows the last tensor (so a tensor
    count that disagrees with the tensor infos cannot shift every tensor's data unnoticed)."""
    bad = f"{path}: corrupt GGUF file"
    size = int(reader.data.shape[0])
    align = int(reader.alignment)
    base = int(reader.data_offset)
    spans = []
    for t in reader.tensors:
        dims = [int(d) for d in t.shape.tolist()]
        if not t.name:
            raise CorruptFileError(f"{bad}: a tensor has an empty name (the tensor count may be wrong)")
        if not 1 <= len(dims) <= GGML_MAX_DIMS:
            raise CorruptFileError(f"{bad}: tensor {t.name!r} has {len(dims)} dims (1 to {GGML_MAX_DIMS})")
        numel = 1
        for d in dims:
            numel *= d
        if numel != int(t.n_elements) or numel >= 1 << 62:
            raise CorruptFileError(f"{bad}: tensor {t.name!r} has shape {dims}, too large")
        start, end = int(t.data_offset), int(t.data_offset) + int(t.n_bytes)
        if (start - base) % align or not base <= start <= end <= size:
            raise CorruptFileError(f"{bad}: tensor {t.name!r} lies outside the data section or off its "
                                   f"{align}-byte alignment")
        spans.append((start, end, t.name))
    last = base
    for start, end, name in sorted(spans):
        if start < last and end > start:
            raise CorruptFileError(f"{bad}: tensor {name!r} overlaps another tensor's data")
        last = max(last, end)
    fields = [*reader.fields.values(), *(t.field for t in reader.tensors)]
    infos_end = max((int(f.offset) + sum(int(p.nbytes) for p in f.parts) for f in fields), default=0)
    if infos_end > base or any(reader.data[infos_end:base]):
        raise CorruptFileError(f"{bad}: unexpected bytes between the tensor infos and the data "
                               f"(the tensor count {len(reader.tensors)} does not match the infos)")
    if size - last >= align and spans:
        raise CorruptFileError(f"{bad}: {size - last} bytes follow the last tensor's data (the tensor "
                               f"count {len(reader.tensors)} does not match the infos, or data was appended)")


def _config_and_tokenizer(path: str):
    import logging

    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    directory, name = os.path.split(os.path.abspath(path))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        cfg = AutoConfig.from_pretrained(directory, gguf_file=name)
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except Exception as exc:  # transformers' GGUF support raises many types on odd metadata
        raise CorruptFileError(f"{path}: transformers cannot read this GGUF's config or tokenizer: "
                               f"{first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    config = cfg.to_dict()
    config.pop("quantization_config", None)
    config.pop("transformers_version", None)
    if not config.get("architectures"):
        from ..torch_bridge import causal_lm_class

        config["architectures"] = [causal_lm_class(config).__name__]
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        tokenizer = tokenizer_files({p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()},
                                    f"{path}: tokenizer")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    return config, tokenizer, gen or None


def _lazy_gguf_tensor(t, hf_name: str, arch: str, config: dict, dtype: str | None, preserve_quant: bool):
    qtype = int(t.tensor_type)
    dt = BY_GGUF_ID.get(qtype)
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    keep_raw = preserve_quant and dt is not None and dt.quantized
    if keep_raw:
        spec = TensorSpec(hf_name, dt.name, shape)
    else:
        out = dtype or (dt.name if dt is not None and not dt.quantized else "F32")
        spec = TensorSpec(hf_name, out, shape)

    def load():
        import gguf
        import numpy as np
        import torch

        if keep_raw:
            raw = torch.from_numpy(np.ascontiguousarray(t.data).reshape(-1))
            return _gguf_layout_raw(raw, spec, t.name, arch, config, to_gguf=False)
        if qtype == int(gguf.GGMLQuantizationType.BF16):
            w = torch.from_numpy(np.array(t.data).view(np.uint16)).view(torch.bfloat16)  # a copy: the map is read-only
        elif dt is not None and not dt.quantized:
            w = torch.from_numpy(np.array(t.data))
        else:
            with np.errstate(all="ignore"):  # damaged scales give inf/nan, not warnings on stderr
                w = torch.from_numpy(gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(qtype)))
        w = w.reshape(shape)
        w = _gguf_layout(w, t.name, arch, config, to_gguf=False)
        return w.to(spec.dt.torch_dtype()).contiguous()

    return LazyTensor(spec, load)


def _gguf_layout(w, gguf_name: str, arch: str, config: dict, to_gguf: bool):
    """Apply (``to_gguf``) or undo llama.cpp's storage conventions for one tensor."""
    if arch in PERMUTED_QK and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        heads = config["num_attention_heads"]
        if ".attn_k." in gguf_name:
            heads = config.get("num_key_value_heads") or heads
        w = _permute_qk(w, heads, inverse=not to_gguf)
    if arch in NORM_PLUS_ONE and gguf_name.endswith("norm.weight"):
        w = w + 1 if to_gguf else w - 1
    return w


# --------------------------------------------------------------------------- write

GGUF_OUT_TYPES = ("f32", "f16", "q8_0", "q4_k", "q6_k")
# GGUF export dtype -> how floating-point tensors are stored (see apr_core.quant.policy)
_EXPORT_RECIPES = {"q8_0": ("Q8_0", None), "q4_k": ("Q4_K", "Q6_K"), "q6_k": ("Q6_K", None)}
# dtypes a GGUF file stores as they are; AprQ4 blocks are byte-for-byte Q4_0 blocks
_GGUF_RAW = {"Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q5_0": "Q5_0", "Q4_K": "Q4_K", "Q6_K": "Q6_K", "APR_Q4": "Q4_0"}
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
               "Q4_0": "MOSTLY_Q4_0", "Q5_0": "MOSTLY_Q5_0", "Q4_K": "MOSTLY_Q4_K_M", "Q6_K": "MOSTLY_Q6_K"}


def gguf_dtypes(model: Model, out_type: str, names: list[str]) -> dict[str, str]:
    """The GGUF type of every tensor: stored quantized blocks stay (AprQ4 as Q4_0, AprQ8 and
    per-row int8 re-blocked as Q8_0); float tensors follow ``out_type`` with llama.cpp's rules."""
    from ..quant.policy import Recipe, fitting, plan

    if out_type not in GGUF_OUT_TYPES:
        raise AprError(f"--dtype {out_type!r} is not a GGUF export type; use one of {', '.join(GGUF_OUT_TYPES)}")
    specs = [model.spec(n) for n in names]
    if out_type in _EXPORT_RECIPES:
        main, output = _EXPORT_RECIPES[out_type]
        floats = plan(Recipe(main, "gguf", output=output), specs, model.text_config())
    else:
        floats = {s.name: ("F32" if len(s.shape) < 2 or out_type == "f32" else "F16") for s in specs}
    out = {}
    for s in specs:
        if not s.dt.quantized:
            out[s.name] = floats[s.name]
        elif s.dtype in _GGUF_RAW:
            out[s.name] = _GGUF_RAW[s.dtype]
        elif s.dtype in ("APR_Q8", "APR_Q8_ROW"):
            out[s.name] = fitting("Q8_0", s.shape)
        else:
            raise AprError(f"GGUF has no type for {s.dtype} (tensor {s.name}); quantize with a GGUF "
                           f"scheme (q8_0, q4k, q6k, int4) for llama.cpp")
    return out


def write_gguf(model: Model, path: str | os.PathLike, out_type: str = "f16", progress=None) -> str:
    """Write a GGUF llama.cpp can load: architecture keys, tokenizer, chat template, tensors.

    ``out_type`` decides how floating-point tensors are stored: f32, f16 (1-D
    tensors such as norms stay F32, as llama.cpp's converter keeps them), or
    quantized with llama.cpp's rules (q8_0, q4_k with a Q6_K output head,
    q6_k; rows that do not fit fall back as llama.cpp does). Tensors that are
    already quantized are written as their stored blocks.
    """
    import gguf
    import numpy as np

    from ..quant.convert import float_tensor, restore

    config = model.text_config()
    arch = GGUF_ARCH.get(model.model_type)
    if arch is None:
        raise AprError(f"GGUF export does not support model type {model.model_type!r} "
                       f"(supported: {', '.join(sorted(GGUF_ARCH))})")
    n_blocks = int(config["num_hidden_layers"])
    names = model.names()
    if config.get("tie_word_embeddings") and "lm_head.weight" in names:
        names.remove("lm_head.weight")
    to_gguf = hf_to_gguf_names(names, arch, n_blocks)
    unmapped = [n for n in names if n not in to_gguf]
    if unmapped:
        raise AprError(f"GGUF export: no GGUF name for tensor {unmapped[0]}")
    types = gguf_dtypes(model, out_type, names)
    plan = [(hf, to_gguf[hf], model.spec(hf), types[hf]) for hf in names]
    main = _main_type(plan)

    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(os.fspath(tmp), arch)
        _write_kv(w, model, config, arch, getattr(gguf.LlamaFileType, _FILE_TYPES.get(main, "MOSTLY_F16")))
        for hf, gname, spec, dtype in plan:
            qt = gguf.GGMLQuantizationType(by_name(dtype).gguf_id)
            if by_name(dtype).quantized:
                rows = spec.numel // spec.shape[-1]
                nbytes = by_name(dtype).nbytes(spec.shape)
                w.add_tensor_info(gname, [rows, nbytes // rows], np.dtype(np.uint8), nbytes, raw_dtype=qt)
            else:
                npdt = np.dtype(by_name(dtype).torch_name)
                w.add_tensor_info(gname, list(spec.shape), npdt, spec.numel * npdt.itemsize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        items = plan if progress is None else progress(plan, desc="writing gguf", total=len(plan))
        for hf, gname, spec, dtype in items:
            lazy = model.tensors[hf]
            if by_name(dtype).quantized:
                if _GGUF_RAW.get(spec.dtype) == dtype:  # stored blocks, copied
                    raw = _gguf_layout_raw(lazy.load(), spec, gname, arch, config, to_gguf=True)
                else:  # float (or AprQ8) values: lay out as llama.cpp expects, then quantize
                    t = _gguf_layout(float_tensor(lazy), gname, arch, config, to_gguf=True)
                    raw = restore(LazyTensor.of(hf, t.contiguous()), dtype).load()
                arr = raw.reshape(spec.numel // spec.shape[-1], -1).numpy()
            else:
                t = _gguf_layout(float_tensor(lazy), gname, arch, config, to_gguf=True)
                arr = t.contiguous().numpy().astype(by_name(dtype).torch_name)
            w.write_tensor_data(arr)
        w.close()
    return os.fspath(path)


def _main_type(plan) -> str:
    """The type of most 2-D weights (for general.file_type)."""
    counts: dict[str, int] = {}
    for _hf, _g, spec, dtype in plan:
        if len(spec.shape) == 2:
            counts[dtype] = counts.get(dtype, 0) + spec.numel
    return max(counts, key=counts.get) if counts else "F32"


def _gguf_layout_raw(raw, spec: TensorSpec, gguf_name: str, arch: str, config: dict, to_gguf: bool):
    """`_gguf_layout` for stored blocks: the rotary permutation moves whole rows, so the rows'
    bytes move with them (norm +1 never applies: norms are never block-quantized)."""
    if arch in PERMUTED_QK and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        rows = spec.numel // spec.shape[-1]
        return _gguf_layout(raw.reshape(rows, -1), gguf_name, arch, config, to_gguf).reshape(-1).contiguous()
    return raw


def _write_kv(w, model: Model, config: dict, arch: str, file_type) -> None:
    import gguf

    w.add_name(str(config.get("_name_or_path") or model.architecture))
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    w.add_context_length(int(config.get("max_position_embeddings") or 2048))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or rope.get("rope_theta")
    if theta:
        w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    w.add_vocab_size(int(config["vocab_size"]))
    if arch == "gemma3":
        if config.get("sliding_window"):
            w.add_sliding_window(int(config["sliding_window"]))
    _write_tokenizer(w, model, config)


def _write_tokenizer(w, model: Model, config: dict) -> None:
    """tokenizer.ggml.* keys from tokenizer.json: BPE as 'gpt2', SentencePiece-style as 'llama'."""
    import gguf

    raw = model.tokenizer.get("tokenizer.json")
    if not raw:
        raise AprError("GGUF export needs tokenizer.json; this model has no fast tokenizer")
    tok = json.loads(raw)
    m = tok.get("model") or {}
    vocab_size = int(config["vocab_size"])
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    tokens: list[str] = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [0.0] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    if m.get("type") == "Unigram":
        for i, (piece, score) in enumerate(m["vocab"][:vocab_size]):
            tokens[i], scores[i], types[i] = piece, float(score), gguf.TokenType.NORMAL
    else:
        for piece, i in m.get("vocab", {}).items():
            if i < vocab_size:
                tokens[i], scores[i], types[i] = piece, -float(i), gguf.TokenType.NORMAL
    for i, a in added.items():
        if i < vocab_size:
            tokens[i] = a["content"]
            types[i] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    spm_like = m.get("type") == "Unigram" or bool(m.get("byte_fallback"))
    if spm_like:
        w.add_tokenizer_model("llama")
        for i, t in enumerate(tokens):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = gguf.TokenType.BYTE
        w.add_token_scores(scores)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_bpe_pre_name(model, vocab_size))
        merges = m.get("merges") or []
        w.add_token_merges([" ".join(x) if isinstance(x, list) else x for x in merges])
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    tcfg = model.tokenizer_config()
    by_content = {t: i for i, t in enumerate(tokens)}
    for key, adder in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                       ("unk_token", w.add_unk_token_id), ("pad_token", w.add_pad_token_id)):
        val = tcfg.get(key)
        if isinstance(val, dict):
            val = val.get("content")
        tid = by_content.get(val) if isinstance(val, str) else config.get(key + "_id")
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if tid is not None:
            adder(int(tid))
    if "add_bos_token" in tcfg:
        w.add_add_bos_token(bool(tcfg["add_bos_token"]))
    if model.chat_template:
        w.add_chat_template(model.chat_template)


def _bpe_pre_name(model: Model, vocab_size: int) -> str:
    """llama.cpp's pre-tokenizer id; it recognises these by name for the families we export."""
    if model.model_type in ("qwen2", "qwen3"):
        return "qwen2"
    if model.model_type == "llama" and vocab_size == 49152:
        return "smollm"
    if model.model_type == "llama" and vocab_size >= 128000:
        return "llama-bpe"
    return "default"
