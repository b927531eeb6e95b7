"""The built-in format plugin: implements apr_load_model / apr_save_model for every format.

Registered through the ``apr`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import AprError, CorruptFileError
from ..model import Model
from ..names import tokenizer_files
from ..plugins import hookimpl
from ..validate import json_type

FORMATS = ["apr", "safetensors", "gguf", "hf"]


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


@hookimpl
def apr_formats() -> list[str]:
    return FORMATS


@hookimpl
def apr_load_model(source: str, options: dict[str, Any]) -> Model | None:
    from .sources import EMBEDDED, download_hf, resolve_embedded

    if source.startswith("hf://"):
        from .hfdir import read_hf_dir

        return read_hf_dir(download_hf(source, options.get("revision")), source=source)
    if source in EMBEDDED and not os.path.exists(source):
        from .gguf import read_gguf

        model = read_gguf(resolve_embedded(source), dtype=options.get("dtype"),
                          preserve_quant=bool(options.get("preserve_quant")))
        model.source = source
        return model
    path = Path(source)
    if path.is_dir():
        from .hfdir import read_hf_dir

        return read_hf_dir(path)
    if not path.is_file():
        return None
    magic = _magic(path)
    if magic == b"APR\x00":
        from .apr import read_apr

        return read_apr(path, verify=options.get("verify", True))
    if magic == b"GGUF":
        from .gguf import read_gguf

        return read_gguf(path, dtype=options.get("dtype"), preserve_quant=bool(options.get("preserve_quant")))
    if path.suffix == ".safetensors":
        return _bare_safetensors(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        from .hfdir import load_pickle, read_side_files

        config, tokenizer, gen = read_side_files(path.parent)
        if config is None:
            raise AprError(f"{path}: no config.json beside it; import the model directory instead")
        return Model(tensors=load_pickle(path), config=config, tokenizer=tokenizer,
                     generation_config=gen, source=str(path), files=(str(path),))
    if path.suffix == ".apr":
        raise CorruptFileError(f"{path}: not an .apr file (bad magic {magic!r})")
    return None


def _bare_safetensors(path: Path) -> Model:
    """A single .safetensors file: apr metadata inside it, else config files beside it."""
    from .apr import _decode_file
    from .hfdir import read_side_files
    from .safetensors import META_PREFIX, read_safetensors

    tensors, meta, mm = read_safetensors(path)
    if META_PREFIX + "config" in meta:
        bad = f"{path}: corrupt safetensors file: apr metadata"
        config = _meta_json(meta, META_PREFIX + "config", dict, bad)
        files = _meta_json(meta, META_PREFIX + "tokenizer", dict, bad, {})
        gen = _meta_json(meta, META_PREFIX + "generation_config", dict, bad, None)
        prov = _meta_json(meta, META_PREFIX + "provenance", list, bad, [])
        try:
            tokenizer = tokenizer_files({k: _decode_file(v) for k, v in files.items()}, bad)
        except CorruptFileError as exc:
            raise CorruptFileError(str(exc) if str(exc).startswith(bad) else f"{bad}: {exc}") from None
    else:
        config, tokenizer, gen = read_side_files(path.parent)
        prov = []
        if config is None:
            raise AprError(f"{path}: no config.json beside it and no apr metadata inside; "
                           f"import the model directory instead")
    return Model(tensors=tensors, config=config, tokenizer=tokenizer, generation_config=gen,
                 provenance=prov, source=str(path), files=(str(path),), keepalive=mm)


def _meta_json(meta: dict[str, str], key: str, kind: type, bad: str, default: Any = ...) -> Any:
    """``meta[key]`` (an apr key of a safetensors header) parsed, of JSON type ``kind``; ``default``
    when the key is absent (no default: required)."""
    raw = meta.get(key)
    if raw is None and default is not ...:
        return default
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError, RecursionError):
        raise CorruptFileError(f"{bad}: {key} is not valid JSON") from None
    if value is None and default is None:
        return None
    if not isinstance(value, kind):
        raise CorruptFileError(f"{bad}: {key} is {json_type(value)}, not {'an object' if kind is dict else 'a list'}")
    return value


@hookimpl
def apr_save_model(model: Model, destination: str, fmt: str, options: dict[str, Any]) -> str | None:
    progress = options.get("progress")
    if fmt == "apr":
        from .apr import write_apr

        write_apr(model, destination, progress=progress)
        return destination
    if fmt == "safetensors":
        from .safetensors import model_metadata, write_safetensors

        write_safetensors(model.tensors, destination, metadata=model_metadata(model), progress=progress)
        return destination
    if fmt == "hf":
        from .hfdir import write_hf_dir

        return write_hf_dir(model, destination, progress=progress)
    if fmt == "gguf":
        from .gguf import write_gguf

        return write_gguf(model, destination, out_type=options.get("dtype") or "f16", progress=progress)
    return None
