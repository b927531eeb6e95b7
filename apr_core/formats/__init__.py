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
