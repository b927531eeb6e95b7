"""Leftovers of an apr that was killed: names that carry their creator's pid, and their sweeping.

The sandbox names its work dir and its cgroups ``apr-sandbox-PID-RANDOM``. SIGKILL gives apr no
chance to remove them, so each new sandbox removes those whose PID is no longer running (and, for
work dirs, untouched for a minute, in case another PID namespace shares the directory). A pid that
was reused by another process keeps its leftovers until that process is gone: never a live one's.
"""

from __future__ import annotations

import os
import shutil
import time

PREFIX = "apr-sandbox-"
MIN_AGE_S = 60.0


def own_name() -> str:
    """The prefix for this process's leftovers-to-be."""
    return f"{PREFIX}{os.getpid()}-"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (the sandbox package imports nothing from apr_core: an
    unprivileged run imports it from a bare path)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(name: str) -> bool:
    """True for ``apr-sandbox-PID-*`` when PID is not running."""
    if not name.startswith(PREFIX):
        return False
    pid = name[len(PREFIX):].split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def sweep_workdirs(parent: str) -> None:
    """Remove stale sandbox work dirs (owned by us, untouched for `MIN_AGE_S`) under ``parent``."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            if (is_stale(entry.name) and entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.geteuid()
                    and now - entry.stat(follow_symlinks=False).st_mtime > MIN_AGE_S):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def sweep_cgroups(base: str) -> None:
    """rmdir stale, empty sandbox cgroups (children first) under ``base``; never kills anything."""
    try:
        names = [n for n in os.listdir(base) if is_stale(n)]
    except OSError:
        return
    for name in names:
        top = os.path.join(base, name)
        try:
            children = [os.path.join(top, n) for n in os.listdir(top) if os.path.isdir(os.path.join(top, n))]
        except OSError:
            continue
        for d in children + [top]:
            try:
                os.rmdir(d)
            except OSError:
                pass
