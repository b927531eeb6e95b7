"""The .apr container: round trips, memory-mapped reads, and rejection of damaged files."""

import ctypes
import json
import random
import struct
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_core.errors import AprError, CorruptFileError
from apr_core.formats.apr import HEADER, read_apr, write_apr
from apr_core.model import LazyTensor, Model, TensorSpec
from apr_core.testing import assert_models_equal, tiny_model

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int32, torch.int64, torch.uint8]


def _model(tensors: dict) -> Model:
    return Model(tensors={n: LazyTensor.of(n, t) for n, t in tensors.items()},
                 config={"model_type": "llama", "num_attention_heads": 2},
                 tokenizer={"tokenizer.json": b'{"model": {"type": "BPE", "vocab": {"a": 0}}}',
                            "tokenizer.model": bytes(range(256))},
                 generation_config={"eos_token_id": 2}, provenance=[{"operation": "test"}])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES),
                          st.lists(st.integers(0, 5), min_size=0, max_size=4)), min_size=1, max_size=6),
       st.integers(0, 2**31))
def test_round_trip_property(tmp_path_factory, specs, seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (dtype, shape) in enumerate(specs):
        raw = torch.randint(-100, 100, shape, generator=gen)
        tensors[f"t{i}.weight"] = raw.to(dtype) if dtype != torch.uint8 else raw.abs().to(dtype)
    path = tmp_path_factory.mktemp("rt") / "m.apr"
    model = _model(tensors)
    write_apr(model, path)
    back = read_apr(path)
    assert_models_equal(model, back)
    data = path.read_bytes()
    (magic, major, _minor, flags, count, meta_off, _ms, index_off, data_off, _crc, _z) = HEADER.unpack_from(data)
    assert magic == b"APR\x00" and major == 2 and count == len(tensors)
    assert flags & 0x400 and meta_off == 64 and index_off % 64 == 0 and data_off % 64 == 0
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_tensor_data_is_64_byte_aligned_and_memory_mapped(tmp_path):
    model = _model({"a": torch.randn(3, 5), "b": torch.randn(7).half(), "c": torch.randn(2, 2)})
    path = tmp_path / "m.apr"
    write_apr(model, path)
    back = read_apr(path)
    data_off = HEADER.unpack_from(path.read_bytes())[8]
    base = ctypes.addressof(ctypes.c_char.from_buffer(back.keepalive))
    for name in back.names():
        t = back.tensor(name)
        # a view into the file's memory map, not a copy, starting on a 64-byte boundary
        offset = t.data_ptr() - base
        assert data_off <= offset < path.stat().st_size
        assert (offset - data_off) % 64 == 0
        assert torch.equal(t, model.tensor(name))


def test_metadata_keeps_rust_tool_keys_and_tokenizer(tmp_path):
    m = tiny_model("llama")
    path = tmp_path / "m.apr"
    write_apr(m, path)
    data = path.read_bytes()
    meta_size = HEADER.unpack_from(data)[6]
    meta = json.loads(data[64:64 + meta_size])
    for key in ("architecture", "num_heads", "num_kv_heads", "hidden_size", "num_layers", "vocab_size",
                "chat_template"):
        assert key in meta, key
    assert meta["custom"]["tokenizer.vocabulary"][0] == "<|endoftext|>"
    assert HEADER.unpack_from(data)[3] & 0x200  # HAS_VOCAB
    back = read_apr(path)
    assert back.tokenizer == m.tokenizer and back.chat_template == m.chat_template


def _good_file(tmp_path):
    path = tmp_path / "good.apr"
    write_apr(_model({"w": torch.arange(40, dtype=torch.float32).reshape(5, 8), "b": torch.ones(3)}), path)
    return path


def _rewrite(path, data, fix_header_crc=True, fix_footer=True):
    data = bytearray(data)
    if fix_header_crc:
        struct.pack_into("<I", data, 40, zlib.crc32(bytes(data[0:40]) + bytes(data[44:64])))
    if fix_footer:
        struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("cut", [0, 10, 63, 64, 100, -5, -1])
def test_truncated_files_are_rejected(tmp_path, cut):
    path = _good_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(CorruptFileError):
        read_apr(path)


def test_every_single_bit_flip_region_is_detected(tmp_path):
    path = _good_file(tmp_path)
    data = path.read_bytes()
    rng = random.Random(0)
    positions = [0, 5, 9, 41, 70, len(data) // 2, len(data) - 10, len(data) - 2] + \
        [rng.randrange(len(data)) for _ in range(30)]
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(bad))
        with pytest.raises(CorruptFileError):
            read_apr(path)


def _index_entry_offset(data):
    return HEADER.unpack_from(data)[7]


@pytest.mark.parametrize("mutation,message", [
    ("magic", "not an .apr"),
    ("version", "unsupported version"),
    ("column_major", "column-major"),
    ("count", "tensor count"),
    ("dtype", "unknown dtype"),
    ("ndim", "dims"),
    ("size", "needs"),
    ("offset", "past the end"),
    ("name_len", "name"),
    ("metadata", "UTF-8 JSON"),
])
def test_structural_damage_gives_a_clear_error(tmp_path, mutation, message):
    path = _good_file(tmp_path)
    data = bytearray(path.read_bytes())
    idx = _index_entry_offset(data)  # first entry: name "b" (sorted), 1-D f32 of 3
    if mutation == "magic":
        data[0:4] = b"XPR\x00"
    elif mutation == "version":
        data[4] = 3
    elif mutation == "column_major":
        struct.pack_into("<H", data, 6, 0x800)
    elif mutation == "count":
        struct.pack_into("<I", data, 8, 10**9)
    elif mutation == "dtype":
        data[idx + 3] = 77
    elif mutation == "ndim":
        data[idx + 4] = 9
    elif mutation == "size":
        struct.pack_into("<Q", data, idx + 5 + 8 + 8, 999)
    elif mutation == "offset":
        struct.pack_into("<Q", data, idx + 5 + 8, 10**12)
    elif mutation == "name_len":
        struct.pack_into("<H", data, idx, 300)
    elif mutation == "metadata":
        data[64] = 0xFF
    _rewrite(path, data)
    with pytest.raises(CorruptFileError, match=message):
        read_apr(path)


def test_overlapping_tensors_are_rejected(tmp_path):
    path = _good_file(tmp_path)
    data = bytearray(path.read_bytes())
    idx = _index_entry_offset(data)
    second = idx + 2 + 1 + 2 + 8 + 16  # entry "w": name_len, name, dtype/ndim, 2 dims, offset/size
    struct.pack_into("<Q", data, second + 2 + 1 + 2 + 16, 0)  # point "w" at "b"'s bytes
    _rewrite(path, data)
    with pytest.raises(CorruptFileError, match="overlaps"):
        read_apr(path)


def test_fuzzed_files_never_crash(tmp_path):
    """Every mutated file is refused with a one-line AprError naming the file, or reads back with
    tensors that match their declared specs; any other exception fails the test."""
    path = _good_file(tmp_path)
    data = path.read_bytes()
    rng = random.Random(1)
    refused = accepted = 0
    for _ in range(150):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        _rewrite(path, bad, fix_header_crc=rng.random() < 0.7, fix_footer=rng.random() < 0.7)
        try:
            m = read_apr(path)
        except AprError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc), str(exc)
            refused += 1
            continue
        for name in m.names():
            t, spec = m.tensor(name), m.spec(name)
            assert tuple(t.shape) == spec.shape and t.dtype == spec.dt.torch_dtype(), name
        accepted += 1
    assert refused > 0 and accepted > 0, (refused, accepted)


def test_unverified_read_skips_the_checksum_but_not_structure(tmp_path):
    path = _good_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    read_apr(path, verify=False)  # data damage is only visible to the checksum
    with pytest.raises(CorruptFileError, match="checksum"):
        read_apr(path)


def test_quantized_block_sizes_are_checked():
    from apr_core.dtypes import by_name

    assert by_name("Q4_K").nbytes((4, 512)) == 4 * 2 * 144
    assert by_name("APR_Q4").nbytes((3, 64)) == 3 * 2 * 18
    assert by_name("APR_Q8").nbytes((10,)) == 14
    with pytest.raises(CorruptFileError):
        by_name("Q6_K").nbytes((2, 100))


def test_spec_mismatch_is_refused_before_anything_is_written(tmp_path):
    bad = Model(tensors={"x": LazyTensor(TensorSpec("x", "F32", (2, 2)), lambda: torch.zeros(3))}, config={})
    with pytest.raises(AprError, match="declared"):
        write_apr(bad, tmp_path / "bad.apr")
    assert list(tmp_path.iterdir()) == []


def _flip_data_byte(path):
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checksum_checked_ahead_is_the_one_the_reader_uses(tmp_path, monkeypatch):
    from apr_core.formats import footer

    path = _good_file(tmp_path)
    expected = read_apr(path).sha256
    footer.check_ahead([path])
    footer._AHEAD[footer._identity(str(path))].result(timeout=30)  # the background read is done

    def refuse(*_args):
        raise AssertionError("checked again although the early check had the answer")

    monkeypatch.setattr(footer, "verify", refuse)
    assert read_apr(path).sha256 == expected
    assert footer._identity(str(path)) not in footer._AHEAD  # used once; a later read checks again


def test_damage_found_ahead_fails_the_read(tmp_path):
    from apr_core.formats import footer

    path = _good_file(tmp_path)
    _flip_data_byte(path)
    footer.check_ahead([path])
    with pytest.raises(CorruptFileError, match="checksum"):
        read_apr(path)


def test_a_file_changed_after_its_early_check_is_checked_again(tmp_path):
    import os

    from apr_core.formats import footer

    path = _good_file(tmp_path)
    footer.check_ahead([path])
    footer._AHEAD[footer._identity(str(path))].result(timeout=30)  # checked while still good
    before = os.stat(path).st_mtime_ns
    _flip_data_byte(path)  # same size
    os.utime(path, ns=(before + 10**9, before + 10**9))
    with pytest.raises(CorruptFileError, match="checksum"):
        read_apr(path)
    footer._AHEAD.clear()
