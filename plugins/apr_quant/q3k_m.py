"""q3k_m: llama-quantize's Q3_K_M mixture: Q3_K weights, attn_output Q4_K, attn_v Q5_K (first two
layers) else Q4_K, ffn_down Q5_K (first sixteenth) else Q4_K, output head Q6_K, 1-D tensors F32.

Rules and fallbacks are llama.cpp's (apr_core.quant.mixtures; Q3_K falls back to IQ4_NL, Q4_K
to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0 on rows not a multiple of 256); bytes are ggml's quantizers'."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q3KM(QuantScheme):
    name = "q3k_m"
    summary = "llama.cpp Q3_K_M: Q3_K super-blocks (3.4375 bits/weight), attn_v/attn_output/ffn_down raised"
    paper = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
    recipe = Recipe("Q3_K", "gguf", output="Q6_K", mixture="Q3_K_M")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q3KM())
