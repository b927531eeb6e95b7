"""Hugging Face model directories: config.json + tokenizer files + safetensors (or pickle) weights.

Reading accepts a single ``model.safetensors``, a sharded checkpoint with its
``*.index.json``, or PyTorch pickles through torch's ``weights_only`` loader
(never a free unpickle). Writing stages the whole directory and renames it
into place, so an interrupted export leaves no half directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir
from ..errors import AprError, CorruptFileError, first_line
from ..model import LazyTensor, Model
from ..names import TOKENIZER_FILES, shard_names, tokenizer_files, write_into
from .safetensors import read_safetensors, write_safetensors

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AprError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptFileError(f"{path}: not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: expected a JSON object")
    return data


def read_side_files(directory: Path) -> tuple[dict[str, Any] | None, dict[str, bytes], dict[str, Any] | None]:
    """config.json, tokenizer files and generation_config.json found in ``directory``."""
    config = _read_json(directory / "config.json") if (directory / "config.json").is_file() else None
    tokenizer = {name: _read_bytes(directory / name) for name in TOKENIZER_FILES
                 if (directory / name).is_file()}
    gen = directory / "generation_config.json"
    return config, tokenizer, (_read_json(gen) if gen.is_file() else None)


def load_pickle(path: str | os.PathLike) -> dict[str, LazyTensor]:
    """Tensors from a PyTorch pickle, through torch's weights_only loader only.

    A pickle that needs arbitrary globals (for example one whose ``__reduce__``
    runs a command) is rejected and nothing in it runs.
    """
    import pickle

    import torch

    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise CorruptFileError(f"{path}: refused to load pickle (only plain tensors are allowed "
                               f"with weights_only): {first_line(exc, 200)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(f"{path}: pickle does not hold a dict of tensors")
    return {str(k): LazyTensor.of(str(k), v) for k, v in state.items()}


def _weight_files(directory: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CorruptFileError(f"{index}: no weight_map")
            files = shard_names(weight_map.values(), str(index))
            missing = [f for f in files if not (directory / f).is_file()]
            if missing:
                raise AprError(f"{directory}: shard {missing[0]} listed in {index_name} is missing")
            return [directory / f for f in files]
    for name in WEIGHT_NAMES:
        if (directory / name).is_file():
            return [directory / name]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    raise AprError(f"{directory}: no model.safetensors, sharded index or pytorch_model.bin found")


def read_hf_dir(directory: str | os.PathLike, source: str | None = None) -> Model:
    """Open a local Hugging Face model directory lazily."""
    directory = Path(directory)
    config, tokenizer, gen = read_side_files(directory)
    if config is None:
        raise AprError(f"{directory}: no config.json; is this a Hugging Face model directory?")
    tensors: dict[str, LazyTensor] = {}
    maps = []
    files = _weight_files(directory)
    for f in files:
        if f.suffix == ".safetensors":
            part, _meta, mm = read_safetensors(f)
            maps.append(mm)
        else:
            part = load_pickle(f)
        dup = set(part) & set(tensors)
        if dup:
            raise CorruptFileError(f"{f}: tensor {sorted(dup)[0]!r} appears in two shards")
        tensors.update(part)
    return Model(tensors=tensors, config=config, tokenizer=tokenizer, generation_config=gen,
                 source=source or str(directory), files=tuple(str(f) for f in files), keepalive=maps)


def written_tensors(model: Model) -> dict[str, LazyTensor]:
    """The tensors as `write_hf_dir` stores them: block-quantized ones dequantized to F32."""
    from ..quant.convert import restore

    return {n: restore(t, "F32") if t.spec.dt.quantized else t for n, t in model.tensors.items()}


def write_hf_dir(model: Model, directory: str | os.PathLike, progress=None) -> str:
    """Write a directory transformers loads with ``from_pretrained``, atomically.

    transformers cannot run apr's block-quantized tensors, so they are written
    dequantized (float32); use .apr or GGUF to keep them quantized.
    """
    tensors = written_tensors(model)
    with atomic_dir(directory) as stage:
        cfg = dict(model.config)
        cfg.pop("quantization_config", None)
        (stage / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if model.generation_config:
            (stage / "generation_config.json").write_text(
                json.dumps(model.generation_config, indent=2, sort_keys=True) + "\n")
        for name, data in tokenizer_files(model.tokenizer, "model").items():
            write_into(stage, name, data, "model")
        if model.provenance:
            (stage / "apr_provenance.json").write_text(json.dumps(model.provenance, indent=2) + "\n")
        write_safetensors(tensors, stage / "model.safetensors", metadata={"format": "pt"},
                          progress=progress)
    return os.fspath(directory)
