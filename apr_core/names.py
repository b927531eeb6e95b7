"""File names that come from inside model files, checked before anything joins them to a directory.

A model file can carry names that apr later uses as paths: the tokenizer files stored in an
.apr (``custom.tokenizer_files``) or a safetensors header (``apr.tokenizer``), the shard names
of a Hugging Face ``*.index.json``, the files transformers writes for a GGUF's tokenizer. A
hostile file could name ``../../.bashrc`` or ``/etc/cron.d/x``; so every such name must be a
plain base name from an allow-list of what the format may hold, and anything else is refused
as a corrupt file (one line, exit 2). Readers call `tokenizer_files` / `shard_name`; writers
that put a name into a directory go through `write_into`, which checks again and refuses to
follow a symlink or overwrite an existing file (a second line of defence).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import CorruptFileError

# What a tokenizer directory may hold: the files transformers 5 writes with save_pretrained
# (tokenizer.json, tokenizer_config.json, chat_template.jinja, and for older or slow
# tokenizers special_tokens_map.json, added_tokens.json, chat_template.json) plus the
# vocabulary files of the tokenizer classes code models use (BPE vocab.json + merges.txt,
# WordPiece vocab.txt, SentencePiece models, tiktoken ranks). Subdirectories such as
# additional_chat_templates/ are not accepted.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "tiktoken.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)

_SHARD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.(safetensors|bin)")


def _describe(name: Any) -> str:
    return repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80] + "...")


def _plain(name: Any) -> bool:
    """A non-empty str naming one entry of a directory: no separator, NUL, '.' or '..'."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name)


def tokenizer_name(name: Any, where: str) -> str:
    """``name`` if it is one of `TOKENIZER_FILES`, else a `CorruptFileError` naming it."""
    if not _plain(name) or name not in TOKENIZER_FILES:
        raise CorruptFileError(f"{where}: tokenizer file name {_describe(name)} is not allowed (only "
                               f"plain names such as tokenizer.json)")
    return name


def tokenizer_files(files: Mapping[Any, bytes], where: str) -> dict[str, bytes]:
    """Check every name of a tokenizer-files mapping (see `tokenizer_name`); names that differ
    only in case are refused too, since a case-insensitive file system would merge them."""
    out: dict[str, bytes] = {}
    folded: dict[str, str] = {}
    for name, data in files.items():
        tokenizer_name(name, where)
        if name.casefold() in folded:
            raise CorruptFileError(f"{where}: tokenizer files {folded[name.casefold()]!r} and {name!r} "
                                   f"differ only in case")
        folded[name.casefold()] = name
        out[name] = data
    return out


def shard_name(name: Any, where: str) -> str:
    """A weight shard named in an HF index: a plain ``*.safetensors`` or ``*.bin`` base name."""
    if not _plain(name) or not _SHARD.fullmatch(name):
        raise CorruptFileError(f"{where}: shard name {_describe(name)} is not a plain .safetensors or .bin "
                               f"file name in the model directory")
    return name


def shard_names(names: Iterable[Any], where: str) -> list[str]:
    """Distinct shard names, sorted, each checked; names that differ only in case are refused."""
    out = sorted({shard_name(n, where) for n in names})
    folded: dict[str, str] = {}
    for name in out:
        if name.casefold() in folded:
            raise CorruptFileError(f"{where}: shard names {folded[name.casefold()]!r} and {name!r} differ "
                                   f"only in case")
        folded[name.casefold()] = name
    return out


def write_into(directory: str | os.PathLike, name: str, data: bytes, where: str) -> Path:
    """Write ``data`` to ``directory/name`` for a tokenizer file ``name``: the name is checked, the
    file must not exist yet (no overwrite, no following a planted symlink)."""
    tokenizer_name(name, where)
    path = Path(directory) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path
