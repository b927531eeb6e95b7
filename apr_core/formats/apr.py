"""The .apr container (APR v2): memory-mapped reads, streaming atomic writes.

Layout (all little-endian): a 64-byte header, JSON metadata padded to 64
bytes, a tensor index sorted by name and padded to 64 bytes, tensor data with
every tensor on a 64-byte boundary, and a CRC32 footer over all preceding
bytes. See docs/format.md for the full table and our dtype-id choices.

Reads validate every offset, size and count before touching data, so a
hostile file can neither crash the reader nor make it allocate more than the
file could justify. Tensors are views into a private memory map.
"""

from __future__ import annotations

import base64
import binascii
import json
import mmap
import os
import struct
import zlib
from typing import Any

from .. import __version__
from ..atomic import atomic_file
from . import map_file, page_releaser
from .footer import checked
from ..dtypes import BY_APR_ID
from ..errors import AprError, CorruptFileError
from ..model import LazyTensor, Model, TensorSpec
from ..names import tokenizer_files

MAGIC = b"APR\x00"
HEADER = struct.Struct("<4sBBHIQIQQI20s")  # 64 bytes
assert HEADER.size == 64
ALIGN = 64
MAX_NAME = 256
MAX_NDIM = 8

FLAG_LZ4 = 0x1
FLAG_ZSTD = 0x2
FLAG_ENCRYPTED = 0x4
FLAG_SIGNED = 0x8
FLAG_SHARDED = 0x10
FLAG_QUANTIZED = 0x20
FLAG_HAS_VOCAB = 0x200
FLAG_ROW_MAJOR = 0x400
FLAG_COLUMN_MAJOR = 0x800

# Typed top-level metadata keys of the Rust tool, filled from the HF config.
_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "rms_norm_eps": "rms_norm_eps",
}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _pad(b: bytes) -> bytes:
    return b + b"\x00" * (_align(len(b)) - len(b))


# --------------------------------------------------------------------------- metadata

def build_metadata(model: Model) -> dict[str, Any]:
    """Metadata JSON: the Rust tool's typed keys at the top, everything of ours under ``custom``."""
    cfg = model.text_config()
    meta: dict[str, Any] = {
        "model_type": model.model_type,
        "architecture": model.architecture,
        "name": model.config.get("_name_or_path") or (os.path.basename(model.source or "") or None),
        "source": model.source,
        "param_count": model.param_count,
        "total_size": model.nbytes,
    }
    for key, hf_key in _CONFIG_KEYS.items():
        if cfg.get(hf_key) is not None:
            meta[key] = cfg[hf_key]
    if meta.get("num_heads") is not None and meta.get("num_kv_heads") is None:
        meta["num_kv_heads"] = meta["num_heads"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if cfg.get("rope_theta") is not None or rope.get("rope_theta") is not None:
        meta["rope_theta"] = cfg.get("rope_theta", rope.get("rope_theta"))
    if rope.get("rope_type"):
        meta["rope_type"] = rope["rope_type"]
    if model.chat_template:
        meta["chat_template"] = model.chat_template
    special = _special_tokens(model)
    if special:
        meta["special_tokens"] = special
    quant = sorted({t.spec.dtype for t in model.tensors.values() if t.spec.dt.quantized})
    if quant:
        meta["quantization"] = {"quant_type": ",".join(quant)}
    custom: dict[str, Any] = {
        "apr_python_version": __version__,
        "hf_config": model.config,
        "generation_config": model.generation_config,
        "provenance": model.provenance,
        "tokenizer_files": {name: _encode_file(data)
                            for name, data in sorted(tokenizer_files(model.tokenizer, "model").items())},
    }
    custom.update(_rust_vocab(model))
    meta["custom"] = custom
    return {k: v for k, v in meta.items() if v is not None}


def _encode_file(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _decode_file(entry: Any) -> bytes:
    if isinstance(entry, dict) and isinstance(entry.get("text"), str):
        return entry["text"].encode("utf-8")
    if isinstance(entry, dict) and isinstance(entry.get("base64"), str):
        try:
            return base64.b64decode(entry["base64"], validate=True)
        except binascii.Error:
            pass
    raise CorruptFileError("metadata: bad tokenizer file entry")


def _special_tokens(model: Model) -> dict[str, Any]:
    cfg = model.tokenizer_config()
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        val = cfg.get(key)
        if isinstance(val, dict):
            val = val.get("content")
        if isinstance(val, str):
            out[key] = val
    return out


def _rust_vocab(model: Model) -> dict[str, Any]:
    """The Rust tool's tokenizer keys (vocabulary in id order, merges, model type)."""
    raw = model.tokenizer.get("tokenizer.json")
    if not raw:
        return {}
    tok = json.loads(raw)
    m = tok.get("model") or {}
    vocab = m.get("vocab")
    out: dict[str, Any] = {"tokenizer.model_type": str(m.get("type", "")).lower()}
    if isinstance(vocab, dict):
        size = max(vocab.values(), default=-1) + 1
        ordered = [""] * size
        for token, idx in vocab.items():
            if 0 <= idx < size:
                ordered[idx] = token
        for added in tok.get("added_tokens") or []:
            idx = added.get("id", -1)
            if 0 <= idx < size:
                ordered[idx] = added.get("content", ordered[idx])
        out["tokenizer.vocabulary"] = ordered
    elif isinstance(vocab, list):  # unigram: [[piece, score], ...]
        out["tokenizer.vocabulary"] = [v[0] for v in vocab]
    merges = m.get("merges")
    if isinstance(merges, list):
        out["tokenizer.merges"] = [" ".join(x) if isinstance(x, list) else x for x in merges]
    return out


def _config_from_typed_keys(meta: dict[str, Any]) -> dict[str, Any]:
    """A minimal HF config for files written by the Rust tool (no ``custom.hf_config``)."""
    cfg: dict[str, Any] = {"model_type": meta.get("model_type") or meta.get("architecture")}
    for key, hf_key in _CONFIG_KEYS.items():
        if key in meta:
            cfg[hf_key] = meta[key]
    if "rope_theta" in meta:
        cfg["rope_theta"] = meta["rope_theta"]
    return cfg


# --------------------------------------------------------------------------- write

def write_apr(model: Model, path: str | os.PathLike, progress=None) -> int:
    """Stream ``model`` into an .apr file at ``path`` atomically; return the bytes written.

    Every tensor's dtype and shape are known from its spec, so the index is
    written before the data and each tensor is loaded, written and released in
    turn: peak memory is one tensor.
    """
    specs = [model.spec(n) for n in model.names()]
    for s in specs:
        if len(s.name.encode("utf-8")) > MAX_NAME:
            raise AprError(f"tensor name too long for .apr ({MAX_NAME} bytes max): {s.name[:60]}...")
        if len(s.shape) > MAX_NDIM:
            raise AprError(f"tensor {s.name} has {len(s.shape)} dims; .apr allows {MAX_NDIM}")
    meta = json.dumps(build_metadata(model), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    meta_bytes = meta.encode("utf-8")
    index = bytearray()
    offsets = []
    cursor = 0
    for s in specs:
        name = s.name.encode("utf-8")
        index += struct.pack("<H", len(name)) + name
        index += struct.pack("<BB", s.dt.apr_id, len(s.shape))
        index += struct.pack(f"<{len(s.shape)}Q", *s.shape)
        index += struct.pack("<QQ", cursor, s.nbytes)
        offsets.append(cursor)
        cursor = _align(cursor + s.nbytes)
    meta_padded, index_padded = _pad(meta_bytes), _pad(bytes(index))
    index_offset = 64 + len(meta_padded)
    data_offset = index_offset + len(index_padded)
    flags = FLAG_ROW_MAJOR
    if any(s.dt.quantized for s in specs):
        flags |= FLAG_QUANTIZED
    if "tokenizer.json" in model.tokenizer:
        flags |= FLAG_HAS_VOCAB
    header = bytearray(HEADER.pack(MAGIC, 2, 0, flags, len(specs), 64, len(meta_bytes),
                                   index_offset, data_offset, 0, b"\x00" * 20))
    crc = zlib.crc32(bytes(header[0:40]) + bytes(header[44:64]))
    struct.pack_into("<I", header, 40, crc)

    with atomic_file(path) as f:
        running = 0
        written = 0

        def emit(chunk) -> None:
            nonlocal running, written
            f.write(chunk)
            running = zlib.crc32(chunk, running)
            written += len(chunk)

        emit(bytes(header))
        emit(meta_padded)
        emit(index_padded)
        items = list(zip(specs, offsets))
        if progress is not None:
            items = progress(items, desc="writing", total=len(items))
        for s, off in items:
            if written < data_offset + off:
                emit(b"\x00" * (data_offset + off - written))
            emit(tensor_bytes(model.tensors[s.name].load(), s))
            model.tensors[s.name].release()
        emit(struct.pack("<I", running))
    return written


def tensor_bytes(t, spec: TensorSpec) -> memoryview:
    """The raw bytes of a loaded tensor after checking it matches its declared spec."""
    import torch

    dt = spec.dt
    if dt.quantized:
        if t.dtype != torch.uint8 or t.numel() != spec.nbytes:
            raise AprError(f"internal: tensor {spec.name} is not {spec.nbytes} raw {spec.dtype} bytes")
    else:
        if tuple(t.shape) != spec.shape or t.dtype != dt.torch_dtype():
            raise AprError(f"internal: tensor {spec.name} is {t.dtype}{list(t.shape)}, "
                           f"declared {spec.dtype}{list(spec.shape)}")
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


# --------------------------------------------------------------------------- read

def read_apr(path: str | os.PathLike, verify: bool = True) -> Model:
    """Open an .apr file: validate its structure, optionally its CRC, and map tensors lazily."""
    path = os.fspath(path)
    mm, size = map_file(path, 64 + 4, ".apr")
    try:
        return _parse(path, mm, size, verify)
    except CorruptFileError:
        mm.close()
        raise


def _corrupt(path: str, what: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: corrupt .apr file: {what}")


def _parse(path: str, mm: mmap.mmap, size: int, verify: bool) -> Model:
    (magic, major, minor, flags, count, meta_off, meta_size, index_off, data_off, hcrc,
     _zero) = HEADER.unpack_from(mm, 0)
    if magic != MAGIC:
        raise CorruptFileError(f"{path}: not an .apr file (bad magic {magic!r})")
    if major != 2:
        raise _corrupt(path, f"unsupported version {major}.{minor} (this reader handles 2.x)")
    if zlib.crc32(bytes(mm[0:40]) + bytes(mm[44:64])) != hcrc:
        raise _corrupt(path, "header checksum mismatch")
    if flags & FLAG_COLUMN_MAJOR:
        raise _corrupt(path, "column-major layout is not supported")
    for flag, what in ((FLAG_LZ4 | FLAG_ZSTD, "compressed"), (FLAG_ENCRYPTED, "encrypted"),
                       (FLAG_SHARDED, "sharded")):
        if flags & flag:
            raise AprError(f"{path}: {what} .apr files are not supported")
    end = size - 4  # footer
    if not (64 <= meta_off and meta_off + meta_size <= index_off <= data_off <= end):
        raise _corrupt(path, "header offsets out of order or past the end of the file")
    if count > (data_off - index_off) // 21:
        raise _corrupt(path, f"tensor count {count} does not fit the index")
    if verify:
        sha = checked(path, mm, size)
    else:
        sha = None
    try:
        meta = json.loads(bytes(mm[meta_off:meta_off + meta_size]).rstrip(b"\x00").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(path, f"metadata is not valid UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise _corrupt(path, "metadata is not a JSON object")

    entries = _parse_index(path, mm, index_off, data_off, count, end - data_off)
    tensors = {}
    for name, dt, shape, off, nbytes in entries:
        spec = TensorSpec(name, dt.name, shape)
        tensors[name] = LazyTensor(spec, _viewer(mm, data_off + off, nbytes, spec),
                                   page_releaser(mm, data_off + off, nbytes))

    custom = meta.get("custom")
    custom = {} if custom is None else custom
    if not isinstance(custom, dict) or not isinstance(custom.get("hf_config") or {}, dict):
        raise _corrupt(path, "metadata: custom or custom.hf_config is not an object")
    config = custom.get("hf_config")
    if config is None:  # written by the Rust tool: only its typed keys
        config = _config_from_typed_keys(meta)
    tok_files = custom.get("tokenizer_files") or {}
    if not isinstance(tok_files, dict):
        raise _corrupt(path, "metadata: tokenizer_files is not an object")
    try:
        tokenizer = tokenizer_files({k: _decode_file(v) for k, v in tok_files.items()}, "metadata")
    except CorruptFileError as exc:
        raise _corrupt(path, str(exc)) from None
    if "chat_template" in meta and "chat_template.jinja" not in tokenizer:
        tokenizer["chat_template.jinja"] = str(meta["chat_template"]).encode("utf-8")
    provenance = custom.get("provenance") or []
    gen = custom.get("generation_config")
    if not isinstance(provenance, list) or not (gen is None or isinstance(gen, dict)):
        raise _corrupt(path, "metadata: provenance or generation_config has the wrong type")
    return Model(
        tensors=tensors,
        config=config,
        tokenizer=tokenizer,
        generation_config=gen,
        provenance=provenance,
        source=path,
        files=(path,),
        sha256=sha,
        keepalive=mm,
    )


def _parse_index(path, mm, index_off, data_off, count, data_len):
    pos = index_off
    entries = []
    seen = set()

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > data_off:
            raise _corrupt(path, "tensor index runs past its end")
        b = bytes(mm[pos:pos + n])
        pos += n
        return b

    for _ in range(count):
        (name_len,) = struct.unpack("<H", take(2))
        if name_len > MAX_NAME:
            raise _corrupt(path, f"tensor name of {name_len} bytes (max {MAX_NAME})")
        try:
            name = take(name_len).decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(path, "tensor name is not UTF-8") from None
        if name in seen:
            raise _corrupt(path, f"duplicate tensor name {name!r}")
        seen.add(name)
        dtype_id, ndim = struct.unpack("<BB", take(2))
        if dtype_id not in BY_APR_ID:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype id {dtype_id}")
        if ndim > MAX_NDIM:
            raise _corrupt(path, f"tensor {name!r} has {ndim} dims (max {MAX_NDIM})")
        shape = struct.unpack(f"<{ndim}Q", take(8 * ndim))
        off, nbytes = struct.unpack("<QQ", take(16))
        dt = BY_APR_ID[dtype_id]
        try:
            expected = dt.nbytes(shape)
        except CorruptFileError as exc:
            raise _corrupt(path, f"tensor {name!r}: {exc}") from None
        if expected != nbytes:
            raise _corrupt(path, f"tensor {name!r}: shape {list(shape)} of {dt.name} needs "
                                 f"{expected} bytes, index says {nbytes}")
        if off + nbytes > data_len:
            raise _corrupt(path, f"tensor {name!r} lies past the end of the file")
        entries.append((name, dt, tuple(int(d) for d in shape), off, nbytes))
    last_end = 0
    for name, _dt, _shape, off, nbytes in sorted(entries, key=lambda e: e[3]):
        if off < last_end and nbytes:
            raise _corrupt(path, f"tensor {name!r} overlaps the previous tensor")
        last_end = max(last_end, off + nbytes)
    return entries


def _viewer(mm: mmap.mmap, offset: int, nbytes: int, spec: TensorSpec):
    def load():
        import torch

        dt = spec.dt
        if nbytes == 0:
            shape = (0,) if dt.quantized else spec.shape
            return torch.empty(shape, dtype=dt.torch_dtype())
        raw = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset)
        if dt.quantized:
            return raw
        return raw.view(dt.torch_dtype()).reshape(spec.shape)

    return load


__all__ = ["read_apr", "write_apr", "tensor_bytes"]
