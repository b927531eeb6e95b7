"""An on-disk memo for results that are a pure function of their inputs and the installed libraries.

Some checks and conversions need a library far heavier than the work itself: knowing which
tensors a config's transformers class has costs importing its modeling code (seconds; more than
quantizing a small model), although the answer depends only on the config and the transformers
version. `memoized` stores such an answer as JSON under ``$APR_CACHE/memo/<kind>/`` (default
``~/.cache/apr``), keyed by a sha256 of the inputs, the versions of the named libraries and
`MEMO_VERSION`, so a later run with the same inputs skips the library. Only successes are
stored (errors are raised again by the computation each time); an unreadable, foreign or
unwritable cache is ignored and the value computed. ``APR_MEMO=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

MEMO_VERSION = 1  # bump when what a memoized function returns changes for the same inputs


def memo_dir() -> Path:
    return Path(os.environ.get("APR_CACHE", Path.home() / ".cache" / "apr")) / "memo"


def enabled() -> bool:
    return os.environ.get("APR_MEMO", "1").lower() not in ("0", "false", "no", "off")


def _version(lib: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(lib)
    except PackageNotFoundError:
        return None


def key_of(kind: str, inputs: Any, libraries: tuple[str, ...]) -> str:
    blob = json.dumps({"memo": MEMO_VERSION, "kind": kind, "inputs": inputs,
                       "libraries": {lib: _version(lib) for lib in libraries}},
                      sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


_MISSING = object()


def _path(kind: str, inputs: Any, libraries: tuple[str, ...]) -> Path:
    return memo_dir() / kind / f"{key_of(kind, inputs, libraries)}.json"


def recall(kind: str, inputs: Any, libraries: tuple[str, ...] = (),
           valid: Callable[[Any], bool] = lambda value: True, default: Any = None) -> Any:
    """The stored value for ``kind`` and ``inputs`` if there is a valid one, else ``default``."""
    if not enabled():
        return default
    try:
        stored = json.loads(_path(kind, inputs, libraries).read_bytes())
        if isinstance(stored, dict) and "value" in stored and valid(stored["value"]):
            return stored["value"]
    except (OSError, ValueError):
        pass
    return default


def memoized(kind: str, inputs: Any, compute: Callable[[], Any], libraries: tuple[str, ...] = (),
             valid: Callable[[Any], bool] = lambda value: True) -> Any:
    """``compute()``, or its stored JSON value for the same ``kind``, ``inputs`` and library versions.

    ``valid`` vets a stored value before it is trusted (a damaged entry is recomputed)."""
    if not enabled():
        return compute()
    stored = recall(kind, inputs, libraries, valid, _MISSING)
    if stored is not _MISSING:
        return stored
    path = _path(kind, inputs, libraries)
    value = compute()
    try:
        from .atomic import write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, json.dumps({"kind": kind, "value": value}).encode())
    except Exception:  # a read-only or full cache (or an unwritable value) never fails the command
        pass
    return value
