"""nf4: 4-bit NormalFloat through bitsandbytes (blocks of 64, f32 absmax, no double quantization).

Quantization is bitsandbytes' own; without bitsandbytes (or a backend for
this machine) the scheme fails with that message instead of using another
method. Same tensor selection as int4; rows not a multiple of 64 keep their
source type. GGUF has no NF4 type, so nf4 files cannot be exported to GGUF."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.quant.policy import Recipe

from .common import QUANT_KIND, QuantScheme


class Nf4(QuantScheme):
    name = "nf4"
    summary = "QLoRA NormalFloat4 via bitsandbytes, blocks of 64 with an f32 absmax"
    paper = "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs"
    recipe = Recipe("NF4", "linear")

    def check(self, params):
        from apr_core.quant.nf4 import _bitsandbytes

        _bitsandbytes()  # fail before loading anything when bitsandbytes is unusable


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    register(Nf4())
