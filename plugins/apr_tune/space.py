"""Search spaces: which technique parameters a study varies, over what, and how they narrow.

A technique declares its default space next to its parameters (`apr_core.params.Search` on each
`Param`); a YAML space file overrides it name by name. Everything is checked against the
technique's declared parameters before any trial runs, so a typo or an empty range is one line
and exit 2, not a study of nothing. After a scout, `narrow` turns the best trials into a smaller
space written in the same file format, which ``--from-scout`` reads back.

Space file format (one entry per parameter)::

    learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}
    rank: [8, 16, 32]          # a list: choices
    dropout: {low: 0.0, high: 0.1}
    alpha: null                # not searched: the technique's default (or --set)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from apr_core.errors import AprError
from apr_core.params import Param, Search

VECTOR_TYPES = ("floats", "ints")


def declared(params: tuple[Param, ...]) -> dict[str, Search]:
    """The default space: every parameter that declares a `Search`."""
    return {p.name: p.search for p in params if p.search is not None}


def _number(value: Any, where: str) -> float:
    try:
        out = float(value)  # PyYAML reads 1e-5 (no dot) as a string
    except (TypeError, ValueError):
        raise AprError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(out):
        raise AprError(f"{where}: {value!r} is not a finite number")
    return out


def parse_entry(name: str, entry: Any, param: Param, where: str) -> Search | None:
    """One space-file entry as a `Search` checked against ``param`` (None: not searched)."""
    at = f"{where}: {name}"
    if entry is None:
        return None
    if isinstance(entry, (list, tuple)):
        if not entry:
            raise AprError(f"{at}: empty list of choices")
        values = tuple(_choice(param, v, at) for v in entry)
        return Search(choices=tuple(dict.fromkeys(values)))
    if not isinstance(entry, dict):
        raise AprError(f"{at}: expected {{low, high[, log, step]}} or a list of choices, got {entry!r}")
    unknown = set(entry) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise AprError(f"{at}: unknown key {sorted(unknown)[0]!r} (use low, high, log, step or choices)")
    if "choices" in entry:
        return parse_entry(name, list(entry["choices"] or []), param, where)
    if param.type not in ("float", "int", *VECTOR_TYPES):
        raise AprError(f"{at}: a {param.type} parameter takes a list of choices, not a range")
    if "low" not in entry or "high" not in entry:
        raise AprError(f"{at}: a range needs both low and high")
    low, high = _number(entry["low"], f"{at}.low"), _number(entry["high"], f"{at}.high")
    log = bool(entry.get("log", False))
    step = _number(entry["step"], f"{at}.step") if entry.get("step") is not None else None
    if low > high:
        raise AprError(f"{at}: empty range, low {low:g} > high {high:g}")
    if log and low <= 0:
        raise AprError(f"{at}: a log-scale range needs low > 0, got {low:g}")
    if log and step:
        raise AprError(f"{at}: log and step cannot be combined")
    if step is not None and step <= 0:
        raise AprError(f"{at}: step must be positive, got {step:g}")
    for bound in (low, high):  # both ends must be values the technique accepts
        _check_value(param, bound, at)
    if param.type in ("int", "ints") and (not float(low).is_integer() or not float(high).is_integer()):
        raise AprError(f"{at}: an integer parameter needs whole-number bounds")
    return Search(low, high, log=log, step=step)


def _check_value(param: Param, value: Any, at: str) -> Any:
    try:
        scalar = Param(param.name, param.type[:-1], None, min=param.min, max=param.max,
                       min_exclusive=param.min_exclusive, max_exclusive=param.max_exclusive) \
            if param.type in VECTOR_TYPES else param
        return scalar.parse(value)
    except AprError as exc:
        raise AprError(f"{at}: {exc}") from None


def _choice(param: Param, value: Any, at: str) -> Any:
    return _check_value(param, value, at)


def load_file(path: str | Path, params: tuple[Param, ...], owner: str) -> dict[str, Search | None]:
    """The entries of a space file, each checked: unknown names, empty ranges, bad values fail."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AprError(f"--space: no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AprError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AprError(f"{path}: expected a mapping of parameter names to ranges or choices")
    known = {p.name: p for p in params}
    out: dict[str, Search | None] = {}
    for name, entry in data.items():
        if name not in known:
            raise AprError(f"{path}: unknown parameter {name!r} for {owner} (it has: {', '.join(known)})")
        out[name] = parse_entry(name, entry, known[name], str(path))
    return out


def resolve(params: tuple[Param, ...], overrides: dict[str, Search | None], fixed: dict[str, Any],
            owner: str) -> dict[str, Search]:
    """The space to search: declared defaults, overridden by the file; fixed (``--set``) names are
    never searched. An empty result is an error (nothing to tune)."""
    space = declared(params)
    for name, search in overrides.items():
        if search is None:
            space.pop(name, None)
        else:
            space[name] = search
    for name in fixed:
        space.pop(name, None)
    if not space:
        raise AprError(f"nothing to search for {owner}: no parameter has a search range (give --space FILE)")
    return space


def suggest(trial, space: dict[str, Search], params: tuple[Param, ...], counts: dict[str, int]) -> dict[str, Any]:
    """Ask the optuna trial for one value per dimension (vector parameters: one per input)."""
    known = {p.name: p for p in params}
    out: dict[str, Any] = {}
    for name, s in space.items():
        p = known[name]
        if p.type in VECTOR_TYPES:
            n = counts.get(name, 1)
            out[name] = tuple(_one(trial, f"{name}[{i}]", s, p.type[:-1]) for i in range(n))
        else:
            out[name] = _one(trial, name, s, p.type)
    return out


def _one(trial, name: str, s: Search, kind: str) -> Any:
    if s.choices:
        return trial.suggest_categorical(name, list(s.choices))
    if kind == "int":
        return trial.suggest_int(name, int(s.low), int(s.high), log=s.log, step=int(s.step or 1))
    return trial.suggest_float(name, float(s.low), float(s.high), log=s.log, step=s.step)


def grid(space: dict[str, Search], params: tuple[Param, ...], counts: dict[str, int],
         points: int = 3) -> dict[str, list]:
    """Optuna's GridSampler space: choices as they are, ranges as ``points`` values (geometric on
    a log scale; every integer when there are few)."""
    known = {p.name: p for p in params}
    out: dict[str, list] = {}
    for name, s in space.items():
        p = known[name]
        kind = p.type[:-1] if p.type in VECTOR_TYPES else p.type
        if s.choices:
            values = list(s.choices)
        elif kind == "int" and s.high - s.low + 1 <= points:
            values = list(range(int(s.low), int(s.high) + 1))
        elif s.log:
            values = [s.low * (s.high / s.low) ** (i / (points - 1)) for i in range(points)]
        else:
            values = [s.low + (s.high - s.low) * i / (points - 1) for i in range(points)]
        if kind == "int" and not s.choices:
            values = sorted({int(round(v)) for v in values})
        keys = [f"{name}[{i}]" for i in range(counts.get(name, 1))] if p.type in VECTOR_TYPES else [name]
        for key in keys:
            out[key] = values
    return out


def as_yaml(space: dict[str, Search]) -> dict[str, Any]:
    """The space in the space-file format."""
    out: dict[str, Any] = {}
    for name, s in space.items():
        if s.choices:
            out[name] = list(s.choices)
        else:
            entry: dict[str, Any] = {"low": s.low, "high": s.high}
            if s.log:
                entry["log"] = True
            if s.step:
                entry["step"] = s.step
            out[name] = entry
    return out


def describe(space: dict[str, Search]) -> list[dict[str, str]]:
    return [{"parameter": name, "space": s.describe()} for name, s in space.items()]


def narrow(space: dict[str, Search], best: list[dict[str, Any]], params: tuple[Param, ...]) -> dict[str, Search]:
    """A smaller space around the best trials' parameters (``best``: their params, best first).

    Ranges shrink to the span of the best values, widened a little (x/÷1.5 on a log scale, 10%
    of the old width otherwise) and kept inside the old range; choices keep those the best
    trials used. A dimension none of them set keeps its range.
    """
    known = {p.name: p for p in params}
    out: dict[str, Search] = {}
    for name, s in space.items():
        vector = known[name].type in VECTOR_TYPES
        values = [v for row in best for v in (_flat(row, name) if vector else [row.get(name)]) if v is not None]
        if not values:
            out[name] = s
        elif s.choices:
            used = set(values)
            out[name] = Search(choices=tuple(c for c in s.choices if c in used))
        else:
            lo, hi = min(values), max(values)
            if s.log:
                lo, hi = max(s.low, lo / 1.5), min(s.high, hi * 1.5)
            else:
                pad = 0.1 * (s.high - s.low)
                lo, hi = max(s.low, lo - pad), min(s.high, hi + pad)
            kind = known[name].type[:-1] if vector else known[name].type
            if kind == "int":
                lo, hi = math.floor(lo), math.ceil(hi)
            out[name] = Search(float(lo) if kind != "int" else lo, float(hi) if kind != "int" else hi,
                               log=s.log, step=s.step)
    return out


def _flat(row: dict[str, Any], name: str) -> list:
    value = row.get(name)
    return list(value) if isinstance(value, (list, tuple)) else []
