"""Torch definitions the quantization kernels must match: the codecs of apr_core.quant.

AprQ4 quantize/dequantize and Q4_K dequantize, on ``(blocks, bytes)`` uint8
and ``(blocks, 32)`` float32 views, exactly as the stored files define them.
"""

from __future__ import annotations

from ...quant import codec


def int4_quantize(x):
    """(rows, cols) float32, cols % 32 == 0 -> (rows * cols / 32, 18) AprQ4 blocks."""
    return codec("APR_Q4").encode_rows(x.float().contiguous()).reshape(-1, 18)


def int4_dequantize(raw, rows: int, cols: int):
    return codec("APR_Q4").decode_rows(raw.reshape(-1), rows, cols)


def q4k_dequantize(raw, rows: int, cols: int):
    return codec("Q4_K").decode_rows(raw.reshape(-1), rows, cols)
