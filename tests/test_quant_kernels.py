"""Quantization kernels: Triton (interpreter on CPU) against the torch codecs, on odd shapes."""

import os

import pytest
import torch

from apr_core.kernels import quant as kernels
from apr_core.kernels.quant import reference
from apr_core.quant import codec

triton_impl = pytest.importorskip("apr_core.kernels.quant.triton")
assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


def _x(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 10 ** torch.empty(rows, 1).uniform_(-3, 2, generator=g)
    x[0, :32] = 0  # an all-zero block
    if rows > 1:
        x[1, :32] = torch.tensor([0.5, -3.5] * 16)  # exact halves: rounding direction matters
    return x


@pytest.mark.parametrize("shape", [(1, 32), (3, 96), (7, 160), (33, 64), (5, 1056)])
def test_int4_quantize_and_dequantize_match_reference(shape):
    x = _x(*shape, seed=shape[0] * 7 + shape[1])
    ref = reference.int4_quantize(x)
    tri = triton_impl.int4_quantize(x)
    assert torch.equal(ref, tri)
    assert torch.equal(triton_impl.int4_dequantize(tri.reshape(-1), *shape),
                       reference.int4_dequantize(ref.reshape(-1), *shape))


@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (7, 768), (33, 256)])
def test_q4k_dequantize_matches_reference(shape):
    x = _x(*shape, seed=shape[0] + shape[1])
    raw = codec("Q4_K").quantize(x)
    assert torch.equal(triton_impl.q4k_dequantize(raw, *shape), reference.q4k_dequantize(raw, *shape))


def test_dispatch(monkeypatch):
    x = _x(3, 64, 1)
    raw = codec("APR_Q4").quantize(x)
    for mode in ("triton", "torch"):
        monkeypatch.setenv("APR_KERNELS", mode)
        assert torch.equal(kernels.int4_quantize(x).reshape(-1), raw)
        assert torch.equal(kernels.dequantize(raw, "APR_Q4", (3, 64)), codec("APR_Q4").dequantize(raw, (3, 64)))
        k = codec("Q4_K").quantize(torch.randn(2, 256))
        assert torch.equal(kernels.dequantize(k, "Q4_K", (2, 256)), codec("Q4_K").dequantize(k, (2, 256)))
