"""Atomic outputs: a file or directory appears under its final name complete, or not at all.

Writers get a temporary path next to the destination; on success it is
flushed, fsynced and renamed into place and the parent directory fsynced; on
any error (including KeyboardInterrupt, and SIGTERM, which the CLI turns into
one) the temporary is removed and an existing destination is left untouched.

What a kill leaves behind is cleaned by the next write to the same place: each
temporary is named ``.NAME.apr<pid>-<host>.<random>.tmp`` (``.old`` for a
replaced directory on its way out), so a later run removes those whose process
is gone on this host, and only those. Outputs get the permissions the umask
allows (mkstemp would leave 0600).

A directory apr writes carries `MANIFEST`, the list of files it wrote; an
existing directory is replaced only if it is empty or holds nothing but what its
manifest lists, so ``-o`` can never delete a directory of the user's.
`check_destination` adds the command-level rules (not an input, not the working
directory) before any work starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .errors import AprError

MANIFEST = "apr-manifest.json"
_OWNER = re.compile(r"apr(\d+)-([0-9a-f]{8})[.-]")
_umask_lock = threading.Lock()


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


# --------------------------------------------------------------------------- temporaries

def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')):08x}"


def owner_tag() -> str:
    """``apr<pid>-<host>``: who made a temporary, so a later run can tell whether it is stale."""
    return f"apr{os.getpid()}-{_host_tag()}"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but is someone else's (or not a pid we can ask about)
    return True


def remove_stale(directory: str | os.PathLike, prefix: str, suffixes: tuple[str, ...] = (".tmp", ".old")) -> int:
    """Remove entries ``prefix + owner_tag() + ...`` in ``directory`` whose process is gone.

    Only names carrying a tag of this host are considered; a tag of a live process (or of
    another host, whose processes cannot be asked) is left alone. Returns how many went.
    """
    removed = 0
    host = _host_tag()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not name.endswith(suffixes):
            continue
        m = _OWNER.match(name, len(prefix))
        if m is None or m.group(2) != host or process_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}."


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def _dir_mode() -> int:
    return 0o777 & ~_umask()


# --------------------------------------------------------------------------- files

def _temp_beside(dest: Path) -> tuple[Path, int, str]:
    """(parent, fd, path) of a new temporary for ``dest``, after removing stale ones."""
    parent = _parent(dest)
    if dest.is_dir():
        raise AprError(f"cannot write {dest}: it is a directory")
    remove_stale(parent, _temp_prefix(dest))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest) + owner_tag() + ".", suffix=".tmp", dir=parent)
    return parent, fd, tmp


def _commit(tmp: str, dest: Path, parent: Path) -> None:
    os.replace(tmp, dest)
    _fsync_dir(parent)


def _discard(tmp: str, dest: Path, exc: BaseException) -> None:
    """Remove the temporary; an OSError becomes a one-line `AprError` (the caller re-raises others)."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    if isinstance(exc, OSError) and not isinstance(exc, AprError):
        raise AprError(f"cannot write {dest}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``dest``; rename it to ``dest`` when the block succeeds."""
    dest = Path(dest)
    parent, fd, tmp = _temp_beside(dest)
    f = os.fdopen(fd, "wb")
    try:
        yield f
        f.flush()
        os.fchmod(f.fileno(), _file_mode())
        os.fsync(f.fileno())
        f.close()
        _commit(tmp, dest, parent)
    except BaseException as exc:
        f.close()
        _discard(tmp, dest, exc)
        raise


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_file(dest) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_file`, for writers that insist on opening a path themselves."""
    dest = Path(dest)
    parent, fd, tmp = _temp_beside(dest)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _commit(tmp, dest, parent)
    except BaseException as exc:
        _discard(tmp, dest, exc)
        raise


# --------------------------------------------------------------------------- directories

def _entries(directory: Path) -> list[str]:
    """Relative paths of every file, symlink and empty directory under ``directory``."""
    out = []

    def unreadable(exc: OSError) -> None:
        raise AprError(f"cannot read {exc.filename}: {exc.strerror or exc}")

    for root, dirs, files in os.walk(directory, onerror=unreadable):
        rel = Path(root).relative_to(directory)
        for d in list(dirs):
            p = Path(root) / d
            if p.is_symlink():
                out.append((rel / d).as_posix())
                dirs.remove(d)
                continue
            try:
                with os.scandir(p) as it:
                    empty = next(it, None) is None
            except OSError as exc:
                unreadable(exc)
            if empty:
                out.append((rel / d).as_posix() + "/")
        out.extend((rel / f).as_posix() for f in files)
    return sorted(out)


def replace_problem(directory: str | os.PathLike) -> str | None:
    """Why the existing directory may not be replaced by an output, or None if it may be:
    it is empty, or it holds only files its apr manifest lists."""
    directory = Path(directory)
    found = _entries(directory)
    if not found:
        return None
    try:
        listed = set(json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"it holds {found[0]}{f' and {len(found) - 1} more' if len(found) > 1 else ''}"
    foreign = [f for f in found if f != MANIFEST and f not in listed]
    if foreign:
        return f"it holds {foreign[0]}, which apr did not write"
    return None


def check_destination(dest: str | os.PathLike | None, inputs: Iterable[str | os.PathLike | None] = (),
                      force: bool | None = False) -> None:
    """Refuse an output path that would destroy something, before any work starts.

    - the working directory, or one above it: refused (an output directory is replaced whole);
    - one of ``inputs`` (the same file, the input directory, or a directory holding an input):
      refused unless ``force`` (None: the command has no --force, so always refused);
    - an existing directory apr did not write (see `replace_problem`): refused, ``force`` or not.
    """
    if dest is None:
        return
    path = Path(dest)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        where = "the current directory" if resolved == cwd else "a directory above the current one"
        raise AprError(f"output {os.fspath(dest) or '.'} is {where}; an output directory is replaced as a "
                       f"whole: name a new one, e.g. {os.path.join(os.fspath(dest) or '.', 'model')}")
    for source in inputs:
        if not source or not os.path.exists(source):
            continue
        same = path.exists() and os.path.samefile(path, source)
        holds = path.is_dir() and resolved in Path(source).resolve().parents
        if (same or holds) and not force:
            raise AprError(f"output {dest} {'is' if same else 'contains'} the input {source}; writing it "
                           f"would replace the input: choose another output"
                           f"{'' if force is None else ', or pass --force'}")
    if path.is_dir():
        problem = replace_problem(path)
        if problem:
            raise AprError(f"output {dest} is an existing directory apr did not write ({problem}); apr "
                           f"never deletes such a directory, even with --force: choose another path or "
                           f"remove it yourself")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; it replaces ``dest`` when the block succeeds.

    The staged directory gets `MANIFEST` (the files written) last. An existing
    ``dest`` must be replaceable (`check_destination`); it is moved aside first and
    deleted only after the new directory is in place, so at every instant the final
    name holds a complete directory or nothing.
    """
    dest = Path(dest)
    check_destination(dest)
    parent = _parent(dest)
    if dest.exists() and not dest.is_dir():
        raise AprError(f"cannot write directory {dest}: a file has that name")
    remove_stale(parent, _temp_prefix(dest))
    prefix = _temp_prefix(dest) + owner_tag() + "."
    stage = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    try:
        yield stage
        files = [f for f in _entries(stage) if f != MANIFEST]
        (stage / MANIFEST).write_text(json.dumps({"written_by": "apr", "files": files}, indent=1) + "\n")
        for p in stage.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(stage, _dir_mode())
        _fsync_dir(stage)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=parent))
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
