"""int4: the .apr AprQ4 layout, blocks of 32 with an f16 scale (absmax/7) and codes q+8.

Only the linear weights of the transformer blocks; embeddings, output head
and norms keep their source type. Rows not a multiple of 32 keep their
source type. An AprQ4 block is also a GGUF Q4_0 block with the same values,
so --format gguf copies the blocks (see apr_core.quant.apr)."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Int4(QuantScheme):
    name = "int4"
    summary = "AprQ4: 32-element blocks, f16 scale absmax/7, 4.5 bits/weight"
    paper = "Dettmers & Zettlemoyer 2023, The case for 4-bit precision: k-bit Inference Scaling Laws"
    recipe = Recipe("APR_Q4", "linear")


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Int4())
