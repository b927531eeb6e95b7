"""Readers and writers for the model formats apr speaks: .apr, safetensors, GGUF, HF directories."""

from __future__ import annotations

import mmap
import os

from ..errors import AprError, CorruptFileError


def map_file(path: str, min_size: int, what: str) -> tuple[mmap.mmap, int]:
    """Map ``path`` privately (copy-on-write, so tensor views are writable without touching the file).

    Missing files, directories and files shorter than ``min_size`` are one-line errors.
    """
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise AprError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise AprError(f"{path} is a directory, not a {what} file") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < min_size:
            raise CorruptFileError(f"{path}: truncated {what} file ({size} bytes)")
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), size


MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux 5.4; Python 3.11 lacks the constant


def page_releaser(mm: mmap.mmap, offset: int, nbytes: int):
    """A callable that reclaims the pages of ``mm[offset:offset+nbytes]`` from this process.

    MADV_PAGEOUT drops clean file-backed pages (they are read from the file again when touched)
    and never discards data: a page a tensor view wrote to (the maps are copy-on-write) stays as
    it is. Where the kernel lacks it, releasing does nothing.
    """
    start = offset - offset % mmap.PAGESIZE
    length = offset + nbytes - start

    def release() -> None:
        if nbytes <= 0 or mm.closed:
            return
        try:
            mm.madvise(MADV_PAGEOUT, start, length)
        except (OSError, ValueError):
            pass

    return release
