"""Atomic checkpoint directories for long-running work (training, tuning).

A run keeps its checkpoints under ``<workdir>/checkpoints/step-NNNNNNNN/``. Each is staged in a
temporary directory and renamed into place by `apr_core.atomic.atomic_dir`, with its
``checkpoint.json`` (step and whatever the writer records) written last inside the stage, so a
directory under the final name is always complete: a kill leaves the previous checkpoint and
a hidden temporary, which `latest` ignores. What goes into a checkpoint (adapter or weights,
optimizer, scheduler, RNG states, data position) is the trainer's business; this module only
makes it atomic and findable.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from ..atomic import atomic_dir

META = "checkpoint.json"
_NAME = re.compile(r"step-(\d{8,})")


def directory(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


@contextlib.contextmanager
def write(workdir: str | Path, step: int, meta: dict[str, Any] | None = None) -> Iterator[Path]:
    """Stage checkpoint ``step``: yield an empty directory to fill; on success ``checkpoint.json``
    is added and the directory appears as ``step-NNNNNNNN`` (replacing one of the same step)."""
    root = directory(workdir)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(root / f"step-{step:08d}") as stage:
        yield stage
        (stage / META).write_text(json.dumps({"step": step, **(meta or {})}, indent=2, sort_keys=True) + "\n")


def complete(workdir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = directory(workdir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir() and (p / META).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(workdir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint and its metadata, or None."""
    found = complete(workdir)
    if not found:
        return None
    path = found[-1][1]
    return path, json.loads((path / META).read_text())


def keep_last(workdir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _step, path in complete(workdir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
