"""Quantization codecs: float tensors to the bytes of a quantized dtype and back.

``codec("Q4_K").quantize(w)`` returns the raw bytes a .apr or GGUF file
stores for ``w``; ``dequantize(raw, spec)`` turns stored bytes back into
float32. Which dtype each tensor of a model gets is decided in `policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AprError
from .codec import Codec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import TensorSpec


def _codecs() -> dict[str, Codec]:
    from .apr import AprQ4, AprQ8, AprQ8Row
    from .ggml import IQ4_NL, Q4_0, Q5_0, Q5_1, Q8_0
    from .kquants import Q3_K, Q4_K, Q5_K, Q6_K
    from .nf4 import NF4

    return {c.dtype: c for c in (AprQ8(), AprQ8Row(), AprQ4(), Q8_0(), Q4_0(), Q5_0(), Q5_1(), IQ4_NL(),
                                 Q3_K(), Q4_K(), Q5_K(), Q6_K(), NF4())}


_CACHE: dict[str, Codec] = {}


def codec(dtype: str) -> Codec:
    """The codec of a quantized dtype name (APR_Q4, Q4_K ...)."""
    if not _CACHE:
        _CACHE.update(_codecs())
    try:
        return _CACHE[dtype.upper()]
    except KeyError:
        raise AprError(f"no codec for dtype {dtype!r}") from None


def dequantize(raw: "torch.Tensor", spec: "TensorSpec") -> "torch.Tensor":
    """float32 values of a stored tensor (plain dtypes are just converted)."""
    import torch

    if not spec.dt.quantized:
        return raw.to(torch.float32)
    return codec(spec.dtype).dequantize(raw, spec.shape)


__all__ = ["Codec", "codec", "dequantize"]
