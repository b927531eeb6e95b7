"""int8: the .apr AprQ8 layout, symmetric int8 with one f32 scale (absmax/127) per tensor.

Only the linear weights of the transformer blocks are quantized; embeddings,
output head and norms keep their source type (bitsandbytes/transformers
practice). One scale per tensor is what the AprQ8 layout allows; a single
outlier coarsens every value, which int8-channel avoids."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Int8(QuantScheme):
    name = "int8"
    summary = "AprQ8: block weights as int8 with one absmax/127 scale per tensor"
    paper = "Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"
    recipe = Recipe("APR_Q8", "linear")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Int8())
