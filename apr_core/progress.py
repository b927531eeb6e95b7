"""Progress bars on stderr that stay silent when stderr is not a terminal or --quiet is set."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled(quiet: bool = False) -> bool:
    if quiet or os.environ.get("APR_QUIET"):
        return False
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str = "", total: int | None = None, quiet: bool = False) -> Iterator[T]:
    if not enabled(quiet):
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
