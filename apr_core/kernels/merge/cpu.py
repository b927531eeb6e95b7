"""Merge kernels on CPU tensors through C (dare.c, magnitude.c; see apr_core/kernels/native.py).

Bit-identical to the references (tests/test_kernels_native.py compares them) and several times
faster where a whole-array numpy or torch formulation pays for every intermediate: DARE's Philox
stream, and the magnitude histograms of TIES' trim threshold. Both work element by element
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
_u64, _ptr = ctypes.c_uint64, ctypes.c_void_p
_SIGNATURES = {
    "apr_dare_f32": [_ptr, _u64, _u64, _u64, _u64, ctypes.c_float],
    "apr_magnitude_hist_bf16": [_ptr, _ptr, _u64, ctypes.c_int64, _ptr],
    "apr_magnitude_hist_f32": [_ptr, _ptr, _u64, ctypes.c_int64, _ptr],
}


def _kernel(source: str, name: str):
    lib = native.library(_HERE / source)
    if lib is None:
        return None
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.argtypes, fn.restype = _SIGNATURES[name], (ctypes.c_int if "hist" in name else None)
    return fn


def _parts(n: int, run) -> list:
    """``run(lo, hi)`` over contiguous parts of range(n), one per torch thread, concurrently."""
    import torch

    global _pool
    parts = max(1, min(torch.get_num_threads(), n // _PART))
    if parts == 1:
        return [run(0, n)]
    if _pool is None or _pool._max_workers < parts:
        _pool = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="apr-merge")
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
