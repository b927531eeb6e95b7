"""Technique parameters, declared once and turned into CLI options, validation and docs.

A technique lists its `Param`s; the CLI builds its ``--options`` from them,
checks values against the declared type and range, and the docs pages are
generated from the same declarations, so the three never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import AprError

TYPES = ("float", "int", "str", "bool", "choice", "floats", "ints", "path")
_METAVARS = {"float": "FLOAT", "int": "INT", "str": "TEXT", "floats": "A,B,...", "ints": "A,B,...", "path": "PATH"}


@dataclass(frozen=True)
class Search:
    """Where a hyperparameter search (``apr tune``) looks for a parameter's value.

    Either a numeric range ``[low, high]`` (``log`` samples it on a log scale, ``step`` makes it
    discrete) or a tuple of ``choices``. Declared next to the parameter it searches, so a
    technique's tunable space lives with its defaults and ranges; ``apr tune --space FILE``
    overrides it.
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def __post_init__(self):
        if self.choices:
            if self.low is not None or self.high is not None:
                raise ValueError("a Search has either choices or a low/high range, not both")
            return
        if self.low is None or self.high is None:
            raise ValueError("a Search needs low and high, or choices")
        if self.low > self.high:
            raise ValueError(f"empty search range [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale search range must be positive, got low={self.low}")

    def describe(self) -> str:
        if self.choices:
            return "{" + ", ".join(_fmt(c) for c in self.choices) + "}"
        scale = ", log" if self.log else ""
        step = f", step {_fmt(self.step)}" if self.step else ""
        return f"[{_fmt(self.low)}, {_fmt(self.high)}{scale}{step}]"


@dataclass(frozen=True)
class Param:
    """One declared parameter of a technique.

    ``min``/``max`` bound numeric values (each inclusive unless the matching
    ``*_exclusive`` flag is set); for ``floats`` and ``ints`` they bound every element.
    ``recorded`` is False for options that cannot change the result (``--resume``,
    ``--save-steps``): they are left out of the output's provenance, so a resumed run
    writes the same bytes as an uninterrupted one. ``search`` is the parameter's default
    search space for ``apr tune`` (None: not tuned unless a space file names it).
    ``repeatable`` lets the CLI option be given several times (``--teacher a.apr --teacher
    b.apr``); the values are joined with commas.
    """

    name: str
    type: str
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: tuple[str, ...] = ()
    required: bool = False
    flag: str | None = None
    recorded: bool = True
    search: Search | None = None
    repeatable: bool = False

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"param {self.name}: unknown type {self.type!r}; use one of {TYPES}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"param {self.name}: a choice needs choices")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def metavar(self) -> str:
        if self.type == "choice":
            return "[" + "|".join(self.choices) + "]"
        return _METAVARS.get(self.type, "VALUE")

    def range_text(self) -> str:
        if self.min is None and self.max is None:
            return ""
        lo = "-inf" if self.min is None else _fmt(self.min)
        hi = "inf" if self.max is None else _fmt(self.max)
        left = "(" if self.min_exclusive or self.min is None else "["
        right = ")" if self.max_exclusive or self.max is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def describe(self) -> str:
        """Help text with default and range, used by --help and docs."""
        parts = [self.help.rstrip(".")] if self.help else []
        if self.range_text():
            parts.append(f"range {self.range_text()}")
        if self.default is not None and self.type != "bool":
            parts.append(f"default {self.default_text()}")
        if self.required:
            parts.append("required")
        return "; ".join(parts) + ("." if parts else "")

    def default_text(self) -> str:
        if isinstance(self.default, (list, tuple)):
            return ",".join(_fmt(v) for v in self.default)
        return _fmt(self.default)

    def parse(self, raw: Any) -> Any:
        """Convert a raw CLI string (or a Python value) into this param's type and validate it."""
        if raw is None:
            return None
        try:
            value = self._convert(raw)
        except _NotFinite:
            raise AprError(f"{self.cli_flag} must be a finite number, got {raw}") from None
        except (TypeError, ValueError):
            raise AprError(f"{self.cli_flag}: {raw!r} is not {_TYPE_TEXT.get(self.type, 'a valid ' + self.type)}"
                           ) from None
        self._check(value)
        return value

    def _convert(self, raw: Any) -> Any:
        t = self.type
        if t == "float":
            v = float(raw)
            if not math.isfinite(v):
                raise _NotFinite
            return v
        if t == "int":
            return _integer(raw)
        if t == "bool":
            if isinstance(raw, str):
                low = raw.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(raw)
        if t in ("floats", "ints"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            items = [x for x in items if str(x).strip() != ""]
            vals = [float(x) for x in items] if t == "floats" else [_integer(x) for x in items]
            if not vals or not all(math.isfinite(v) for v in vals):
                raise ValueError
            return tuple(vals)
        return str(raw)

    def _check(self, value: Any) -> None:
        if self.type == "choice" and value not in self.choices:
            raise AprError(f"{self.cli_flag}: {value!r} is not one of {', '.join(self.choices)}")
        nums = value if self.type in ("floats", "ints") else (value,) if self.type in ("float", "int") else ()
        for v in nums:
            low_bad = self.min is not None and (v <= self.min if self.min_exclusive else v < self.min)
            high_bad = self.max is not None and (v >= self.max if self.max_exclusive else v > self.max)
            if low_bad or high_bad:
                raise AprError(f"{self.cli_flag} must be in {self.range_text()}, got {_fmt(v)}")


_TYPE_TEXT = {"int": "a whole number", "floats": "a valid floats (comma-separated numbers)",
              "ints": "a list of whole numbers (comma-separated)"}


def _integer(raw: Any) -> int:
    """A whole number from a CLI string or a Python number; ``1.5`` is refused, not truncated."""
    if isinstance(raw, bool):
        raise ValueError
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError
        return int(raw)
    if isinstance(raw, int):
        return raw
    return int(str(raw).strip())


class _NotFinite(ValueError):
    """A float option given as nan or inf."""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v) if not v.is_integer() else str(int(v)) if abs(v) < 1e15 else repr(v)
    return str(v)


def resolve(params: tuple[Param, ...], raw: dict[str, Any], owner: str) -> dict[str, Any]:
    """Turn raw option values into validated values for a technique.

    ``raw`` holds only the values the user gave (None means not given). A value
    for a name that ``params`` does not declare is refused, naming ``owner``, so
    a typo like ``--drop-rate`` on slerp never silently does nothing.
    """
    known = {p.name: p for p in params}
    for name, value in raw.items():
        if value is not None and name not in known:
            flag = "--" + name.replace("_", "-")
            raise AprError(f"{flag} does not apply to {owner}; see its --help")
    out: dict[str, Any] = {}
    for p in params:
        v = raw.get(p.name)
        if v is None:
            if p.required:
                raise AprError(f"{owner} needs {p.cli_flag} ({p.help.rstrip('.') or p.type})")
            v = p.default
            out[p.name] = tuple(v) if isinstance(v, list) else v
        else:
            out[p.name] = p.parse(v)
    return out
