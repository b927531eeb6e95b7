"""Atomic outputs: a file or directory appears under its final name complete, or not at all.

Writers get a temporary path next to the destination; on success it is
flushed, fsynced and renamed into place and the parent directory fsynced; on
any error (including KeyboardInterrupt) the temporary is removed and an
existing destination is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import AprError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent(dest: Path) -> Path:
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise AprError(f"cannot write {dest}: directory {parent} does not exist")
    return parent


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``dest``; rename it to ``dest`` when the block succeeds."""
    dest = Path(dest)
    parent = _parent(dest)
    if dest.is_dir():
        raise AprError(f"cannot write {dest}: it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    f = os.fdopen(fd, "wb")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, dest)
        _fsync_dir(parent)
    except BaseException as exc:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, AprError):
            raise AprError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; it replaces ``dest`` when the block succeeds.

    An existing ``dest`` is moved aside first and deleted only after the new
    directory is in place, so at every instant the final name holds a complete
    directory or nothing.
    """
    dest = Path(dest)
    parent = _parent(dest)
    if dest.exists() and not dest.is_dir():
        raise AprError(f"cannot write directory {dest}: a file has that name")
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    try:
        yield stage
        for p in stage.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(stage)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(dest, old)
        os.replace(stage, dest)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, AprError):
            raise AprError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        raise


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_file(dest) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_file`, for writers that insist on opening a path themselves."""
    dest = Path(dest)
    parent = _parent(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise AprError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        raise
