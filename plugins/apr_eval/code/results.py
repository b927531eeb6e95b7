"""Every sample as one jsonl line, appended as it is scored, so a rerun resumes where it stopped.

The first line is a header with the run's settings; a rerun with the same settings keeps the
finished samples and generates only the missing ones. A torn last line (the process was killed
mid-write) is dropped. Nothing is written until the first sample is scored, so a run that stops
at an error before that (no sandbox, no chat template ...) leaves no results file behind.
Per-task results go to ``<name>.tasks.jsonl``, written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from apr_core.atomic import atomic_file
from apr_core.errors import AprError


class SampleStore:
    def __init__(self, path: str | os.PathLike, header: dict[str, Any], resume: bool = True):
        self.path = Path(path)
        self.header = header
        self.done: dict[tuple[str, int], dict] = {}
        self._started = False  # the file holds this run's header (written with the first samples)
        if self.path.is_dir():
            raise AprError(f"--results {self.path} is a directory; name a .jsonl file")
        if resume and self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_bytes().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            raise AprError(f"{self.path} is not a results jsonl of apr; pass --results another path") from None
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                break  # torn last line
        if not records or not isinstance(records[0], dict) or records[0].get("header") != self.header:
            raise AprError(f"{self.path} holds samples of a different run (settings differ); pass "
                           f"--no-resume to start over or --results another path")
        for rec in records[1:]:
            if not (isinstance(rec, dict) and isinstance(rec.get("task_id"), str)
                    and type(rec.get("sample")) is int and isinstance(rec.get("passed"), bool)):
                raise AprError(f"{self.path} has a damaged sample record; pass --no-resume to start over")
            self.done[(rec["task_id"], rec["sample"])] = rec

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as f:
            f.write((json.dumps({"header": self.header}, sort_keys=True) + "\n").encode())
            for rec in self.done.values():
                f.write((json.dumps(rec, sort_keys=True) + "\n").encode())

    def has(self, task_id: str, sample: int) -> bool:
        return (task_id, sample) in self.done

    def append(self, records: Iterable[dict]) -> None:
        records = list(records)
        if not self._started:  # header, kept samples, no torn line: then append from here on
            self._rewrite()
            self._started = True
        with open(self.path, "ab") as f:
            for rec in records:
                f.write((json.dumps(rec, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        for rec in records:
            self.done[(rec["task_id"], rec["sample"])] = rec


def write_task_results(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_file(path) as f:
        for row in rows:
            f.write((json.dumps(row, sort_keys=True) + "\n").encode())
