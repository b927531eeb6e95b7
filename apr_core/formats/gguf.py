"""GGUF: import (dequantizing, or keeping raw blocks) and export for llama.cpp.

Tensor names are translated with gguf-py's own name tables against the
parameter names of the Hugging Face model class, so every family gguf-py
knows maps without a hand-written table. Two families store weights
differently from Hugging Face and are undone/redone here: llama's Q and K
rows are permuted for llama.cpp's rotary layout, and Gemma's RMSNorm weights
are stored with +1 folded in. Config and tokenizer come from transformers'
public GGUF support (``from_pretrained(..., gguf_file=...)``). On export the
key-value metadata is `gguf_metadata`'s, the tensor types llama-quantize's
mixture rules (apr_core.quant.mixtures).
"""

from __future__ import annotations

import functools
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
from .gguf_metadata import rope_freqs, write_architecture, write_tokenizer

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


@functools.lru_cache(maxsize=8)
def _name_map(arch: str, n_blocks: int):
    """gguf-py's tensor name table for an architecture (building it takes ~40 ms: kept)."""
    import gguf

    return gguf.get_tensor_name_map(_arch_enum(arch), n_blocks)


def hf_to_gguf_names(hf_names: list[str], arch: str, n_blocks: int) -> dict[str, str]:
    """Map Hugging Face parameter names to GGUF tensor names (unmapped names are left out)."""
    name_map = _name_map(arch, n_blocks)
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
    from ..validate import known_tensor_names

    known = known_tensor_names(config)  # what an earlier load's tensor check stored (apr_core.memo)
    if known is not None:
        return known
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
    config, tokenizer, gen = _remembered_config_and_tokenizer(path, reader)
    _implied_by_llama_cpp(config, arch)
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


def _implied_by_llama_cpp(config: dict, arch: str) -> None:
    """Settings a GGUF file has no key for because llama.cpp fixes them per architecture.

    Gemma 3 queries are scaled by 1/sqrt(head_dim) (hidden/heads for the 62-layer 27B); the file
    cannot say otherwise, and transformers' GGUF reader leaves its default of 256 whatever the
    head size.
    """
    if arch == "gemma3":
        layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        config["query_pre_attn_scalar"] = int(config["hidden_size"]) // heads if layers == 62 else head_dim


def _remembered_config_and_tokenizer(path: str, reader):
    """`_config_and_tokenizer`, memoized (apr_core.memo) by a sha256 of everything before the tensor
    data (header, key-value metadata, tensor infos), which is all transformers reads; building them
    imports transformers' GGUF support and rebuilds the tokenizer (seconds)."""
    import base64
    import hashlib

    from ..memo import memoized

    head = hashlib.sha256(memoryview(reader.data[:int(reader.data_offset)])).hexdigest()

    def compute():
        config, tokenizer, gen = _config_and_tokenizer(path)
        return {"config": config, "gen": gen,
                "tokenizer": {k: base64.b64encode(v).decode("ascii") for k, v in tokenizer.items()}}

    def valid(v):
        return (isinstance(v, dict) and isinstance(v.get("config"), dict) and isinstance(v.get("tokenizer"), dict)
                and all(isinstance(x, str) for x in v["tokenizer"].values()))

    value = memoized("gguf-config-tokenizer", {"metadata_sha256": head}, compute,
                     libraries=("transformers", "tokenizers"), valid=valid)
    value = json.loads(json.dumps(value))  # the same types whether computed now or stored
    tokenizer = {k: base64.b64decode(v) for k, v in value["tokenizer"].items()}
    return value["config"], tokenizer, value["gen"]


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

# GGUF export dtype -> the llama.cpp mixture its floating-point tensors get (apr_core.quant.mixtures);
# q4_k is llama-quantize's Q4_K_S, the mixture of `apr quantize --scheme q4k`
_EXPORT_MIXTURES = {"q8_0": "Q8_0", "q6_k": "Q6_K", "q4_k": "Q4_K_S", "q4_k_s": "Q4_K_S",
                    "q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q3_k_m": "Q3_K_M"}
GGUF_OUT_TYPES = ("f32", "f16", *_EXPORT_MIXTURES)
# dtypes a GGUF file stores as they are; AprQ4 blocks are byte-for-byte Q4_0 blocks
_GGUF_RAW = {"Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "IQ4_NL": "IQ4_NL",
             "Q3_K": "Q3_K", "Q4_K": "Q4_K", "Q5_K": "Q5_K", "Q6_K": "Q6_K", "APR_Q4": "Q4_0"}
# general.file_type of files that no recorded mixture describes: the dominant 2-D type's
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
               "Q4_0": "MOSTLY_Q4_0", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "IQ4_NL": "MOSTLY_IQ4_NL",
               "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M", "Q6_K": "MOSTLY_Q6_K"}


def gguf_dtypes(model: Model, out_type: str, names: list[str]) -> dict[str, str]:
    """The GGUF type of every tensor: stored quantized blocks stay (AprQ4 as Q4_0, AprQ8 and
    per-row int8 re-blocked as Q8_0); float tensors follow ``out_type`` with llama.cpp's rules."""
    from ..quant.policy import Recipe, fitting, plan

    if out_type not in GGUF_OUT_TYPES:
        raise AprError(f"--dtype {out_type!r} is not a GGUF export type; use one of {', '.join(GGUF_OUT_TYPES)}")
    specs = [model.spec(n) for n in names]
    if out_type in _EXPORT_MIXTURES:
        from ..quant.mixtures import mixture

        mix = mixture(_EXPORT_MIXTURES[out_type])
        floats = plan(Recipe(mix.default, "gguf", mixture=mix.name), specs, model.text_config())
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
                           f"scheme (q8_0, q4k, q4k_m, q5k_m, q3k_m, q6k, int4) for llama.cpp")
    return out


def write_gguf(model: Model, path: str | os.PathLike, out_type: str = "f16", progress=None) -> str:
    """Write a GGUF llama.cpp can load: architecture keys, tokenizer, chat template, tensors.

    ``out_type`` decides how floating-point tensors are stored: f32, f16 (1-D
    tensors such as norms stay F32, as llama.cpp's converter keeps them), or
    quantized with llama-quantize's mixture rules (q8_0, q6_k, q4_k = q4_k_s,
    q4_k_m, q5_k_m, q3_k_m; rows that do not fit fall back as llama.cpp
    does). Tensors that are already quantized are written as their stored
    blocks. ``general.file_type`` is the llama.cpp file type of the mixture
    (`file_type`).
    """
    import gguf
    import numpy as np

    from ..quant.parallel import ordered_map, worker_count
    from .gguf_writer import GGUFWriter

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
    ftype = file_type(model, out_type, plan)
    freqs = rope_freqs(config) if arch == "llama" else None

    def array(item):
        return _gguf_array(model, item, arch, config)

    # tensors are quantized on all cores (one tensor per thread) from here on, while the header
    # and the tokenizer are packed, and written in order as they complete
    with atomic_path(path) as tmp, ordered_map(array, plan, window=2 * worker_count()) as arrays:
        w = GGUFWriter(os.fspath(tmp), arch)
        write_architecture(w, model, config, arch, ftype)
        write_tokenizer(w, model, config)
        if freqs is not None:
            w.add_tensor_info("rope_freqs.weight", list(freqs.shape), np.dtype(np.float32), freqs.numel() * 4)
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
        if freqs is not None:
            w.write_tensor_data(freqs.numpy())
        items = arrays if progress is None else progress(arrays, desc="writing gguf", total=len(plan))
        for arr in items:
            w.write_tensor_data(arr)
        w.close()
    return os.fspath(path)


def _gguf_array(model: Model, item, arch: str, config: dict):
    """The numpy array of one plan row as the GGUF file stores it (quantized, laid out for llama.cpp)."""
    from ..quant.convert import float_tensor, restore

    hf, gname, spec, dtype = item
    lazy = model.tensors[hf]
    if by_name(dtype).quantized:
        if _GGUF_RAW.get(spec.dtype) == dtype:  # stored blocks, copied
            raw = _gguf_layout_raw(lazy.load(), spec, gname, arch, config, to_gguf=True)
        else:  # float (or AprQ8) values: lay out as llama.cpp expects, then quantize
            t = _gguf_layout(float_tensor(lazy), gname, arch, config, to_gguf=True)
            raw = restore(LazyTensor.of(hf, t.contiguous()), dtype).load()
        return raw.reshape(spec.numel // spec.shape[-1], -1).numpy()
    t = _gguf_layout(float_tensor(lazy), gname, arch, config, to_gguf=True)
    return t.contiguous().numpy().astype(by_name(dtype).torch_name)


def file_type(model: Model, out_type: str, plan) -> int:
    """``general.file_type``: llama.cpp's id of the mixture the tensors were quantized with.

    That is the export's ``--dtype`` mixture, or for stored quantized tensors the mixture of the
    scheme that made them (the last quantize in the provenance) when the tensor types are exactly
    what that mixture gives. Float exports are ALL_F32 / MOSTLY_F16. Quantized tensors that no
    recorded mixture describes (another tool's GGUF imported with --preserve-quant, an int4 file)
    are named after their dominant 2-D type, as before llama.cpp's mixtures existed.
    """
    import gguf

    from ..quant.mixtures import mixture

    if out_type in _EXPORT_MIXTURES:
        return mixture(_EXPORT_MIXTURES[out_type]).ftype
    types = {hf: dtype for hf, _g, _spec, dtype in plan}
    if not any(by_name(d).quantized for d in types.values()):
        return int(gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    recorded = _recorded_mixture(model)
    if recorded is not None:
        from ..quant.mixtures import plan as mixture_plan

        specs = [s for _hf, _g, s, _d in plan]
        expected = mixture_plan(recorded, specs, model.text_config())
        if all(types[n] == stored for n, (_wanted, stored) in expected.items() if n in types):
            return recorded.ftype
    counts: dict[str, int] = {}
    for _hf, _g, spec, dtype in plan:
        if len(spec.shape) == 2:
            counts[dtype] = counts.get(dtype, 0) + spec.numel
    main = max(counts, key=counts.get) if counts else "F32"
    return int(getattr(gguf.LlamaFileType, _FILE_TYPES.get(main, "MOSTLY_F16")))


def _recorded_mixture(model: Model):
    """The llama.cpp mixture of the scheme of the model's last ``apr quantize``, if it has one."""
    from ..quant.mixtures import mixture

    last = next((r for r in reversed(model.provenance) if r.get("operation") == "quantize"), None)
    if last is None or not last.get("technique"):
        return None
    from .. import pipeline

    try:
        recipe = getattr(pipeline.transform_technique("quantize", str(last["technique"])), "recipe", None)
    except AprError:
        return None  # the scheme's plugin is not installed here
    return mixture(recipe.mixture) if recipe is not None and recipe.mixture else None


def _gguf_layout_raw(raw, spec: TensorSpec, gguf_name: str, arch: str, config: dict, to_gguf: bool):
    """`_gguf_layout` for stored blocks: the rotary permutation moves whole rows, so the rows'
    bytes move with them (norm +1 never applies: norms are never block-quantized)."""
    if arch in PERMUTED_QK and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        import torch

        rows = spec.numel // spec.shape[-1]
        # the permutation of row ids, applied with whole-row copies (a strided uint8 transpose
        # copies byte by byte)
        order = _gguf_layout(torch.arange(rows), gguf_name, arch, config, to_gguf)
        return raw.reshape(rows, -1).index_select(0, order).reshape(-1)
    return raw
