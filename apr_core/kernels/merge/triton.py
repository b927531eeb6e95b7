"""Triton kernels for DARE and TIES (see reference.py for the definitions they match)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dare_kernel(d_ptr, n, offset, seed, threshold, scale, BLOCK: tl.constexpr):
    """d[j] = d[j] * scale if word(offset + j) >= threshold else 0.

    word(g) is word g % 4 of Philox4x32-10 for counter g // 4 under key ``seed``
    (``tl.randint4x``), the same stream reference.random_words computes.
    """
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = j < n
    g = j + offset
    w0, w1, w2, w3 = tl.randint4x(seed, g >> 2)
    lane = g & 3
    word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    keep = word.to(tl.int64) >= threshold
    d = tl.load(d_ptr + j, mask=inside, other=0.0)
    d = tl.where(keep, d * scale, tl.zeros_like(d))
    tl.store(d_ptr + j, d, mask=inside)


@triton.jit
def _trimmed(d_ptr, t_ptr, w_ptr, i, n, j, inside):
    """Task vector i at positions j with |d| < threshold_i set to 0, and its weight."""
    row = (tl.zeros((), dtype=tl.int64) + i) * n  # 64-bit: K * n may exceed 2**31
    d = tl.load(d_ptr + row + j, mask=inside, other=0.0)
    t = tl.load(t_ptr + i)
    d = tl.where(tl.abs(d) >= t, d, tl.zeros_like(d))
    return d, tl.load(w_ptr + i)


@triton.jit
def _ties_kernel(d_ptr, t_ptr, w_ptr, out_ptr, n, K, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    """Trim |d_i| < t_i to zero, elect s = sign(sum_i w_i d_i), then
    out = sum_{i: sign(d_i) = s} w_i d_i  (/ sum of those w_i when NORMALIZE; 0 if none)."""
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = j < n
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(K):
        d, w = _trimmed(d_ptr, t_ptr, w_ptr, i, n, j, inside)
        total = total + w * d
    sign = tl.where(total > 0, 1.0, tl.where(total < 0, -1.0, 0.0))
    num = tl.zeros((BLOCK,), dtype=tl.float32)
    den = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(K):
        d, w = _trimmed(d_ptr, t_ptr, w_ptr, i, n, j, inside)
        agree = d * sign > 0
        num = num + tl.where(agree, w * d, tl.zeros_like(d))
        den = den + tl.where(agree, w, tl.zeros_like(d))
    if NORMALIZE:
        out = tl.where(den > 0, num / tl.where(den > 0, den, 1.0), tl.zeros_like(num))
    else:
        out = num
    tl.store(out_ptr + j, out, mask=inside)


def dare_(delta, threshold: int, scale: float, seed: int, offset: int):
    n = delta.numel()
    block = 1024
    _dare_kernel[(triton.cdiv(n, block),)](delta, n, offset, seed, threshold, scale, BLOCK=block)
    return delta


def ties_combine(deltas, thresholds, weights, normalize: bool):
    import torch

    k, n = deltas.shape
    d = deltas.contiguous()
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=d.device).contiguous()
    w = torch.as_tensor(weights, dtype=torch.float32, device=d.device).contiguous()
    out = torch.empty(n, dtype=torch.float32, device=d.device)
    block = 1024
    _ties_kernel[(triton.cdiv(n, block),)](d, t, w, out, n, k, NORMALIZE=normalize, BLOCK=block)
    return out
