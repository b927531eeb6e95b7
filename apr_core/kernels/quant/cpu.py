"""Quantization kernels on CPU tensors through C (q8_0.c; see apr_core/kernels/native.py).

The GGUF export of a model spends its codec time in Q8_0 (every 2-D weight of ``--scheme q8_0``,
and the output head of most k-quant mixtures); in torch that is seven whole-array passes at about
4 ns per element, in C one pass. Same bits as the reference (tests/test_kernels_native.py); each
function returns None where the kernel cannot be built or the input is not one it handles, and
the caller runs the reference.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from .. import native

_HERE = Path(__file__).parent
_u64, _ptr = ctypes.c_uint64, ctypes.c_void_p


def q8_0_encode(x):
    """``Q8_0.encode_rows`` of a contiguous float32 CPU tensor: ``(blocks, 34)`` uint8; None when
    the kernel cannot be built or a block holds NaN or an infinity."""
    import torch

    from ...quant.codec import f16_bytes

    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or x.numel() % 32:
        return None
    fn = native.function(_HERE / "q8_0.c", "apr_q8_0_f32", [_ptr, _u64, _ptr, _ptr], ctypes.c_int)
    if fn is None:
        return None
    blocks = x.numel() // 32
    out = torch.empty((blocks, 34), dtype=torch.uint8)
    scales = torch.empty(blocks, dtype=torch.float32)
    if fn(x.data_ptr(), blocks, scales.data_ptr(), out.data_ptr()):
        return None
    out[:, :2] = f16_bytes(scales)
    return out
