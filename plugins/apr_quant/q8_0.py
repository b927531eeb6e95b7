"""q8_0: llama.cpp's Q8_0 for every 2-D weight (embeddings and output included), 1-D tensors F32.

Bit-exact with ggml's reference quantize_row_q8_0_ref. Rows not a multiple
of 32 fall back to F16, as llama.cpp does."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Q8_0Scheme(QuantScheme):
    name = "q8_0"
    summary = "llama.cpp Q8_0: 32-blocks of int8 with an f16 scale (8.5 bits/weight)"
    paper = "Gerganov et al., ggml/llama.cpp (Q8_0 reference quantizer)"
    recipe = Recipe("Q8_0", "gguf", mixture="Q8_0")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Q8_0Scheme())
