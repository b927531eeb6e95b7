"""Triton kernels for the sparsity masks (see reference.py for the definitions they match)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _nm_mask_kernel(s_ptr, out_ptr, n_groups, N: tl.constexpr, M: tl.constexpr, BLOCK: tl.constexpr):
    """keep[g, i] = rank_i < N where rank_i = #{j : s_j > s_i or (s_j == s_i and j < i)} in group g."""
    pid = tl.program_id(0)
    g = pid * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, M)
    offs = g[:, None] * M + k[None, :]
    valid = (g < n_groups)[:, None]
    s = tl.load(s_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    si = s[:, :, None]
    sj = s[:, None, :]
    ki = k[None, :, None]
    kj = k[None, None, :]
    beats = (sj > si) | ((sj == si) & (kj < ki))
    rank = tl.sum(beats.to(tl.int32), axis=2)
    tl.store(out_ptr + offs, (rank < N).to(tl.int8), mask=valid)


@triton.jit
def _row_prune_kernel(s_ptr, out_ptr, n_cols, k, BLOCK: tl.constexpr):
    """prune[r, c] for the k lowest scores of row r (scores >= 0; ties: lower column first).

    The k-th smallest value v is found by bisection on the IEEE bit patterns (monotonic for
    non-negative floats); then every score below v is pruned and scores equal to v are pruned in
    column order until k are pruned.
    """
    row = tl.program_id(0)
    base = s_ptr + row.to(tl.int64) * n_cols
    lo = tl.zeros((), dtype=tl.int32)
    hi = tl.full((), 0x7F800000, dtype=tl.int32)
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        count = tl.zeros((), dtype=tl.int32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n_cols
            bits = tl.load(base + cols, mask=inside, other=0.0).to(tl.int32, bitcast=True)
            count += tl.sum(((bits <= mid) & inside).to(tl.int32), axis=0)
        enough = count >= k
        hi = tl.where(enough, mid, hi)
        lo = tl.where(enough, lo, mid + 1)
    below = tl.zeros((), dtype=tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n_cols
        bits = tl.load(base + cols, mask=inside, other=0.0).to(tl.int32, bitcast=True)
        below += tl.sum(((bits < lo) & inside).to(tl.int32), axis=0)
    quota = k - below
    seen = tl.zeros((), dtype=tl.int32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n_cols
        bits = tl.load(base + cols, mask=inside, other=0.0).to(tl.int32, bitcast=True)
        equal = (bits == lo) & inside
        rank = seen + tl.cumsum(equal.to(tl.int32), axis=0)
        prune = ((bits < lo) & inside) | (equal & (rank <= quota))
        tl.store(out_ptr + row.to(tl.int64) * n_cols + cols, prune.to(tl.int8), mask=inside)
        seen += tl.sum(equal.to(tl.int32), axis=0)


def row_prune_mask(scores, k: int):
    import torch

    s = scores.float().contiguous()
    out = torch.empty(s.shape, dtype=torch.int8, device=s.device)
    _row_prune_kernel[(s.shape[0],)](s, out, s.shape[1], k, BLOCK=1024)
    return out.bool()


def nm_mask(scores, n: int, m: int):
    import torch

    s = scores.contiguous()
    out = torch.empty(s.shape, dtype=torch.int8, device=s.device)
    n_groups = s.numel() // m
    block = 128
    _nm_mask_kernel[(triton.cdiv(n_groups, block),)](s, out, n_groups, N=n, M=m, BLOCK=block)
    return out.bool()

