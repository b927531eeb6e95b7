"""q6k: llama.cpp's Q6_K for every 2-D weight, 1-D tensors F32.

Bit-exact with ggml's quantize_row_q6_K_ref. Rows not a multiple of 256 fall
back to Q8_0 (then F16), as llama.cpp does."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q6K(QuantScheme):
    name = "q6k"
    summary = "llama.cpp Q6_K super-blocks (6.5625 bits/weight)"
    paper = "Kawrakow 2023, k-quants (llama.cpp PR #1684)"
    recipe = Recipe("Q6_K", "gguf", mixture="Q6_K")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q6K())
