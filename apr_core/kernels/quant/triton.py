"""Triton kernels for AprQ4 quantize/dequantize and Q4_K dequantize (see reference.py).

One program handles ``BLOCKS`` quantization blocks. f16 scales are read as
two bytes and bit-cast; divisions use ``div_rn`` (IEEE round-to-nearest) so
quantized codes equal the CPU reference's. On a GPU the compiler may fuse
the Q4_K ``scale * q - offset`` into one FMA, a difference of at most one
float32 ulp from the reference; under the interpreter the results are equal.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCKS = 32


@triton.jit
def _f16_at(ptr, offs, mask):
    lo = tl.load(ptr + offs, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(ptr + offs + 1, mask=mask, other=0).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _block_range(n_blocks, BLOCKS: tl.constexpr):
    """This program's block ids and which of them exist."""
    b = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    return b, b < n_blocks


@triton.jit
def _int4_dequant_kernel(raw_ptr, out_ptr, n_blocks, BLOCKS: tl.constexpr):
    b, valid = _block_range(n_blocks, BLOCKS)
    base = b.to(tl.int64) * 18
    d = _f16_at(raw_ptr, base, valid)
    j = tl.arange(0, 16)
    q = tl.load(raw_ptr + base[:, None] + 2 + j[None, :], mask=valid[:, None], other=0).to(tl.int32)
    out = b.to(tl.int64)[:, None] * 32 + j[None, :]
    tl.store(out_ptr + out, d[:, None] * ((q & 15) - 8).to(tl.float32), mask=valid[:, None])
    tl.store(out_ptr + out + 16, d[:, None] * ((q >> 4) - 8).to(tl.float32), mask=valid[:, None])


@triton.jit
def _int4_codes(x, scale):
    safe = tl.where(scale == 0, 1.0, scale)
    v = tl.math.div_rn(x, safe[:, None])
    r = tl.where(v < 0, -tl.floor(-v + 0.5), tl.floor(v + 0.5))  # halves away from zero
    r = tl.minimum(tl.maximum(r, -8.0), 7.0)
    r = tl.where(scale[:, None] == 0, 0.0, r)
    return (r + 8.0).to(tl.int32)


@triton.jit
def _int4_quant_kernel(x_ptr, out_ptr, n_blocks, BLOCKS: tl.constexpr):
    b, valid = _block_range(n_blocks, BLOCKS)
    j = tl.arange(0, 16)
    src = b.to(tl.int64)[:, None] * 32 + j[None, :]
    lo = tl.load(x_ptr + src, mask=valid[:, None], other=0.0)
    hi = tl.load(x_ptr + src + 16, mask=valid[:, None], other=0.0)
    amax = tl.maximum(tl.max(tl.abs(lo), axis=1), tl.max(tl.abs(hi), axis=1))
    scale16 = tl.math.div_rn(amax, tl.full(amax.shape, 7.0, tl.float32)).to(tl.float16)
    scale = scale16.to(tl.float32)
    packed = _int4_codes(lo, scale) | (_int4_codes(hi, scale) << 4)
    bits = scale16.to(tl.uint16, bitcast=True)
    base = b.to(tl.int64) * 18
    tl.store(out_ptr + base, (bits & 255).to(tl.uint8), mask=valid)
    tl.store(out_ptr + base + 1, (bits >> 8).to(tl.uint8), mask=valid)
    tl.store(out_ptr + base[:, None] + 2 + j[None, :], packed.to(tl.uint8), mask=valid[:, None])


@triton.jit
def _q4k_dequant_kernel(raw_ptr, out_ptr, n_blocks, BLOCKS: tl.constexpr):
    b, valid = _block_range(n_blocks, BLOCKS)
    base = b.to(tl.int64) * 144
    d = _f16_at(raw_ptr, base, valid)
    dmin = _f16_at(raw_ptr, base + 2, valid)
    e = tl.arange(0, 256)
    j = e // 32  # sub-block of each element
    first = j < 4
    m2 = valid[:, None]
    s_j = tl.load(raw_ptr + base[:, None] + 4 + j[None, :], mask=m2, other=0).to(tl.int32)
    s_j4 = tl.load(raw_ptr + base[:, None] + 8 + j[None, :], mask=m2, other=0).to(tl.int32)
    s_jm4 = tl.load(raw_ptr + base[:, None] + 4 + tl.where(first, j, j - 4)[None, :], mask=m2,
                    other=0).to(tl.int32)
    sc = tl.where(first[None, :], s_j & 63, (s_j4 & 15) | ((s_jm4 >> 6) << 4))
    mn = tl.where(first[None, :], s_j4 & 63, (s_j4 >> 4) | ((s_j >> 6) << 4))
    byte = tl.load(raw_ptr + base[:, None] + 16 + ((e // 64) * 32 + e % 32)[None, :], mask=m2,
                   other=0).to(tl.int32)
    q = tl.where(((e // 32) % 2 == 1)[None, :], byte >> 4, byte & 15).to(tl.float32)
    scale = d[:, None] * sc.to(tl.float32)
    offset = dmin[:, None] * mn.to(tl.float32)
    out = b.to(tl.int64)[:, None] * 256 + e[None, :]
    tl.store(out_ptr + out, scale * q - offset, mask=m2)


def _grid(n_blocks: int):
    return (triton.cdiv(n_blocks, BLOCKS),)


def _dequantize(kernel, raw, rows: int, cols: int, block: int):
    n = rows * cols // block
    out = torch.empty(rows * cols, dtype=torch.float32, device=raw.device)
    if n:
        kernel[_grid(n)](raw.contiguous(), out, n, BLOCKS=BLOCKS)
    return out.reshape(rows, cols)


def int4_dequantize(raw, rows: int, cols: int):
    return _dequantize(_int4_dequant_kernel, raw, rows, cols, 32)


def q4k_dequantize(raw, rows: int, cols: int):
    return _dequantize(_q4k_dequant_kernel, raw, rows, cols, 256)


def int4_quantize(x):
    x = x.float().contiguous()
    n = x.numel() // 32
    out = torch.empty((n, 18), dtype=torch.uint8, device=x.device)
    if n:
        _int4_quant_kernel[_grid(n)](x, out, n, BLOCKS=BLOCKS)
    return out
