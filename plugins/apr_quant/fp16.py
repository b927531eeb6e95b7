"""fp16: cast every floating-point tensor, norms and embeddings included, to float16.

Halves an f32 model losslessly for inference in practice; values beyond
±65504 overflow, which is why bf16 exists."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Fp16(QuantScheme):
    name = "fp16"
    summary = "every floating-point tensor as IEEE float16 (16 bits/weight)"
    paper = "IEEE 754-2008 binary16"
    recipe = Recipe("F16", "cast")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Fp16())
