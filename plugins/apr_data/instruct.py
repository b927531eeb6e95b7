"""Instruction-tuning records from local source trees: documented function -> its body.

Each documented function with a body of at least ``min_body_lines`` non-blank lines (and at most
``max_body_chars`` characters) becomes one Alpaca-layout record::

    {"instruction": "Complete the body of this Rust method of `impl Buffer`, following ...",
     "input": "<doc comment + signature>", "output": "<body>",
     "language": "rust", "source": "aho-corasick-0.7.19/src/buffer.rs:85"}

The held-out files of `apr_core.codesources` (and any ``extra_heldout``) are never read for
records. The result is deterministic: files are visited in sorted order, identical records are
kept once, then a ``seed``-ed shuffle and the ``max_examples`` cut; the jsonl is written
atomically, one record per line with a fixed key order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from apr_core import codesources
from apr_core.atomic import atomic_file
from apr_core.errors import AprError

from .lexing import Function, LexError

# Directories never read: caches, installed third-party code, test suites, build outputs.
SKIP_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "node_modules", "test", "tests",
                       "idle_test", "__tests__", "spec", "benches", "target", "dist", "build"})
DOC_WORDS = {"python": "docstring", "rust": "doc comment", "typescript": "JSDoc comment"}


def extractor(language: str) -> Callable[[str], list[Function]]:
    if language == "python":
        from .python_code import extract
    elif language == "rust":
        from .rust_code import extract
    else:
        from .typescript_code import extract
    return extract


def instruction(language: str, title: str, fn: Function) -> str:
    if fn.owner is None:
        what = f"{title} function"
    elif fn.owner.startswith("class "):
        what = f"{title} method of class `{fn.owner[6:]}`"
    else:
        what = f"{title} method of `{fn.owner}`"
    return f"Complete the body of this {what}, following its signature and {DOC_WORDS[language]}."


@dataclass
class Build:
    """What one run read and kept; ``records`` are in output order."""

    language: str
    roots: list[str]
    records: list[dict] = field(default_factory=list)
    files: int = 0
    heldout_files: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)
    functions: int = 0
    too_short: int = 0
    too_long: int = 0
    duplicates: int = 0

    def summary(self) -> dict:
        return {"language": self.language, "sources": self.roots, "examples": len(self.records),
                "files": self.files, "heldout_files": self.heldout_files,
                "unreadable_files": len(self.unreadable_files), "functions": self.functions,
                "too_short": self.too_short, "too_long": self.too_long, "duplicates": self.duplicates}


def source_files(root: Path, source: codesources.CodeSource) -> Iterator[Path]:
    """The language's files under ``root`` (or ``root`` itself), in sorted order."""
    if root.is_file():
        if source.is_source_file(root.name):
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if source.is_source_file(name):
                yield Path(dirpath) / name


def resolve_roots(source: codesources.CodeSource, given: tuple[str, ...] | list[str]) -> list[Path]:
    """The directories to read: those given (each must exist and hold files of the language), else
    the language's default location."""
    if not given:
        root = source.default_root()
        if not root.is_dir():
            raise AprError(f"no {source.title} sources at {root}; install them: {source.install_hint()}")
        return [root]
    roots = []
    for raw in given:
        root = Path(raw)
        if not root.exists():
            raise AprError(f"--source {raw}: no such file or directory")
        if next(source_files(root, source), None) is None:
            raise AprError(f"--source {raw}: holds no {source.title} files "
                           f"({', '.join('*' + s for s in source.suffixes)})")
        roots.append(root)
    return roots


def build(language: str, roots: list[Path], *, min_body_lines: int = 3, max_body_chars: int = 4000,
          max_examples: int | None = None, seed: int = 0, extra_heldout: tuple[str, ...] = (),
          progress: Callable = lambda items, **_: items) -> Build:
    """Read every file under ``roots`` except the held-out ones and make the records."""
    source = codesources.get(language)
    extract = extractor(language)
    result = Build(language, [str(r) for r in roots])
    seen: set[tuple[str, str, str]] = set()
    for root in roots:
        base = root.parent if root.is_file() else root
        for path in progress(list(source_files(root, source)), desc=f"{language} {root}"):
            rel = PurePosixPath(path.relative_to(base).as_posix())
            result.files += 1
            if source.is_heldout(os.path.abspath(path), extra_heldout):
                result.heldout_files.append(str(rel))
                continue
            try:
                functions = extract(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, LexError):
                result.unreadable_files.append(str(rel))
                continue
            for fn in functions:
                result.functions += 1
                if fn.body_lines() < min_body_lines:
                    result.too_short += 1
                    continue
                if len(fn.output) > max_body_chars:
                    result.too_long += 1
                    continue
                record = {"instruction": instruction(language, source.title, fn), "input": fn.input,
                          "output": fn.output, "language": language, "source": f"{rel}:{fn.line}"}
                key = (record["instruction"], fn.input, fn.output)
                if key in seen:
                    result.duplicates += 1
                    continue
                seen.add(key)
                result.records.append(record)
    random.Random(seed).shuffle(result.records)
    if max_examples is not None:
        result.records = result.records[:max_examples]
    return result


def write_jsonl(records: list[dict], output: str | os.PathLike) -> str:
    """Write the records atomically; returns the file's sha256."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with atomic_file(output) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()
