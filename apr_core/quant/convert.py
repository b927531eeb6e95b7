"""Lazily re-store a model's tensors in other dtypes (quantize, dequantize or cast).

`convert` returns a model whose changed tensors are computed only when the
writer asks for them, one at a time, so quantizing never holds more than one
tensor's float copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..model import LazyTensor, Model, TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch


def float_tensor(lazy: LazyTensor) -> "torch.Tensor":
    """A tensor's values as float32, dequantizing stored blocks."""
    import torch

    from . import codec

    spec = lazy.spec
    if spec.dt.quantized:
        return codec(spec.dtype).dequantize(lazy.load(), spec.shape)
    return lazy.load().to(torch.float32)


def restore(lazy: LazyTensor, dtype: str, device: str = "cpu") -> LazyTensor:
    """``lazy`` stored as ``dtype`` (unchanged if it already is); quantization runs on ``device``."""
    from . import codec

    if lazy.spec.dtype == dtype:
        return lazy
    spec = TensorSpec(lazy.spec.name, dtype, lazy.spec.shape)

    def load():
        if spec.dt.quantized:
            return codec(dtype).quantize(float_tensor(lazy), device)
        if not lazy.spec.dt.quantized and lazy.spec.dt.torch_name is not None:
            return lazy.load().to(spec.dt.torch_dtype())
        return float_tensor(lazy).to(spec.dt.torch_dtype())

    return LazyTensor(spec, load)


def convert(model: Model, targets: dict[str, str], device: str = "cpu") -> Model:
    """A copy of ``model`` with tensor ``name`` stored as ``targets[name]`` (quantized on ``device``)."""
    out = model.derive()
    for name, dtype in targets.items():
        out.tensors[name] = restore(model.tensors[name], dtype, device)
    return out
