"""Quantize many tensors at once: a thread pool over tensors, each tensor on one intra-op thread.

The codecs are single-threaded per tensor (`codec.one_thread`): their thousands of small ops
lose more to intra-op hand-offs than they gain. A model has hundreds of independent tensors,
so the machine's cores are used one tensor per worker instead. torch releases the GIL inside
its ops, so plain threads run the codecs in parallel; results come back in input order, at
most ``window`` ahead of the consumer (which bounds memory to that many tensors' outputs),
so a writer can stream them while later tensors are still being quantized. Each tensor's
bytes are computed by exactly the same ops as serially, so the output is byte-identical.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count() -> int:
    """Threads for tensor-parallel work: ``APR_THREADS`` if set, else the CPUs this process may use."""
    env = os.environ.get("APR_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                window: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` computed on ``workers`` threads, yielded in order, ``window`` in flight.

    With one worker it is a plain serial loop (no thread). An exception in ``fn`` is raised at
    its item's turn; pending work is cancelled when the consumer stops early.
    """
    from .codec import one_thread

    workers = worker_count() if workers is None else max(1, workers)
    if workers == 1:
        for item in items:
            yield fn(item)
        return
    window = max(workers + 1, window or 0)
    pending: deque = deque()
    with one_thread(), ThreadPoolExecutor(workers, thread_name_prefix="apr-quant") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
