"""GGUF export and import: llama.cpp layout (permuted Q/K, Gemma norm +1), metadata gguf-py reads."""

import gguf
import numpy as np
import pytest
import torch

from apr_core import pipeline
from apr_core.errors import AprError, CorruptFileError
from apr_core.formats.gguf import _permute_qk
from apr_core.testing import ARCHS, tiny_model


def test_qk_permutation_inverts():
    w = torch.randn(4 * 2 * 3, 5)
    assert torch.equal(_permute_qk(_permute_qk(w, 4, inverse=False), 4, inverse=True), w)
    assert not torch.equal(_permute_qk(w, 4, inverse=False), w)


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_gguf_round_trip_is_exact(tmp_path, arch):
    model = tiny_model(arch, seed=5)
    path = pipeline.save(model, str(tmp_path / "m.gguf"), dtype="f32")
    back = pipeline.load(path)
    for name in model.names():
        assert torch.allclose(back.tensor(name).float(), model.tensor(name).float(), atol=1e-6), name
    assert back.chat_template == model.chat_template


def test_gguf_metadata_and_tensors_readable_by_gguf_py(tmp_path):
    model = tiny_model("llama")
    path = pipeline.save(model, str(tmp_path / "m.gguf"), dtype="q8_0")
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    for key in ("llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.context_length", "tokenizer.ggml.model",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert key in fields, key
    assert len(fields["tokenizer.ggml.tokens"].contents()) == model.config["vocab_size"]
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.0.attn_q.weight" in names
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    back = pipeline.load(path)
    w = model.tensor("model.layers.0.mlp.down_proj.weight")
    err = (back.tensor("model.layers.0.mlp.down_proj.weight") - w).abs().max()
    assert err <= w.abs().max() / 127 + 1e-6  # Q8_0: half a step of absmax/127 per block


def test_gguf_export_refuses_unknown_dtype(tmp_path):
    with pytest.raises(AprError, match="GGUF export type"):
        pipeline.save(tiny_model("llama"), str(tmp_path / "m.gguf"), dtype="q3_k")
    assert not (tmp_path / "m.gguf").exists()


def test_garbage_gguf_is_rejected(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + np.arange(20, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptFileError):
        pipeline.load(str(p))
