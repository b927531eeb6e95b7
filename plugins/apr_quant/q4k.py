"""q4k: llama.cpp's Q4_K for every 2-D weight, Q6_K for the output head, 1-D tensors F32.

Bytes are those of ggml's quantize_row_q4_K_ref / q6_K_ref (checked against
the C code). Rows not a multiple of 256 fall back to Q5_0 (then F16), the
same chain llama.cpp uses; llama.cpp's Q4_K_M additionally raises some
attn_v/ffn_down layers to Q6_K, which this scheme does not."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q4K(QuantScheme):
    name = "q4k"
    summary = "llama.cpp Q4_K super-blocks (4.5 bits/weight), output head Q6_K"
    paper = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
    recipe = Recipe("Q4_K", "gguf", output="Q6_K")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q4K())
