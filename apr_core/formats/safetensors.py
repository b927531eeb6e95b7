"""safetensors: a validating memory-mapped reader and a streaming atomic writer.

We parse the format ourselves (8-byte header length, JSON header, raw data)
so that every check RELIABILITY.md asks for happens before any data is
touched, tensors are zero-copy views, and writing streams one tensor at a
time. Files we write carry the model's config, tokenizer and provenance in
``__metadata__`` so a bare .safetensors export re-imports losslessly; block-quantized
tensors are stored as their raw U8 bytes with their dtype and shape under ``apr.quantized``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any

from ..atomic import atomic_file
from . import map_file, page_releaser
from ..dtypes import BY_NAME, SAFETENSORS_NAMES
from ..errors import CorruptFileError
from ..model import LazyTensor, TensorSpec

MAX_HEADER = 100 * 1024 * 1024
META_PREFIX = "apr."


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise CorruptFileError(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, LazyTensor], dict[str, str], mmap.mmap]:
    """Map a .safetensors file: returns (lazy tensors, __metadata__, the memory map)."""
    path = os.fspath(path)
    mm, size = map_file(path, 8, "safetensors")
    (hlen,) = struct.unpack("<Q", mm[0:8])
    if hlen > size - 8:
        raise CorruptFileError(f"{path}: corrupt safetensors file: header length {hlen} does not fit in "
                               f"the {size}-byte file (at most {size - 8} bytes follow the length)")
    if hlen > MAX_HEADER:
        raise CorruptFileError(f"{path}: corrupt safetensors file: header length {hlen} is over the "
                               f"{MAX_HEADER // (1024 * 1024)} MB limit")
    try:
        header = json.loads(bytes(mm[8:8 + hlen]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path}: corrupt safetensors file: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptFileError(f"{path}: corrupt safetensors file: header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: corrupt safetensors file: header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptFileError(f"{path}: corrupt safetensors file: __metadata__ must map strings to strings")
    base = 8 + hlen
    data_len = size - base
    tensors: dict[str, LazyTensor] = {}
    spans = []
    for name, info in header.items():
        bad = f"{path}: corrupt safetensors file: tensor {name!r}"
        if not isinstance(info, dict):
            raise CorruptFileError(f"{bad} has no description")
        st_dtype = info.get("dtype")
        if st_dtype not in SAFETENSORS_NAMES:
            raise CorruptFileError(f"{bad} has unsupported dtype {st_dtype!r}")
        shape = info.get("shape")
        offs = info.get("data_offsets")
        if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
                or len(shape) > 16):
            raise CorruptFileError(f"{bad} has an invalid shape")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs)
                or not 0 <= offs[0] <= offs[1] <= data_len):
            raise CorruptFileError(f"{bad} has data offsets outside the file")
        dt = BY_NAME[SAFETENSORS_NAMES[st_dtype]]
        try:
            needed = dt.nbytes(tuple(shape))
        except CorruptFileError as exc:
            raise CorruptFileError(f"{bad}: {exc}") from None
        if needed != offs[1] - offs[0]:
            raise CorruptFileError(f"{bad}: shape {shape} of {st_dtype} does not match "
                                   f"{offs[1] - offs[0]} bytes")
        spec = TensorSpec(name, dt.name, tuple(shape))
        spans.append((offs[0], offs[1], name))
        tensors[name] = LazyTensor(spec, _viewer(mm, base + offs[0], offs[1] - offs[0], spec),
                                   page_releaser(mm, base + offs[0], offs[1] - offs[0]))
    cursor = 0
    for start, end, name in sorted(spans):
        if start != cursor:
            what = "overlaps another tensor" if start < cursor else "leaves a hole before it"
            raise CorruptFileError(f"{path}: corrupt safetensors file: tensor {name!r} {what}")
        cursor = end
    if cursor != data_len:
        raise CorruptFileError(f"{path}: corrupt safetensors file: {data_len - cursor} bytes of "
                               f"trailing data after the last tensor")
    _restore_quantized(path, tensors, meta)
    return tensors, meta, mm


QUANTIZED_KEY = META_PREFIX + "quantized"


def _restore_quantized(path: str, tensors: dict[str, LazyTensor], meta: dict[str, str]) -> None:
    """Give block-quantized tensors (stored as U8 bytes) back their dtype and shape from
    ``__metadata__["apr.quantized"]``, checking the byte counts."""
    if QUANTIZED_KEY not in meta:
        return
    try:
        entries = json.loads(meta[QUANTIZED_KEY])
        for name, info in entries.items():
            lazy = tensors[name]
            dt = BY_NAME[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            if not dt.quantized or lazy.spec.dtype != "U8" or dt.nbytes(shape) != lazy.spec.numel:
                raise ValueError(name)
            tensors[name] = LazyTensor(TensorSpec(name, dt.name, shape), lambda lazy=lazy: lazy.load().reshape(-1),
                                       lazy.release)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, CorruptFileError):
        raise CorruptFileError(f"{path}: corrupt safetensors file: bad {QUANTIZED_KEY} metadata") from None


def _viewer(mm, offset: int, nbytes: int, spec: TensorSpec):
    def load():
        import torch

        tdt = spec.dt.torch_dtype()
        if nbytes == 0:
            return torch.empty(spec.shape, dtype=tdt)
        return torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset).view(tdt).reshape(spec.shape)

    return load


def write_safetensors(tensors: dict[str, LazyTensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None, progress=None) -> int:
    """Stream ``tensors`` into a safetensors file atomically; returns bytes written."""
    from .apr import tensor_bytes

    header: dict[str, Any] = {}
    quantized = {n: {"dtype": t.spec.dtype, "shape": list(t.spec.shape)}
                 for n, t in tensors.items() if t.spec.dt.quantized}
    if metadata or quantized:
        # block-quantized tensors travel as U8 bytes; apr restores their dtype from this key
        header["__metadata__"] = dict(metadata or {}, **(
            {QUANTIZED_KEY: json.dumps(quantized, sort_keys=True)} if quantized else {}))
    cursor = 0
    names = sorted(tensors)
    for name in names:
        spec = tensors[name].spec
        st_dtype = "U8" if spec.dt.quantized else SAFETENSORS_NAMES[spec.dtype]
        shape = [spec.nbytes] if spec.dt.quantized else list(spec.shape)
        header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [cursor, cursor + spec.nbytes]}
        cursor += spec.nbytes
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    written = 0
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(hbytes)) + hbytes)
        written += 8 + len(hbytes)
        items = names if progress is None else progress(names, desc="writing", total=len(names))
        for name in items:
            chunk = tensor_bytes(tensors[name].load(), tensors[name].spec)
            f.write(chunk)
            written += len(chunk)
            tensors[name].release()
    return written


def model_metadata(model) -> dict[str, str]:
    """The apr keys stored in ``__metadata__`` of a standalone safetensors export."""
    from ..names import tokenizer_files
    from .apr import _encode_file

    files = tokenizer_files(model.tokenizer, "model")
    meta = {"format": "pt", META_PREFIX + "config": json.dumps(model.config),
            META_PREFIX + "provenance": json.dumps(model.provenance),
            META_PREFIX + "tokenizer": json.dumps({k: _encode_file(v) for k, v in files.items()})}
    if model.generation_config is not None:
        meta[META_PREFIX + "generation_config"] = json.dumps(model.generation_config)
    return meta
