"""int8-channel: symmetric int8 with one f32 scale per output row (APR_Q8_ROW).

Per-channel scales are the usual fix for int8's outlier sensitivity: a large
weight only coarsens its own row. Same tensor selection as int8."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Int8Channel(QuantScheme):
    name = "int8-channel"
    summary = "int8 with one absmax/127 scale per output row (per-channel)"
    paper = "Dettmers et al. 2022, LLM.int8() (vector-wise quantization); Jacob et al. 2018"
    recipe = Recipe("APR_Q8_ROW", "linear")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Int8Channel())
