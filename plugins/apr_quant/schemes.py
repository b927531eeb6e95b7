"""The quantization schemes of ``apr quantize --scheme``: one row per scheme.

A scheme is a name, a one-line summary, the method it follows and a `Recipe`
(apr_core.quant.policy: the dtype its weights get and which tensors stay in
higher precision). Adding a scheme is adding a row; the codecs live in
apr_core.quant.

- ``fp16`` / ``bf16`` cast every floating-point tensor (norms and embeddings
  included); fp16 overflows beyond ±65504, bf16 keeps float32's range at three
  fewer mantissa bits.
- ``int8`` (AprQ8, one absmax/127 scale per tensor: a single outlier coarsens
  every value), ``int8-channel`` (one scale per output row, the usual fix),
  ``int4`` (AprQ4: 32-blocks, f16 scale absmax/7, codes q+8; an AprQ4 block is
  a GGUF Q4_0 block, so ``--format gguf`` copies it) and ``nf4``
  (bitsandbytes' NormalFloat4, blocks of 64) quantize only the linear weights
  of the transformer blocks; embeddings, output head and norms keep their
  type, and rows that do not fit the block keep theirs.
- ``q8_0``, ``q6k``, ``q4k`` (Q4_K_S), ``q4k_m``, ``q5k_m`` and ``q3k_m`` are
  llama-quantize's file types: every 2-D weight, embeddings and output
  included, 1-D tensors F32, with llama.cpp's per-tensor mixture rules
  (`apr_core.quant.mixtures`: output head Q6_K, more bits for some attn_v /
  ffn_down layers) and fallbacks for rows that do not fit; bytes equal
  llama-quantize's from the same f32 source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from apr_core.quant.policy import Recipe

from .common import QuantScheme


def _needs_bitsandbytes() -> None:
    from apr_core.quant.nf4 import bitsandbytes_functional

    bitsandbytes_functional()  # fail before loading anything when bitsandbytes is unusable


@dataclass(frozen=True)
class Scheme:
    name: str
    summary: str
    paper: str
    recipe: Recipe
    requires: Callable[[], None] | None = None  # raises AprError when a dependency is unusable


KQUANTS = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
SCHEMES = (
    Scheme("fp16", "every floating-point tensor as IEEE float16 (16 bits/weight)", "IEEE 754-2008 binary16",
           Recipe("F16", "cast")),
    Scheme("bf16", "every floating-point tensor as bfloat16 (16 bits/weight, f32 range)",
           "Kalamkar et al. 2019, A Study of BFLOAT16 for Deep Learning Training", Recipe("BF16", "cast")),
    Scheme("int8", "AprQ8: block weights as int8 with one absmax/127 scale per tensor",
           "Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient "
           "Integer-Arithmetic-Only Inference", Recipe("APR_Q8", "linear")),
    Scheme("int8-channel", "int8 with one absmax/127 scale per output row (per-channel)",
           "Dettmers et al. 2022, LLM.int8() (vector-wise quantization); Jacob et al. 2018",
           Recipe("APR_Q8_ROW", "linear")),
    Scheme("int4", "AprQ4: 32-element blocks, f16 scale absmax/7, 4.5 bits/weight",
           "Dettmers & Zettlemoyer 2023, The case for 4-bit precision: k-bit Inference Scaling Laws",
           Recipe("APR_Q4", "linear")),
    Scheme("nf4", "QLoRA NormalFloat4 via bitsandbytes, blocks of 64 with an f32 absmax",
           "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs", Recipe("NF4", "linear"),
           requires=_needs_bitsandbytes),
    Scheme("q8_0", "llama.cpp Q8_0: 32-blocks of int8 with an f16 scale (8.5 bits/weight)",
           "Gerganov et al., ggml/llama.cpp (Q8_0 reference quantizer)", Recipe("Q8_0", "gguf", mixture="Q8_0")),
    Scheme("q6k", "llama.cpp Q6_K super-blocks (6.5625 bits/weight)", KQUANTS,
           Recipe("Q6_K", "gguf", mixture="Q6_K")),
    Scheme("q4k", "llama.cpp Q4_K_S: Q4_K super-blocks (4.5 bits/weight), some layers Q5_K, output head Q6_K",
           KQUANTS, Recipe("Q4_K", "gguf", output="Q6_K", mixture="Q4_K_S")),
    Scheme("q4k_m", "llama.cpp Q4_K_M: Q4_K, half the attn_v/ffn_down layers Q6_K, output head Q6_K", KQUANTS,
           Recipe("Q4_K", "gguf", output="Q6_K", mixture="Q4_K_M")),
    Scheme("q5k_m", "llama.cpp Q5_K_M: Q5_K super-blocks (5.5 bits/weight), half the attn_v/ffn_down layers Q6_K",
           KQUANTS, Recipe("Q5_K", "gguf", output="Q6_K", mixture="Q5_K_M")),
    Scheme("q3k_m", "llama.cpp Q3_K_M: Q3_K super-blocks (3.4375 bits/weight), attn_v/attn_output/ffn_down raised",
           KQUANTS, Recipe("Q3_K", "gguf", output="Q6_K", mixture="Q3_K_M")),
)


def techniques() -> list[QuantScheme]:
    return [QuantScheme(row) for row in SCHEMES]
