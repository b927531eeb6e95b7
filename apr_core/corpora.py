"""Text for evaluation and calibration: built-in offline corpora and user files.

Built-ins need no download: ``stdlib-code`` is a fixed list of Python
standard-library modules (held out from ``stdlib-calibration``, which
pruning and quantization calibrate on) and ``python-docs`` is the English
prose of the Python language reference shipped with every CPython
(``pydoc_data.topics``). ``rust-code`` and ``typescript-code`` are the
held-out files of the local Rust and TypeScript sources
(`apr_core.codesources`; ``apr data sources`` installs them). ``wikitext-2`` is read from a file the user names or
fetched from the Hub when online. User files are raw text, or jsonl/parquet
with a text field; documents are joined with blank lines, as the pruning
papers do for WikiText-2.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .errors import AprError, first_line

EVAL_CODE_FILES = ("textwrap.py", "fractions.py", "heapq.py", "graphlib.py", "shlex.py", "statistics.py",
                   "queue.py", "calendar.py", "csv.py", "sched.py")
CALIBRATION_CODE_FILES = ("argparse.py", "dataclasses.py", "functools.py", "ipaddress.py", "pprint.py",
                          "random.py", "selectors.py", "tokenize.py", "contextlib.py", "string.py",
                          "difflib.py", "enum.py", "ast.py", "inspect.py", "typing.py")
ALIASES = {"code": "stdlib-code", "prose": "python-docs", "wikitext2": "wikitext-2"}
BUILTIN = ("stdlib-code", "python-docs", "stdlib-calibration", "wikitext-2", "rust-code", "typescript-code")
CODE_CORPORA = {"rust-code": "rust", "typescript-code": "typescript"}


@dataclass(frozen=True)
class Corpus:
    name: str
    documents: list[str]

    @property
    def text(self) -> str:
        return "\n\n".join(self.documents)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _stdlib(files: tuple[str, ...], name: str) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for f in files:
        p = root / f
        if not p.is_file():
            raise AprError(f"{name}: the standard library file {p} is missing from this Python")
        docs.append(p.read_text(encoding="utf-8"))
    return Corpus(name, docs)


def _python_docs() -> Corpus:
    from pydoc_data.topics import topics

    return Corpus("python-docs", [topics[k] for k in sorted(topics)])


def read_jsonl(path: str | os.PathLike, field: str = "text") -> list[str]:
    """The ``field`` of every line of a jsonl file; a bad line is an error naming its number."""
    path = Path(path)
    docs = []
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise AprError(f"{path}:{lineno}: not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise AprError(f"{path}:{lineno}: no string field {field!r} (use --text-field)")
        docs.append(row[field])
    if not docs:
        raise AprError(f"{path}: no records; the file is empty")
    return docs


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AprError(f"cannot read {path}: {exc.strerror or exc}") from None
    return utf8_text(data, path)


def utf8_text(data: bytes, path: str | os.PathLike) -> str:
    """The bytes of a user's file ``path`` as UTF-8 text; if they are not, one error line naming
    the line and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AprError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None


def _read_parquet(path: Path, field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AprError(f"{path}: reading parquet needs pyarrow: pip install 'apr[eval]'") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError ... for files it cannot read
        raise AprError(f"{path}: not a readable parquet file: {first_line(exc)}") from None
    if field not in table.column_names:
        raise AprError(f"{path}: no column {field!r} (columns: {', '.join(table.column_names)})")
    return [str(x) for x in table.column(field).to_pylist()]


WIKITEXT2 = ("Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet")
_OFFLINE = ("wikitext-2 is not available offline{why}: pass the file instead "
            "(--dataset wiki.test.raw, or a jsonl/parquet with a text column)")


def _wikitext2() -> Corpus:
    """The WikiText-2 test split: from the Hugging Face cache, else downloaded when the Hub is
    reachable. Offline (HF_HUB_OFFLINE, or the Hub's host does not answer within seconds) it fails
    at once, before huggingface_hub's retries would print a dozen lines over half a minute."""
    import logging

    from huggingface_hub import constants, hf_hub_download

    try:
        path = hf_hub_download(*WIKITEXT2, repo_type="dataset", local_files_only=True)
    except Exception:  # not in the cache (huggingface_hub raises several types for that)
        path = None
    if path is None:
        if constants.HF_HUB_OFFLINE:
            raise AprError(_OFFLINE.format(why=" (HF_HUB_OFFLINE is set and it is not in the cache)"))
        if not _reachable(constants.ENDPOINT):
            raise AprError(_OFFLINE.format(why=f" ({constants.ENDPOINT} is unreachable and it is not in "
                                               f"the cache)"))
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # retry notices would break the one-line error
        try:
            path = hf_hub_download(*WIKITEXT2, repo_type="dataset")
        except Exception:  # blocked, gated or gone mid-way: all mean the same to the user
            raise AprError(_OFFLINE.format(why="")) from None
        finally:
            hub_log.setLevel(level)
    return Corpus("wikitext-2", _read_parquet(Path(path), "text"))


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def load_corpus(name_or_path: str, text_field: str = "text") -> Corpus:
    """A built-in corpus by name, or a user file: raw text, jsonl or parquet."""
    name = ALIASES.get(name_or_path, name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        if path.suffix == ".jsonl":
            return Corpus(path.name, read_jsonl(path, text_field))
        if path.suffix == ".parquet":
            return Corpus(path.name, _read_parquet(path, text_field))
        text = _read_text(path)
        if not text.strip():
            raise AprError(f"{path}: the file is empty")
        return Corpus(path.name, [text])
    if name == "stdlib-code":
        return _stdlib(EVAL_CODE_FILES, name)
    if name == "stdlib-calibration":
        return _stdlib(CALIBRATION_CODE_FILES, name)
    if name == "python-docs":
        return _python_docs()
    if name == "wikitext-2":
        return _wikitext2()
    if name in CODE_CORPORA:
        from . import codesources

        paths = codesources.get(CODE_CORPORA[name]).heldout_paths()
        return Corpus(name, [p.read_text(encoding="utf-8") for p in paths])
    if path.suffix or os.sep in name_or_path:
        raise AprError(f"no such file: {name_or_path}")
    raise AprError(f"unknown dataset {name_or_path!r}: give a file or one of {', '.join(BUILTIN)}")
