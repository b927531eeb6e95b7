"""glibc malloc settings apr uses: keep freed memory for reuse, give it back, or cap mappings.

torch's CPU tensors come from glibc ``malloc``. A block above glibc's mmap threshold is a fresh
mapping whose pages fault in (and are zeroed) on first touch and go back to the kernel when it is
freed; a block below it comes from the heap, whose freed memory stays in the process. The
threshold starts at 128 KiB and rises to the size of each large block freed (up to 32 MiB).
Three places pull on that, each measured:

- `retain_freed_memory` (the quantization codecs): they allocate and free MB-sized temporaries
  thousands of times per model, and most of their time went to fresh page faults (Q8_0's
  rounding: 6 ms per chunk before, 0.6 ms after, on the 2-core development machine); raising the
  mmap and trim thresholds lets the heap keep and reuse that memory (same high-water mark).
- `retain_freed_memory(CHUNK_MMAP_BYTES, CHUNK_TRIM_BYTES)` (merging): each tensor is merged in
  16 MiB float32 chunks whose buffers are freed chunk after chunk; with glibc's moving threshold
  and trim they were mapped afresh most of the time (430k page faults for a 0.47 GB bf16 average
  merge). A fixed 32 MiB threshold keeps the chunks on the heap while tensors above it (written
  once) stay mappings, and a 256 MiB trim threshold keeps the freed chunks for the next one:
  190k faults, 0.7-0.8x the wall time, about 110 MB more peak RSS (`benchmarks/merge.py`,
  docs/merge.md). The codecs' 1 GiB values gave fewer faults but a larger heap and no gain there.
- `trim_heap` (the layer sweep of pruning and calibration, and every CPU step of adapter
  training; `apr_core.runtime.trainer.heap_trim_pays` says why not of full training): each
  layer frees tens of megabytes; without a ``malloc_trim`` the resident size crept up layer after
  layer though nothing was alive. A training step frees its activations in another order than it
  allocated them, and the holes left in the heap could not hold the next step's: a SmolLM2 LoRA
  run's heap grew 1.76 -> 2.01 -> 2.23 GB over its first steps with 0.18 GB alive between them,
  and the run peaked 0.35-0.45 GB higher than with a trim before each step (3.27-3.47 GB against
  2.92-3.12 GB). The trim costs page faults when the next step reuses those pages (0.6 s more
  system time per 6.5 s step there, about 5% of its tokens/s), and on a heap that holds little it
  buys nothing: a tiny model's step ran 30% slower trimmed at the same peak. So a step trims only
  when the heap holds at least 256 MiB free and more free than in use (`trim_slack`).
- `configure` (``APR_MMAP_THRESHOLD=BYTES``, opt-in, set by the ``apr`` command at start): fixes
  the threshold low so freed activations leave the process. A SmolLM2 LoRA step then peaked at
  2.76 GB instead of 3.23 GB (the memory plan counts 2.86 GB alive), but the mapping and faults of
  every large allocation cost 9% of that run's tokens/s and 20-30% of perplexity's
  (docs/finetune.md, docs/performance.md), so it is for memory-bound CPU runs to ask for. A
  threshold the user set (here or as glibc's ``MALLOC_MMAP_THRESHOLD_``) is never overridden.

Every function is a no-op without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

ENV = "APR_MMAP_THRESHOLD"
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
RETAIN_BYTES = 1 << 30  # blocks below this come from (and return to) the heap, not fresh mappings
CHUNK_MMAP_BYTES = 32 << 20  # merging: chunk buffers below this stay on the heap, tensors above are mappings
CHUNK_TRIM_BYTES = 256 << 20  # merging: free heap kept for the next chunks
TRIM_SLACK_BYTES = 256 << 20  # free heap from which a training step trims before it starts

_lock = threading.Lock()
_libc: ctypes.CDLL | bool | None = None
_retained = False
_threshold: int | None = None


def _glibc():
    """glibc, or False for another C library."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.mallopt.argtypes, lib.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            lib.malloc_trim.argtypes, lib.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def user_threshold(environ=os.environ) -> bool:
    return "MALLOC_MMAP_THRESHOLD_" in environ or bool(threshold(environ))


def threshold(environ=os.environ) -> int:
    """The mmap threshold asked for with ``APR_MMAP_THRESHOLD`` in bytes, 0 for none."""
    if "MALLOC_MMAP_THRESHOLD_" in environ:
        return 0
    raw = environ.get(ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else 0
    except ValueError:
        return 0


def configure(environ=os.environ) -> int:
    """Apply ``APR_MMAP_THRESHOLD`` to this process (once); the threshold set, 0 if none."""
    global _threshold
    with _lock:
        if _threshold is None:
            _threshold = 0
            value, libc = threshold(environ), _glibc()
            if value and libc and libc.mallopt(M_MMAP_THRESHOLD, value) == 1:
                _threshold = value
        return _threshold


def retain_freed_memory(mmap_bytes: int = RETAIN_BYTES, trim_bytes: int = RETAIN_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds once per process (unless the user chose a
    threshold; the first caller's values stay); True if glibc accepted them."""
    global _retained
    with _lock:
        if _retained:
            return True
        _retained = True
        libc = _glibc()
        if not libc or user_threshold():
            return False
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_bytes))


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_bytes() -> tuple[int, int] | None:
    """(bytes in use, free bytes held) of the C heap (glibc >= 2.33 ``mallinfo2``), else None."""
    libc = _glibc()
    fn = getattr(libc, "mallinfo2", None) if libc else None
    if fn is None:
        return None
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks), int(info.fordblks)


def trim_slack(min_bytes: int = TRIM_SLACK_BYTES) -> bool:
    """`trim_heap` when the heap holds at least ``min_bytes`` free and more free than in use
    (a training step's leftover holes); True if it trimmed. Trimming a heap that holds little
    costs page faults for nothing: a tiny model's LoRA step ran 30% slower trimmed."""
    held = heap_bytes()
    if held is None or held[1] < min_bytes or held[1] <= held[0]:
        return False
    trim_heap()
    return True
