"""bf16: cast every floating-point tensor to bfloat16 (float32's exponent, 8-bit mantissa).

Keeps float32's range, so nothing overflows, at 3 fewer mantissa bits than fp16."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Bf16(QuantScheme):
    name = "bf16"
    summary = "every floating-point tensor as bfloat16 (16 bits/weight, f32 range)"
    paper = "Kalamkar et al. 2019, A Study of BFLOAT16 for Deep Learning Training"
    recipe = Recipe("BF16", "cast")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Bf16())
