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

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count() -> int:
    """Threads for tensor-parallel work: the count apr chose for this run (`runtime.threads`:
    ``--threads``, ``APR_THREADS``, ``OMP_NUM_THREADS``, else one per usable core)."""
    from ..runtime import threads

    return threads.choose()[0]


class ordered_map:
    """``map(fn, items)`` computed on ``workers`` threads, yielded in order, ``window`` in flight.

    Work starts when the object is made (so a caller can do something else, such as writing a
    file header, while the first items are computed) and the object is a context manager that
    stops the pool. With one worker it is a plain serial loop (no thread). An exception in
    ``fn`` is raised at its item's turn; pending work is cancelled when the consumer stops early.
    """

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                 window: int | None = None):
        self.fn, self.items = fn, iter(items)
        self.workers = worker_count() if workers is None else max(1, workers)
        self.window = max(self.workers + 1, window or 0)
        self.pending: deque = deque()
        self.pool = None
        if self.workers > 1:
            from .codec import one_thread

            self._threads = one_thread()
            self._threads.__enter__()
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="apr-quant")
            self._fill()

    def _fill(self) -> None:
        while len(self.pending) < self.window:
            try:
                item = next(self.items)
            except StopIteration:
                return
            self.pending.append(self.pool.submit(self.fn, item))

    def __iter__(self) -> Iterator[R]:
        if self.pool is None:
            for item in self.items:
                yield self.fn(item)
            return
        try:
            while self.pending:
                result = self.pending.popleft().result()
                self._fill()
                yield result
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is None:
            return
        for f in self.pending:
            f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)
        self.pool = None
        self._threads.__exit__(None, None, None)

    def __enter__(self) -> "ordered_map":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
