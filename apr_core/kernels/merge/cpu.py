"""Merge kernels on CPU tensors through C (dare.c, magnitude.c, ties.c; see
apr_core/kernels/native.py).

Bit-identical to the references (tests/test_kernels_native.py compares them) and several times
faster where a whole-array numpy or torch formulation pays for every intermediate: DARE's Philox
stream, the magnitude histograms of TIES' trim threshold, and TIES' combination. Both work element by element
(the stream is counter-based), so a long tensor is split into contiguous parts, one per torch
thread, that run at the same time (ctypes releases the GIL). Each function returns None where
the kernel cannot be built; the caller then runs the reference.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import native

_HERE = Path(__file__).parent
_PART = 1 << 20  # elements below which one thread does the whole tensor
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_u64, _ptr = ctypes.c_uint64, ctypes.c_void_p
_SIGNATURES = {  # name: (argument types, result type)
    "apr_dare_f32": ([_ptr, _u64, _u64, _u64, _u64, ctypes.c_float], None),
    "apr_magnitude_hist_bf16": ([_ptr, _ptr, _u64, ctypes.c_int64, _ptr], ctypes.c_int),
    "apr_magnitude_hist_f32": ([_ptr, _ptr, _u64, ctypes.c_int64, _ptr], ctypes.c_int),
    "apr_ties_f32": ([_ptr, _u64, _u64, ctypes.c_int64, _ptr, _ptr, ctypes.c_int, _ptr], None),
}


def _kernel(source: str, name: str):
    return native.function(_HERE / source, name, *_SIGNATURES[name])


def _parts(n: int, run) -> list:
    """``run(lo, hi)`` over contiguous parts of range(n), one per torch thread, concurrently."""
    import torch

    global _pool, _pool_size
    parts = max(1, min(torch.get_num_threads(), n // _PART))
    if parts == 1:
        return [run(0, n)]
    if _pool_size < parts:
        _pool, _pool_size = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="apr-merge"), parts
    bounds = [n * i // parts for i in range(parts + 1)]
    return [job.result() for job in [_pool.submit(run, lo, hi) for lo, hi in zip(bounds, bounds[1:])]]


def dare_(delta, threshold: int, scale: float, seed: int, offset: int):
    """``reference.dare_`` on a contiguous 1-D float32 CPU tensor, in place."""
    fn = _kernel("dare.c", "apr_dare_f32")
    if fn is None:
        return None
    base = delta.data_ptr()
    _parts(delta.numel(), lambda lo, hi: fn(base + 4 * lo, hi - lo, offset + lo, seed, threshold, scale))
    return delta


def kth_largest_task_vector(v, base, density: float):
    """``reference.kth_largest_magnitude`` of the task vector float(v) - float(base), for
    contiguous CPU tensors of one dtype, bfloat16 or float32; None for anything else."""
    import torch

    from .reference import radix_select

    kinds = {torch.bfloat16: ("apr_magnitude_hist_bf16", 2), torch.float32: ("apr_magnitude_hist_f32", 4)}
    if v.dtype != base.dtype or v.dtype not in kinds or v.shape != base.shape or v.device.type != "cpu" \
            or base.device.type != "cpu" or not (v.is_contiguous() and base.is_contiguous()):
        return None
    name, size = kinds[v.dtype]
    fn = _kernel("magnitude.c", name)
    if fn is None:
        return None
    vp, bp = v.data_ptr(), base.data_ptr()

    def count(bucket):
        bins = 1 << 16 if bucket is None else (1 << 16) + 2

        def run(lo, hi):
            hist = torch.zeros(bins, dtype=torch.int64)
            if fn(vp + size * lo, bp + size * lo, hi - lo, -1 if bucket is None else bucket, hist.data_ptr()):
                raise MemoryError("no memory for the magnitude histograms")
            return hist

        total = sum(_parts(v.numel(), run))
        return total if bucket is None else total[1:-1]

    return radix_select(count, v.numel(), density)


def ties_combine(deltas, thresholds, weights, normalize: bool):
    """``reference.ties_combine`` of a contiguous (K, n) float32 CPU tensor; None when the kernel
    cannot be built or a threshold is not a float32 value."""
    import numpy as np
    import torch

    k, n = deltas.shape
    if deltas.device.type != "cpu" or not deltas.is_contiguous() or k == 0:
        return None
    if any(float(np.float32(t)) != float(t) for t in thresholds):
        return None  # torch compares in float32; a threshold between two floats is left to it
    fn = _kernel("ties.c", "apr_ties_f32")
    if fn is None:
        return None
    t = torch.tensor([float(x) for x in thresholds], dtype=torch.float32)
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    out = torch.empty(n, dtype=torch.float32)

    def run(lo, hi):
        # rows keep their stride n: the part starts lo elements into row 0
        fn(deltas.data_ptr() + 4 * lo, hi - lo, n, k, t.data_ptr(), w.data_ptr(), int(normalize),
           out.data_ptr() + 4 * lo)

    _parts(n, run)
    return out
