"""Run quantized weights without dequantizing the whole model: per-matmul and per-lookup modules.

`QuantLinear` keeps a weight's stored bytes and dequantizes them inside each
forward call (one matrix at a time, freed right after the matmul);
`QuantEmbedding` dequantizes only the rows looked up. `install` swaps them
into a transformers module in place of the ``nn.Linear`` / ``nn.Embedding``
whose weight is quantized, so `apr eval` runs any quantized .apr file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AprError

if TYPE_CHECKING:  # pragma: no cover
    from ..model import TensorSpec

import torch
from torch import nn


class _Quantized(nn.Module):
    def __init__(self, raw: torch.Tensor, spec: "TensorSpec"):
        super().__init__()
        from . import codec

        self.codec = codec(spec.dtype)
        self.shape = tuple(spec.shape)
        self.dtype_name = spec.dtype
        self.compute_dtype = torch.float32
        self.register_buffer("raw", raw, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized weight (for code that inspects it; forward never builds it twice)."""
        return self.codec.dequantize(self.raw, self.shape).to(self.compute_dtype)

    def _apply(self, fn, recurse=True):
        # .to(dtype) must not touch the bytes; record the compute dtype instead
        # (nn.Module.to casts floating tensors only, so the uint8 bytes keep their type)
        probe = fn(torch.zeros((), dtype=self.compute_dtype))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{self.dtype_name}, shape={list(self.shape)}"


class QuantLinear(_Quantized):
    """``y = x W^T + b`` with W dequantized from its stored bytes at each call."""

    def __init__(self, raw, spec, bias: torch.Tensor | None = None):
        super().__init__(raw, spec)
        self.out_features, self.in_features = self.shape
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.quant import dequantize

        w = dequantize(self.raw, self.dtype_name, self.shape).to(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


class QuantEmbedding(_Quantized):
    """Embedding lookup that dequantizes only the rows it returns (times ``embed_scale`` if the
    replaced module had one, as Gemma's scaled embedding)."""

    def __init__(self, raw, spec, embed_scale: float | None = None):
        super().__init__(raw, spec)
        self.num_embeddings, self.embedding_dim = self.shape
        self.embed_scale = embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.codec.dequantize_rows(self.raw, self.shape, ids).to(self.compute_dtype)
        if self.embed_scale is not None:
            out = out * torch.tensor(self.embed_scale, dtype=out.dtype)
        return out


def install(module: nn.Module, quantized: dict[str, tuple[torch.Tensor, "TensorSpec"]],
            state: dict[str, torch.Tensor], tie_output: bool) -> set[str]:
    """Replace the owners of ``quantized`` weights (name -> (raw bytes, spec)) in ``module``.

    Biases of replaced linears are taken from ``state`` (and removed from it).
    With ``tie_output`` and a quantized input embedding, the output head becomes a
    `QuantLinear` over the same bytes. Returns the parameter names now provided.
    """
    done: set[str] = set()
    for name, (raw, spec) in quantized.items():
        owner_name, _, leaf = name.rpartition(".")
        if leaf != "weight" or len(spec.shape) != 2:
            raise AprError(f"cannot run quantized tensor {name} ({spec.dtype}): only 2-D weights of "
                           f"linear and embedding layers can stay quantized")
        owner = module.get_submodule(owner_name)
        is_input = owner is module.get_input_embeddings()
        if isinstance(owner, nn.Embedding):
            scale = getattr(owner, "scalar_embed_scale", None)
            new = QuantEmbedding(raw, spec, float(scale) if scale is not None else None)
        elif isinstance(owner, nn.Linear):
            new = QuantLinear(raw, spec, state.pop(owner_name + ".bias", None))
            done.add(owner_name + ".bias")
        else:
            raise AprError(f"cannot run quantized tensor {name}: its module is a {type(owner).__name__}")
        module.set_submodule(owner_name, new)
        done.add(name)
        if tie_output and isinstance(new, QuantEmbedding) and is_input:
            head = module.get_output_embeddings()
            head_name = next(n for n, m in module.named_modules() if m is head)
            module.set_submodule(head_name, QuantLinear(raw, spec))
            done.add(head_name + ".weight")
    return done
