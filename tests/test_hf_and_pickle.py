"""Hugging Face directories and pickles: exported models load in transformers; pickles stay inert."""

import os
import pickle

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from apr_core import pipeline
from apr_core.errors import AprError, CorruptFileError
from apr_core.formats.hfdir import load_pickle
from apr_core.testing import ARCHS, assert_models_equal, tiny_model
from apr_core.torch_bridge import to_transformers


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_export_loads_in_transformers_with_identical_logits(tmp_path, arch):
    model = tiny_model(arch, seed=3)
    out = pipeline.save(model, str(tmp_path / "hf") + "/")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = to_transformers(model)
    ids = torch.arange(3, 20).unsqueeze(0)
    with torch.inference_mode():
        diff = (loaded(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= 1e-5
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == model.chat_template
    back = pipeline.load(out)
    assert back.tokenizer == model.tokenizer and back.config["model_type"] == model.config["model_type"]


def test_hf_dir_round_trip_through_apr(tmp_path):
    model = tiny_model("qwen2")
    pipeline.save(model, str(tmp_path / "hf"), "hf")
    pipeline.save(pipeline.load(str(tmp_path / "hf")), str(tmp_path / "m.apr"))
    back = pipeline.load(str(tmp_path / "m.apr"))
    for name in model.names():
        assert torch.equal(back.tensor(name), model.tensor(name))


def test_safetensors_export_is_self_contained(tmp_path):
    model = tiny_model("llama").with_operation("test", None, {}, [])
    pipeline.save(model, str(tmp_path / "m.safetensors"))
    back = pipeline.load(str(tmp_path / "m.safetensors"))
    model.sha256 = back.sha256 = None
    assert back.config == model.config and back.tokenizer == model.tokenizer
    assert back.provenance == model.provenance
    for name in model.names():
        assert torch.equal(back.tensor(name), model.tensor(name))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Exploit()
    evil.marker = marker
    path = tmp_path / "pytorch_model.bin"
    with open(path, "wb") as f:
        pickle.dump({"w": evil}, f)
    with pytest.raises(CorruptFileError, match="refused"):
        load_pickle(path)
    assert not marker.exists()


def test_plain_tensor_pickle_loads(tmp_path):
    torch.save({"w": torch.ones(2, 3)}, tmp_path / "ok.bin")
    tensors = load_pickle(tmp_path / "ok.bin")
    assert torch.equal(tensors["w"].load(), torch.ones(2, 3))


def test_hf_directory_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AprError, match="config.json"):
        pipeline.load(str(tmp_path / "empty"))


def test_export_then_reimport_keeps_everything(tmp_path):
    model = tiny_model("gemma3")
    pipeline.save(model, str(tmp_path / "a.apr"))
    first = pipeline.load(str(tmp_path / "a.apr"))
    pipeline.save(first, str(tmp_path / "b.apr"))
    second = pipeline.load(str(tmp_path / "b.apr"))
    assert_models_equal(first, second)
