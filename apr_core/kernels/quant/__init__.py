"""Quantization kernels: AprQ4 quantize/dequantize and Q4_K dequantize, Triton or torch; Q8_0 in C.

``dequantize(raw, dtype, shape)`` is what `QuantLinear` calls for every
matmul; on CUDA with triton installed AprQ4 and Q4_K run a Triton kernel,
everything else (and every other dtype) the torch codec. The dispatch rule is
apr_core.kernels.use_triton. Q8_0's encoding on CPU tensors takes a C kernel (cpu.py, q8_0.c:
`Q8_0.encode` dispatches with apr_core.kernels.use_native).
"""

from __future__ import annotations

from .. import use_triton
from . import reference

TRITON_DTYPES = ("APR_Q4", "Q4_K")


def dequantize(raw, dtype: str, shape: tuple[int, ...]):
    """float32 tensor of ``shape`` from stored bytes of ``dtype``."""
    from ...quant import codec

    if dtype in TRITON_DTYPES and use_triton(raw):
        from . import triton as tri

        cols = int(shape[-1])
        rows = raw.numel() // codec(dtype).row_bytes(cols)
        fn = tri.int4_dequantize if dtype == "APR_Q4" else tri.q4k_dequantize
        return fn(raw, rows, cols).reshape(shape)
    return codec(dtype).dequantize(raw, shape)


def int4_quantize(x):
    """(rows, cols) float -> AprQ4 blocks ``(rows * cols / 32, 18)``; Triton on CUDA."""
    if use_triton(x):
        from . import triton as tri

        return tri.int4_quantize(x)
    return reference.int4_quantize(x)
