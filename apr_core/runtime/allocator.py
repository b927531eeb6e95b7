"""Optionally give freed tensor memory back to the system on glibc: less peak RSS for some speed.

glibc's malloc serves a block above its mmap threshold with its own mapping and unmaps it when
freed; below the threshold a block comes from an arena and freed memory stays in the process.
The threshold starts at 128 KiB but rises to the size of each large block freed (up to 32 MiB),
so after the first activations of a training step are released, every later activation of a
small model lands in arenas that fragment and never shrink: a SmolLM2 LoRA step peaked at
3.23 GB of RSS where the memory plan counts 2.86 GB alive. ``APR_MMAP_THRESHOLD=1048576`` fixes
the threshold at 1 MiB (which also stops it from moving): that peak fell to 2.76 GB, but the
mapping and page faults of every large allocation cost 9% of that run's tokens/s and 20-30% of
perplexity's (docs/performance.md), so it is off unless asked for: memory-bound CPU runs opt in.

`configure` calls ``mallopt`` once per process; a ``MALLOC_MMAP_THRESHOLD_`` the user set leaves
glibc as it is, and so do other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "APR_MMAP_THRESHOLD"
DEFAULT = 0  # bytes; 0 = glibc's own behaviour
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_done: int | None = None


def threshold(environ=os.environ) -> int:
    """The mmap threshold apr sets in bytes (``APR_MMAP_THRESHOLD``), 0 for none."""
    if "MALLOC_MMAP_THRESHOLD_" in environ:
        return 0
    raw = environ.get(ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else DEFAULT
    except ValueError:
        return DEFAULT


def configure(environ=os.environ) -> int:
    """Set glibc's mmap threshold for this process (once); the threshold set, 0 if none."""
    global _done
    if _done is not None:
        return _done
    _done = 0
    value = threshold(environ)
    if not value:
        return 0
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return 0  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, value) == 1:
        _done = value
    return _done
