"""q4k: llama-quantize's Q4_K_S mixture: Q4_K weights, Q6_K output head, 1-D tensors F32.

Tensor types follow llama.cpp's per-tensor rules for Q4_K_S
(apr_core.quant.mixtures): the first four attn_v and the first eighth of the
ffn_down layers are Q5_K, rows not a multiple of 256 fall back as llama.cpp
does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). Bytes are those of ggml's
reference quantizers, so the file equals llama-quantize's Q4_K_S output."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q4K(QuantScheme):
    name = "q4k"
    summary = "llama.cpp Q4_K_S: Q4_K super-blocks (4.5 bits/weight), some layers Q5_K, output head Q6_K"
    paper = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
    recipe = Recipe("Q4_K", "gguf", output="Q6_K", mixture="Q4_K_S")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q4K())
