"""DARE on CPU tensors through the C kernel in dare.c (see apr_core/kernels/native.py).

Bit-identical to `reference.dare_` (tests/test_kernels_merge.py compares them), several times
faster: the reference's numpy Philox stream is most of a DARE merge's time on a CPU. The
stream is counter-based, so a long tensor is split into contiguous parts, one per torch thread,
that run at the same time (ctypes releases the GIL).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import native

_SOURCE = Path(__file__).with_name("dare.c")
_PART = 1 << 20  # elements below which one thread does the whole tensor
_pool: ThreadPoolExecutor | None = None


def _kernel():
    lib = native.library(_SOURCE)
    if lib is None:
        return None
    fn = lib.apr_dare_f32
    if fn.argtypes is None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                       ctypes.c_uint64, ctypes.c_float]
        fn.restype = None
    return fn


def available() -> bool:
    return _kernel() is not None


def dare_(delta, threshold: int, scale: float, seed: int, offset: int):
    """``reference.dare_`` on a contiguous 1-D float32 CPU tensor, in place; None without the kernel."""
    import torch

    global _pool
    fn = _kernel()
    if fn is None:
        return None
    n, base = delta.numel(), delta.data_ptr()
    parts = max(1, min(torch.get_num_threads(), n // _PART))
    if parts == 1:
        fn(base, n, offset, seed, threshold, scale)
        return delta
    if _pool is None or _pool._max_workers < parts:
        _pool = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="apr-dare")
    bounds = [n * i // parts for i in range(parts + 1)]
    jobs = [_pool.submit(fn, base + 4 * lo, hi - lo, offset + lo, seed, threshold, scale)
            for lo, hi in zip(bounds, bounds[1:])]
    for job in jobs:
        job.result()
    return delta
