"""The .apr footer check (CRC32 of the whole file) and the file's sha256, now or ahead of time.

Every command that opens an .apr reads the whole file once to check its CRC and to get the sha256
that names its content (memo keys, provenance). For SmolLM2 that is 0.3 s a file, and a command
spends longer than that importing torch before it opens its inputs. `check_ahead` starts the reads
on a background thread when the command starts, so they overlap the import (hashlib and zlib
release the GIL on large buffers); `checked` hands the result to the reader, or reads the file
then if nobody asked ahead, the file changed since (its inode, size or mtime differ) or the early
check could not run. A damaged file fails the same way either way.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import CorruptFileError

_AHEAD: dict[tuple, Future] = {}
_LOCK = threading.Lock()


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns


def check_ahead(paths) -> None:
    """Check these .apr files' footers on a background thread, one file after another."""
    jobs = []
    with _LOCK:
        for path in dict.fromkeys(os.fspath(p) for p in paths):
            key = _identity(path)
            if key is None or key in _AHEAD or not os.path.isfile(path):
                continue
            _AHEAD[key] = Future()
            jobs.append((path, key))
    if jobs:
        threading.Thread(target=_run, args=(jobs,), name="apr-checksum", daemon=True).start()


def _run(jobs) -> None:
    for path, key in jobs:
        future = _AHEAD[key]
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                future.set_result(verify(path, mm, size))
            finally:
                mm.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which decides
            future.set_exception(exc)


def checked(path: str, mm: mmap.mmap, size: int) -> str:
    """The sha256 of the mapped file after its CRC check, from the early check if one was made."""
    key = _identity(path)
    with _LOCK:
        future = _AHEAD.pop(key, None) if key is not None and key[2] == size else None
    if future is not None:
        try:
            return future.result()
        except CorruptFileError:
            raise
        except Exception:  # noqa: BLE001 - the early check could not run (e.g. unreadable then); check now
            pass
    return verify(path, mm, size)


def verify(path: str, mm: mmap.mmap, size: int) -> str:
    """Check the footer CRC32 over the whole file; return the file's sha256 from the same read.

    The CRC of each chunk runs on a second thread while the hash reads it (zlib and hashlib
    release the GIL on large buffers), over zero-copy views of the map: on a multi-core machine
    the two passes cost about one. Each chunk is unmapped once both have read it."""
    sha = hashlib.sha256()
    end = size - 4
    step = 1 << 24
    view = memoryview(mm)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="apr-crc") as pool:
            crc = 0
            for start in range(0, end, step):
                chunk = view[start:min(start + step, end)]
                pending = pool.submit(zlib.crc32, chunk, crc)  # the CRC and the SHA of a chunk in parallel
                sha.update(chunk)
                crc = pending.result()
                chunk.release()
                # unmap what was read (nothing can have written to the map yet; the page cache keeps
                # it), or checking a file would leave all of it resident in this process
                mm.madvise(mmap.MADV_DONTNEED, start, min(step, end - start))
        (stored,) = struct.unpack("<I", view[end:size])
        sha.update(view[end:size])
    finally:
        view.release()
    if crc != stored:
        raise CorruptFileError(f"{path}: corrupt .apr file: checksum mismatch (the file is damaged or truncated)")
    return sha.hexdigest()


__all__ = ["check_ahead", "checked", "verify"]
