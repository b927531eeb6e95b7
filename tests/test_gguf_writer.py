"""apr's GGUF writer packs metadata arrays in one call: the bytes must be exactly gguf-py's."""

import gguf
import pytest
from gguf import GGUFValueType

from apr_core.formats.gguf_writer import GGUFWriter

VALUES = [
    (["<|endoftext|>", "Ġthe", "naïve", "", "“quotes”"], None),  # tokens
    ([0.0, -1.5, 3.25e-7, -0.0], None),  # scores
    ([1, 3, 6, 1, 1], None),  # token types, INT32 by gguf-py's rule
    ([1, 2, 3], GGUFValueType.UINT32),
    ([7, -2], GGUFValueType.INT64),
    ([0.5, 2], GGUFValueType.FLOAT64),
    (["Ġ t", "h e"], GGUFValueType.STRING),
    ([True, False], None),  # bools: gguf-py's own path
    ([1, 2.5], None),  # mixed: gguf-py's own path (and its error)
    ([["a", "b"], ["c"]], None),  # nested
    (b"\x00\x01", None),
]


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
@pytest.mark.parametrize("value,sub_type", VALUES)
def test_array_bytes_equal_gguf_py(tmp_path, value, sub_type, endian):
    ours = GGUFWriter(str(tmp_path / "a.gguf"), "llama", endianess=endian)
    theirs = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "llama", endianess=endian)

    def pack(writer):
        try:
            return writer._pack_val(value, GGUFValueType.ARRAY, add_vtype=True, sub_type=sub_type)
        except Exception as exc:  # the same values must fail the same way
            return type(exc)

    assert pack(ours) == pack(theirs)


def test_fast_path_taken_for_a_vocabulary(tmp_path):
    """The vocabulary arrays do not go through gguf-py's element-by-element packer."""
    ours = GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    tokens = [f"tok{i}" for i in range(1000)]
    assert ours._pack_array(tokens, None) is not None
    assert ours._pack_array([float(i) for i in range(1000)], None) is not None
    assert ours._pack_array([True, False], None) is None


def test_a_whole_file_equals_gguf_py(tmp_path):
    def write(cls, path):
        w = cls(str(path), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_token_list(["a", "b", "ab", "<s>"])
        w.add_token_scores([0.0, -1.0, -2.0, 0.0])
        w.add_token_types([1, 1, 1, 3])
        w.add_token_merges(["a b"])
        w.add_uint32("llama.block_count", 2)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        return path.read_bytes()

    assert write(GGUFWriter, tmp_path / "a.gguf") == write(gguf.GGUFWriter, tmp_path / "b.gguf")
