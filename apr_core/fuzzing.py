"""Hostile model files on purpose: rebuild .apr and safetensors files from edited parts, and a
seeded mutator over every reader apr has, for the fuzz test and ``scripts/fuzz_readers.py``.

A random byte flip in an .apr file is caught by its CRCs long before anything interesting is
parsed, so the mutators here mostly *edit structure and rebuild the file consistently*: change
the metadata JSON (config values, tokenizer file names, wrong JSON types), the tensor index
(names, dims, offsets, dtypes), a safetensors header, a GGUF's bytes, an HF directory's
config or index, then fix every offset and checksum so the reader has to judge the content.

`outcome` runs a reader the way the CLI does (an `AprError` is a one-line exit 2); anything
else propagates, and the fuzz test fails with its traceback.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import AprError

_HEADER = struct.Struct("<4sBBHIQIQQI20s")


def _pad64(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 64)


@dataclass
class AprParts:
    """An .apr file taken apart: header fields, metadata JSON bytes, index bytes, data bytes."""

    flags: int
    count: int
    meta: bytes
    index: bytes
    data: bytes
    major: int = 2
    minor: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> "AprParts":
        (_m, major, minor, flags, count, meta_off, meta_size, index_off, data_off, _crc,
         _z) = _HEADER.unpack_from(raw, 0)
        return cls(flags, count, raw[meta_off:meta_off + meta_size], raw[index_off:data_off],
                   raw[data_off:len(raw) - 4], major, minor)

    def build(self) -> bytes:
        """The file again, with every offset, the header CRC and the footer CRC made consistent."""
        meta, index = _pad64(self.meta), _pad64(self.index)
        index_off = 64 + len(meta)
        data_off = index_off + len(index)
        header = bytearray(_HEADER.pack(b"APR\x00", self.major, self.minor, self.flags, self.count, 64,
                                        len(self.meta), index_off, data_off, 0, b"\x00" * 20))
        struct.pack_into("<I", header, 40, zlib.crc32(bytes(header[0:40]) + bytes(header[44:64])))
        body = bytes(header) + meta + index + self.data
        return body + struct.pack("<I", zlib.crc32(body))

    def metadata(self) -> dict[str, Any]:
        return json.loads(self.meta.rstrip(b"\x00"))

    def entries(self) -> list[list[Any]]:
        """The tensor index as ``[name, dtype_id, dims, offset, nbytes]`` lists."""
        out, pos = [], 0
        for _ in range(self.count):
            (n,) = struct.unpack_from("<H", self.index, pos)
            name = self.index[pos + 2:pos + 2 + n].decode("utf-8")
            pos += 2 + n
            dtype, ndim = struct.unpack_from("<BB", self.index, pos)
            pos += 2
            dims = list(struct.unpack_from(f"<{ndim}Q", self.index, pos))
            pos += 8 * ndim
            off, size = struct.unpack_from("<QQ", self.index, pos)
            pos += 16
            out.append([name, dtype, dims, off, size])
        return out

    def set_entries(self, entries: list[list[Any]]) -> None:
        index = bytearray()
        for name, dtype, dims, off, size in entries:
            raw = name.encode("utf-8") if isinstance(name, str) else name
            index += struct.pack("<H", len(raw)) + raw + struct.pack("<BB", dtype, len(dims))
            index += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<QQ", off, size)
        self.index, self.count = bytes(index), len(entries)


def apr_with_metadata(raw: bytes, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    """``raw`` with its metadata JSON passed through ``edit`` (which changes it in place)."""
    parts = AprParts.parse(raw)
    meta = parts.metadata()
    edit(meta)
    parts.meta = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    return parts.build()


def safetensors_parts(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", raw, 0)
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_build(header: dict[str, Any], body: bytes) -> bytes:
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


# --------------------------------------------------------------------------- mutations

HOSTILE_NAMES = ("../escape.txt", "/tmp/apr-fuzz-escape", "a/b", "..", ".", "", "tok\x00enizer.json",
                 "Tokenizer.json", "tokenizer.json/", "C:\\evil", "~/.bashrc", "tokenizer.json\n")
HOSTILE_VALUES = (0, -1, -(2 ** 63), 2 ** 64, 2 ** 31, 1.5, float("inf"), "64", "", None, True, [], {},
                  [1, 2], {"a": 1}, "\u00ff", 7, 3)
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps",
                 "rope_theta", "tie_word_embeddings", "model_type", "architectures", "text_config")


def _flip(rng: random.Random, raw: bytes, n: int) -> bytes:
    b = bytearray(raw)
    for _ in range(n):
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    return bytes(b)


def mutate_apr(rng: random.Random, raw: bytes) -> bytes:
    """One structural or byte-level mutation of an .apr file (consistent CRCs unless the mutation
    is the damage itself)."""
    parts = AprParts.parse(raw)
    kind = rng.choice(("config", "config", "tokname", "tokjson", "metatype", "index", "index", "count",
                       "bytes", "truncate", "header"))
    if kind in ("config", "tokname", "tokjson", "metatype"):
        meta = parts.metadata()
        custom = meta.setdefault("custom", {})
        if kind == "config":
            cfg = custom.get("hf_config") or {}
            for _ in range(rng.randint(1, 3)):
                cfg[rng.choice(CONFIG_FIELDS)] = rng.choice(HOSTILE_VALUES)
        elif kind == "tokname":
            files = custom.get("tokenizer_files") or {}
            name = rng.choice(HOSTILE_NAMES)
            files[name] = {"text": "pwned"}
        elif kind == "tokjson":
            files = custom.get("tokenizer_files") or {}
            target = rng.choice(("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
            files[target] = rng.choice(({"text": "{not json"}, {"text": "[1, 2]"}, {"base64": "//79"},
                                        {"text": json.dumps({"model": "x"})},
                                        {"text": json.dumps({"model": {"vocab": {"a": 2 ** 40}}})},
                                        {"text": json.dumps({"added_tokens": [{"id": "x"}]})}, 5))
        else:
            key = rng.choice(("hf_config", "tokenizer_files", "provenance", "generation_config"))
            custom[key] = rng.choice(([1], "text", 3, {"a": 1}, [{"operation": 1}], None))
        parts.meta = json.dumps(meta).encode("utf-8")
        return parts.build()
    if kind == "index":
        entries = parts.entries()
        e = rng.choice(entries)
        what = rng.randrange(6)
        if what == 0:
            e[0] = rng.choice(("", "x" * 300, e[0] + ".extra", entries[0][0], "model.foo.weight"))
            if len(e[0].encode()) > 0xFFFF:
                e[0] = "y"
        elif what == 1:
            e[2] = rng.choice(([0, 2 ** 63], [2 ** 64 - 1], [0] * 9, [], [e[2][0] * 2] if e[2] else [3],
                               list(reversed(e[2]))))
        elif what == 2:
            e[3] = rng.choice((0, 1, 2 ** 64 - 1, e[3] + 64, 2 ** 40))
        elif what == 3:
            e[4] = rng.choice((0, 2 ** 64 - 1, e[4] + 1))
        elif what == 4:
            e[1] = rng.choice((2, 12, 14, 99, 255, 131, 135))
        else:
            entries.remove(e)
        parts.set_entries(entries)
        return parts.build()
    if kind == "count":
        parts.count = rng.choice((0, parts.count + 1, max(parts.count - 1, 0), 2 ** 32 - 1))
        return parts.build()
    if kind == "header":
        parts.flags = rng.choice((parts.flags | 0x800, parts.flags | 0x1, parts.flags | 0x10, 0))
        parts.major = rng.choice((2, 1, 3))
        return parts.build()
    if kind == "truncate":
        return raw[:rng.randrange(len(raw))]
    return _flip(rng, raw, rng.randint(1, 8))


def mutate_safetensors(rng: random.Random, raw: bytes) -> bytes:
    header, body = safetensors_parts(raw)
    kind = rng.choice(("tensor", "tensor", "meta", "meta", "bytes", "truncate", "length"))
    if kind == "tensor":
        name = rng.choice([n for n in header if n != "__metadata__"])
        info = header[name]
        what = rng.randrange(5)
        if what == 0:
            info["shape"] = rng.choice(([0, 2 ** 63], [-1], ["4"], [2 ** 70], [1.5], list(reversed(info["shape"]))))
        elif what == 1:
            info["data_offsets"] = rng.choice(([0, 0], [-8, 0], [0, 2 ** 64], [1, 2], "x"))
        elif what == 2:
            info["dtype"] = rng.choice(("F8", "Q4_K", "", 5))
        elif what == 3:
            header[rng.choice(("", "../x", name + "\x00", "model.extra.weight"))] = dict(info)
        else:
            del header[name]
    elif kind == "meta":
        meta = header.setdefault("__metadata__", {})
        key = rng.choice(("apr.config", "apr.tokenizer", "apr.provenance", "apr.generation_config",
                          "apr.quantized"))
        if key == "apr.config" and "apr.config" in meta and rng.random() < 0.6:
            cfg = json.loads(meta["apr.config"])
            cfg[rng.choice(CONFIG_FIELDS)] = rng.choice(HOSTILE_VALUES)
            meta[key] = json.dumps(cfg)
        elif key == "apr.tokenizer" and rng.random() < 0.6:
            meta[key] = json.dumps({rng.choice(HOSTILE_NAMES): {"text": "pwned"}})
        else:
            meta[key] = rng.choice(("[1, 2]", "{", "3", "null", '{"a": {"dtype": "Q4_K", "shape": [1]}}', "\"s\""))
    elif kind == "bytes":
        return _flip(rng, raw, rng.randint(1, 8))
    elif kind == "truncate":
        return raw[:rng.randrange(len(raw))]
    else:
        return struct.pack("<Q", rng.choice((len(raw) - 8, len(raw), 2 ** 63, 7))) + raw[8:]
    return safetensors_build(header, body)


@dataclass
class GgufLayout:
    """Where the editable numbers of a GGUF file are: integer KV values and each tensor's info."""

    ints: dict[str, tuple[int, str]]  # key -> (byte position, numpy dtype)
    tensors: list[dict[str, Any]]  # name, dims position, ndim, type position, offset position, offset

    @classmethod
    def of(cls, path: Path) -> "GgufLayout":
        import gguf
        import numpy as np

        reader = gguf.GGUFReader(path)
        ints = {}
        for key, f in reader.fields.items():
            value = f.parts[-1]
            if key.startswith("GGUF.") or len(f.parts) != 4 or value.dtype.kind not in "iu":
                continue
            ints[key] = (int(f.offset) + sum(int(p.nbytes) for p in f.parts[:-1]), value.dtype.str)
        tensors = []
        for t in reader.tensors:
            parts = t.field.parts
            start = int(t.field.offset)
            sizes = [int(p.nbytes) for p in parts]
            tensors.append({"name": t.name, "dims": start + sum(sizes[:3]), "ndim": int(parts[2][0]),
                            "type": start + sum(sizes[:4]), "offset": start + sum(sizes[:5]),
                            "value": int(np.asarray(parts[5])[0])})
        return cls(ints, tensors)


def mutate_gguf(rng: random.Random, raw: bytes, layout: GgufLayout | None = None) -> bytes:
    """Damage to a GGUF: integer KV values (head counts, sizes), tensor infos (overlapping or
    misaligned offsets, dims, types), the tensor count, flipped header bytes, truncation, appended
    bytes."""
    kinds = ("head", "count", "truncate", "bytes", "append")
    if layout is not None:
        kinds += ("kv", "kv", "kv", "info", "info", "info")
    kind = rng.choice(kinds)
    if kind == "kv":
        key = rng.choice(sorted(layout.ints))
        pos, dt = layout.ints[key]
        size = int(dt[-1])
        value = rng.choice((0, 1, 3, 2 ** (8 * size - 1) - 1, 2 ** 31 - 1, 7, 2 ** 20)) % (1 << (8 * size))
        return raw[:pos] + value.to_bytes(size, "little") + raw[pos + size:]
    if kind == "info":
        t = rng.choice(layout.tensors)
        other = rng.choice(layout.tensors)
        b = bytearray(raw)
        what = rng.randrange(3)
        if what == 0:  # point at another tensor's data, or off the alignment, or past the end
            value = rng.choice((other["value"], other["value"] + 32, t["value"] + 1, 2 ** 40))
            struct.pack_into("<Q", b, t["offset"], value)
        elif what == 1:
            i = rng.randrange(t["ndim"])
            struct.pack_into("<Q", b, t["dims"] + 8 * i, rng.choice((0, 1, 2 ** 32, 2 ** 63, 3)))
        else:
            struct.pack_into("<I", b, t["type"], rng.choice((0, 1, 2, 8, 12, 14, 30, 99)))
        return bytes(b)
    if kind == "head":
        end = min(len(raw), 4096)
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(4, end)] = rng.randrange(256)
        return bytes(b)
    if kind == "count":
        (count,) = struct.unpack_from("<Q", raw, 8)
        new = rng.choice((count + 1, count - 1, 0, 2 ** 40))
        return raw[:8] + struct.pack("<Q", max(new, 0)) + raw[16:]
    if kind == "truncate":
        return raw[:rng.randrange(len(raw))]
    if kind == "append":
        return raw + bytes(rng.randrange(256) for _ in range(rng.choice((1, 64, 4096))))
    return _flip(rng, raw, rng.randint(1, 16))


def mutate_hf_dir(rng: random.Random, src: Path, dest: Path) -> None:
    """A copy of the HF directory ``src`` at ``dest`` with its config, index or tokenizer edited."""
    shutil.copytree(src, dest)
    kind = rng.choice(("config", "config", "index", "tokenizer", "weights"))
    if kind == "config":
        cfg = json.loads((dest / "config.json").read_text())
        for _ in range(rng.randint(1, 3)):
            cfg[rng.choice(CONFIG_FIELDS)] = rng.choice(HOSTILE_VALUES)
        (dest / "config.json").write_text(json.dumps(cfg))
    elif kind == "index":
        tensors = [t for t in safetensors_parts((dest / "model.safetensors").read_bytes())[0] if t != "__metadata__"]
        shard = rng.choice(("model-00001.safetensors", "../model.safetensors", "/etc/passwd", "", 5, None,
                            "a\x00.safetensors", "Model.safetensors", "missing.safetensors"))
        if shard == "model-00001.safetensors":  # a valid one-shard checkpoint
            (dest / "model.safetensors").rename(dest / shard)
        weight_map: Any = {t: shard for t in tensors}
        if rng.random() < 0.3:
            weight_map = rng.choice(([1], {"a": "model.safetensors", "b": "MODEL.safetensors"},
                                     {tensors[0]: "model.safetensors"}))
        index = {"weight_map": weight_map} if rng.random() < 0.9 else [weight_map]
        (dest / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "tokenizer":
        target = dest / rng.choice(("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
        target.write_bytes(rng.choice((b"\xff\xfe\x00", b"{", b"[]", b'{"model": 3}', b"")))
    else:
        w = dest / "model.safetensors"
        w.write_bytes(mutate_safetensors(rng, w.read_bytes()))


def outcome(call: Callable[[], Any]) -> int:
    """Exit status the CLI would give: 0 when ``call`` succeeds, `AprError`'s code (2) when it
    refuses; any other exception propagates (a traceback where one line was promised)."""
    try:
        call()
    except AprError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"error message spans lines: {exc!r}") from None
        return exc.exit_code
    return 0


# --------------------------------------------------------------------------- driver

FORMATS = ("apr", "safetensors", "hf", "gguf")


def seed_files(workdir: Path) -> dict[str, Path]:
    """A valid tiny model in every format, the starting point of each mutation."""
    from . import pipeline
    from .testing import tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    model = tiny_model("llama")
    return {"apr": Path(pipeline.save(model, str(workdir / "seed.apr"))),
            "safetensors": Path(pipeline.save(model, str(workdir / "seed.safetensors"))),
            "hf": Path(pipeline.save(model, str(workdir / "seed-hf"), "hf")),
            "gguf": Path(pipeline.save(model, str(workdir / "seed.gguf"), dtype="f32"))}


def mutated(fmt: str, rng: random.Random, seed: Path, dest: Path) -> Path:
    """Write one mutation of the ``fmt`` seed file at ``dest`` (a directory for ``hf``)."""
    if fmt == "hf":
        mutate_hf_dir(rng, seed, dest)
        return dest
    if fmt == "gguf":
        if seed not in _LAYOUTS:
            _LAYOUTS[seed] = GgufLayout.of(seed)
        dest.write_bytes(mutate_gguf(rng, seed.read_bytes(), _LAYOUTS[seed]))
        return dest
    mutate = {"apr": mutate_apr, "safetensors": mutate_safetensors}[fmt]
    dest.write_bytes(mutate(rng, seed.read_bytes()))
    return dest


_LAYOUTS: dict[Path, GgufLayout] = {}


def use(path: Path) -> None:
    """What the commands do with a model: load and check it (as `apr eval`/`quantize` do),
    describe it (`apr inspect`), read every tensor, and build its tokenizer."""
    from . import pipeline
    from .inspect import describe
    from .torch_bridge import load_tokenizer

    model = pipeline.load(str(path))
    describe(model, with_tensors=True)
    for name in model.names():
        model.tensor(name)
    if model.tokenizer:
        load_tokenizer(model)


def fuzz(fmt: str, cases: int, seed: int, workdir: Path, seeds: dict[str, Path] | None = None) -> dict[int, int]:
    """Run ``cases`` seeded mutations of ``fmt`` through `use`; returns {exit status: count}.
    A traceback propagates (with the case number in its note)."""
    seeds = seeds or seed_files(workdir / "seeds")
    rng = random.Random(f"{fmt}:{seed}")
    counts: dict[int, int] = {}
    for i in range(cases):
        dest = workdir / f"{fmt}-{i}{'' if fmt == 'hf' else '.' + fmt}"
        path = mutated(fmt, rng, seeds[fmt], dest)
        try:
            code = outcome(lambda: use(path))
        except BaseException as exc:
            exc.add_note(f"fuzz case {fmt} #{i} (seed {seed}): {path}")
            raise
        counts[code] = counts.get(code, 0) + 1
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return counts
