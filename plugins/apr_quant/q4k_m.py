"""q4k_m: llama-quantize's Q4_K_M mixture: Q4_K weights, attn_v and ffn_down Q6_K on the first and
last eighth of the layers and every third between, output head Q6_K, 1-D tensors F32.

Rules and fallbacks are llama.cpp's (apr_core.quant.mixtures; Q3_K falls back to IQ4_NL, Q4_K
to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0 on rows not a multiple of 256); bytes are ggml's quantizers'."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q4KM(QuantScheme):
    name = "q4k_m"
    summary = "llama.cpp Q4_K_M: Q4_K, half the attn_v/ffn_down layers Q6_K, output head Q6_K"
    paper = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
    recipe = Recipe("Q4_K", "gguf", output="Q6_K", mixture="Q4_K_M")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q4KM())
