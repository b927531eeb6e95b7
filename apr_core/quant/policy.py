"""Which dtype each tensor of a model gets under a quantization recipe, and the fallbacks.

Two conventions, after the tools whose files we mirror:

* ``linear`` (int8, int8-row, int4, nf4; bitsandbytes/transformers practice):
  only the 2-D weights of the transformer blocks (``...layers.N...weight``)
  are quantized; embeddings, the output head and every 1-D tensor (norms,
  biases) keep their source type.
* ``gguf`` (q8_0, q4k, q6k; llama.cpp practice): every 2-D weight is
  quantized, token embedding and output head included; 1-D tensors are
  stored as F32. With ``output`` set, the output head (the token embedding
  when they are tied) uses that type instead, as llama.cpp's k-quant mixes
  store ``output.weight`` as Q6_K.

With ``mixture`` set (q4k, q4k_m ...: a llama.cpp file type such as Q4_K_S),
the type of each 2-D weight follows llama-quantize's per-tensor rules instead
(`apr_core.quant.mixtures`): output head Q6_K, more bits for some ``attn_v``
and ``ffn_down`` layers, llama.cpp's fallbacks (Q5_K -> Q5_1, Q3_K -> IQ4_NL too).

Rows whose length is not a multiple of the block size are never an error:
under ``gguf`` they take llama.cpp's fallback chain (`FALLBACKS`: Q4_K ->
Q5_0, Q6_K -> Q8_0, then F16); under ``linear`` they keep their source type. A ``cast`` recipe (fp16, bf16) converts every
floating-point tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..dtypes import by_name

FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
# llama.cpp (llama_tensor_get_type): k-quants whose rows do not fit 256 fall back to a
# 32-block type, and anything that does not fit 32 to F16.
FALLBACKS = {"Q4_K": ("Q5_0", "F16"), "Q6_K": ("Q8_0", "F16"), "Q8_0": ("F16",), "Q5_0": ("F16",),
             "Q4_0": ("F16",)}
_BLOCK_WEIGHT = re.compile(r"(^|\.)layers\.\d+\..*\.weight$")


@dataclass(frozen=True)
class Recipe:
    """How a scheme assigns dtypes. ``main`` is the dtype of quantized weights."""

    main: str
    convention: str  # "linear", "gguf" or "cast"
    output: str | None = None
    mixture: str | None = None  # a llama.cpp file type (apr_core.quant.mixtures); gguf only

    def __post_init__(self):
        if self.convention not in ("linear", "gguf", "cast"):
            raise ValueError(f"unknown convention {self.convention!r}")
        if self.mixture is not None and self.convention != "gguf":
            raise ValueError("a llama.cpp mixture needs the gguf convention")


def output_names(names: list[str], config: dict) -> set[str]:
    """The output head's tensor name(s): lm_head, or the token embedding when tied."""
    if "lm_head.weight" in names:
        return {"lm_head.weight"}
    if config.get("tie_word_embeddings", True):
        return {n for n in names if n.endswith("embed_tokens.weight")}
    return set()


def fits(dtype: str, shape: tuple[int, ...]) -> bool:
    dt = by_name(dtype)
    return dt.block_size == 1 or bool(shape and shape[-1] % dt.block_size == 0)


def fitting(dtype: str, shape: tuple[int, ...]) -> str:
    """``dtype`` if rows of ``shape`` fit its blocks, else the first of its fallbacks that fits."""
    for candidate in (dtype, *FALLBACKS.get(dtype, ("F16",))):
        if fits(candidate, shape):
            return candidate
    return "F32"


def assign(recipe: Recipe, name: str, spec_dtype: str, shape: tuple[int, ...],
           outputs: set[str]) -> str:
    """The dtype ``recipe`` stores tensor ``name`` (now ``spec_dtype`` of ``shape``) in."""
    if recipe.convention == "cast":
        return recipe.main if spec_dtype in FLOAT_TYPES or by_name(spec_dtype).quantized else spec_dtype
    if spec_dtype not in FLOAT_TYPES and not by_name(spec_dtype).quantized:
        return spec_dtype  # integer and bool tensors are never quantized
    if len(shape) != 2:
        return "F32" if recipe.convention == "gguf" else spec_dtype
    if recipe.convention == "linear":
        if not _BLOCK_WEIGHT.search(name) or not fits(recipe.main, shape):
            return spec_dtype
        return recipe.main
    target = recipe.output if (recipe.output and name in outputs) else recipe.main
    return fitting(target, shape)


def _mixture_plan(recipe: Recipe, specs: list, config: dict) -> dict[str, tuple[str, str]]:
    """name -> (wanted, stored) for the 2-D weights a llama.cpp mixture decides; {} without one."""
    if recipe.mixture is None:
        return {}
    from .mixtures import mixture, plan as mixture_plan

    floats = [s for s in specs if s.dtype in FLOAT_TYPES or by_name(s.dtype).quantized]
    return mixture_plan(mixture(recipe.mixture), floats, config)


def plan(recipe: Recipe, specs: list, config: dict) -> dict[str, str]:
    """name -> dtype for every tensor spec."""
    names = [s.name for s in specs]
    outputs = output_names(names, config)
    mixed = _mixture_plan(recipe, specs, config)
    return {s.name: mixed[s.name][1] if s.name in mixed else assign(recipe, s.name, s.dtype, tuple(s.shape), outputs)
            for s in specs}


def fallbacks(recipe: Recipe, specs: list, config: dict) -> dict[str, str]:
    """name -> the type the recipe wanted, for tensors whose rows did not fit it."""
    mixed = _mixture_plan(recipe, specs, config)
    if recipe.mixture is not None:
        return {n: wanted for n, (wanted, stored) in mixed.items() if wanted != stored}
    names = [s.name for s in specs]
    outputs = output_names(names, config)
    out = {}
    for s in specs:
        if recipe.convention == "cast" or len(s.shape) != 2 or s.dtype not in FLOAT_TYPES:
            continue
        if recipe.convention == "linear" and not _BLOCK_WEIGHT.search(s.name):
            continue
        wanted = recipe.output if (recipe.output and s.name in outputs) else recipe.main
        if not fits(wanted, tuple(s.shape)):
            out[s.name] = wanted
    return out
