"""safetensors: interoperability with the reference library and rejection of hostile files."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from apr_core.errors import CorruptFileError
from apr_core.formats.safetensors import read_safetensors, write_safetensors
from apr_core.model import LazyTensor


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 6, generator=g), "b": torch.randn(3, generator=g).half(),
            "c": torch.randn(2, 2, generator=g).bfloat16(), "d": torch.arange(5, dtype=torch.int64)}


def test_reads_reference_library_files(tmp_path):
    ref = _tensors()
    save_file(ref, tmp_path / "ref.safetensors", metadata={"k": "v"})
    tensors, meta, _mm = read_safetensors(tmp_path / "ref.safetensors")
    assert meta == {"k": "v"}
    for name, t in ref.items():
        assert torch.equal(tensors[name].load(), t)


def test_reference_library_reads_our_files(tmp_path):
    ref = _tensors()
    write_safetensors({n: LazyTensor.of(n, t) for n, t in ref.items()}, tmp_path / "ours.safetensors",
                      metadata={"format": "pt"})
    back = load_file(tmp_path / "ours.safetensors")
    for name, t in ref.items():
        assert torch.equal(back[name], t)


def _craft(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("case,message", [
    ("short", "truncated"),
    ("huge_header", "header length"),
    ("not_json", "UTF-8 JSON"),
    ("dtype", "unsupported dtype"),
    ("shape_mismatch", "does not match"),
    ("out_of_file", "outside the file"),
    ("overlap", "overlaps"),
    ("trailing", "trailing"),
    ("duplicate", "duplicate"),
    ("negative_dim", "invalid shape"),
])
def test_hostile_files_are_rejected(tmp_path, case, message):
    p = tmp_path / "bad.safetensors"
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    if case == "short":
        p.write_bytes(b"\x01\x02")
    elif case == "huge_header":
        p.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    elif case == "not_json":
        p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    elif case == "dtype":
        _craft(p, {"x": dict(f32, dtype="F8_XYZ")}, b"\0" * 8)
    elif case == "shape_mismatch":
        _craft(p, {"x": dict(f32, shape=[3])}, b"\0" * 8)
    elif case == "out_of_file":
        _craft(p, {"x": dict(f32, data_offsets=[0, 800])}, b"\0" * 8)
    elif case == "overlap":
        _craft(p, {"x": f32, "y": dict(f32, data_offsets=[4, 12])}, b"\0" * 12)
    elif case == "trailing":
        _craft(p, {"x": f32}, b"\0" * 12)
    elif case == "duplicate":
        raw = b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    elif case == "negative_dim":
        _craft(p, {"x": dict(f32, shape=[-2])}, b"\0" * 8)
    with pytest.raises(CorruptFileError, match=message):
        read_safetensors(p)
