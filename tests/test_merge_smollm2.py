"""Merging the real SmolLM2-135M-Instruct (slow tier): TIES with a perturbed copy keeps quality."""

import json

import pytest
import torch

from apr_core.formats.apr import read_apr, write_apr
from apr_core.model import LazyTensor
from helpers import run_apr

pytestmark = pytest.mark.slow
PPL = ["--dataset", "code", "--seq-len", "512", "--max-tokens", "1024", "--json"]


def test_ties_with_a_perturbed_copy_keeps_quality_and_metadata(smollm2_apr, tmp_path):
    base = read_apr(smollm2_apr)
    noisy = base.derive()
    g = torch.Generator().manual_seed(0)
    for name, lt in base.tensors.items():
        t = lt.load()
        noisy.tensors[name] = LazyTensor.of(name, t + torch.randn(t.shape, generator=g).mul_(0.002).to(t.dtype))
    write_apr(noisy, tmp_path / "noisy.apr")
    dense = json.loads(run_apr("eval", smollm2_apr, *PPL, check=True).stdout)["value"]
    run_apr("merge", str(tmp_path / "noisy.apr"), "--strategy", "ties", "--base-model", smollm2_apr,
            "--density", "0.2", "-o", str(tmp_path / "ties.apr"), check=True)
    merged = read_apr(tmp_path / "ties.apr")
    assert merged.tokenizer == base.tokenizer and merged.config == base.config
    assert merged.chat_template == base.chat_template
    value = json.loads(run_apr("eval", str(tmp_path / "ties.apr"), *PPL, check=True).stdout)["value"]
    assert value < dense * 1.1
