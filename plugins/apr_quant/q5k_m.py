"""q5k_m: llama-quantize's Q5_K_M mixture: Q5_K weights, attn_v and ffn_down Q6_K on the layers
Q4_K_M raises, output head Q6_K, 1-D tensors F32.

Rules and fallbacks are llama.cpp's (apr_core.quant.mixtures; Q3_K falls back to IQ4_NL, Q4_K
to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0 on rows not a multiple of 256); bytes are ggml's quantizers'."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q5KM(QuantScheme):
    name = "q5k_m"
    summary = "llama.cpp Q5_K_M: Q5_K super-blocks (5.5 bits/weight), half the attn_v/ffn_down layers Q6_K"
    paper = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
    recipe = Recipe("Q5_K", "gguf", output="Q6_K", mixture="Q5_K_M")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q5KM())
