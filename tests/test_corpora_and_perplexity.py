"""Corpora and the perplexity protocol, checked against transformers' own loss."""

import json
import math

import pytest
import torch

from apr_core import pipeline
from apr_core.corpora import EVAL_CODE_FILES, CALIBRATION_CODE_FILES, load_corpus
from apr_core.errors import AprError
from apr_core.testing import tiny_model
from apr_core.torch_bridge import load_tokenizer, to_transformers


def test_builtin_corpora_are_offline_and_disjoint():
    code = load_corpus("code")
    prose = load_corpus("prose")
    assert code.name == "stdlib-code" and len(code.text) > 100_000
    assert prose.name == "python-docs" and len(prose.text) > 100_000
    assert not set(EVAL_CODE_FILES) & set(CALIBRATION_CODE_FILES)
    assert load_corpus("code").sha256 == code.sha256


def test_jsonl_documents_are_joined_with_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"content": "a"}) + "\n\n" + json.dumps({"content": "b"}) + "\n")
    assert load_corpus(str(p), "content").text == "a\n\nb"
    with pytest.raises(AprError, match="no string field 'text'"):
        load_corpus(str(p))


def test_perplexity_matches_transformers_loss(tmp_path):
    model = tiny_model("qwen2", seed=2)
    sample = tmp_path / "s.txt"
    sample.write_text("def add(a, b):\n    return a + b\n" * 30)
    res = pipeline.evaluate("perplexity", model, {"dataset": str(sample), "seq_len": "24"})
    tok = load_tokenizer(model)
    ids = tok(sample.read_text())["input_ids"]
    n = len(ids) // 24
    windows = torch.tensor(ids[: n * 24]).view(n, 24)
    module = to_transformers(model)
    with torch.inference_mode():
        losses = [module(w[None], labels=w[None]).loss.item() for w in windows]
    expected = math.exp(sum(losses) / len(losses))  # equal windows: mean of means = token mean
    assert res["windows"] == n and res["tokens"] == n * 23
    assert abs(res["value"] - expected) / expected < 1e-5


def test_short_corpus_is_one_window_and_max_tokens_caps(tmp_path):
    model = tiny_model("llama")
    sample = tmp_path / "s.txt"
    sample.write_text("x = 1\n" * 50)
    full = pipeline.evaluate("perplexity", model, {"dataset": str(sample)})
    assert full["windows"] == 1 and full["seq_len"] == full["tokens"] + 1
    capped = pipeline.evaluate("perplexity", model, {"dataset": str(sample), "max_tokens": "20", "seq_len": "10"})
    assert capped["windows"] == 2 and capped["tokens"] == 18
