"""The built-in format plugin: implements apr_load_model / apr_save_model for every format.

Registered through the ``apr`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import AprError
from ..model import Model
from ..plugins import hookimpl

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
        from ..errors import CorruptFileError

        raise CorruptFileError(f"{path}: not an .apr file (bad magic {magic!r})")
    return None


def _bare_safetensors(path: Path) -> Model:
    """A single .safetensors file: apr metadata inside it, else config files beside it."""
    from .apr import _decode_file
    from .hfdir import read_side_files
    from .safetensors import META_PREFIX, read_safetensors

    tensors, meta, mm = read_safetensors(path)
    if META_PREFIX + "config" in meta:
        try:
            config = json.loads(meta[META_PREFIX + "config"])
            tokenizer = {k: _decode_file(v) for k, v in json.loads(meta.get(META_PREFIX + "tokenizer", "{}")).items()}
            gen = json.loads(meta[META_PREFIX + "generation_config"]) if META_PREFIX + "generation_config" in meta else None
            prov = json.loads(meta.get(META_PREFIX + "provenance", "[]"))
        except json.JSONDecodeError:
            raise AprError(f"{path}: apr metadata in the safetensors header is not valid JSON") from None
    else:
        config, tokenizer, gen = read_side_files(path.parent)
        prov = []
        if config is None:
            raise AprError(f"{path}: no config.json beside it and no apr metadata inside; "
                           f"import the model directory instead")
    return Model(tensors=tensors, config=config, tokenizer=tokenizer, generation_config=gen,
                 provenance=prov, source=str(path), files=(str(path),), keepalive=mm)


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
