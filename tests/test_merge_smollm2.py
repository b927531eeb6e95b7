"""Merging the real SmolLM2-135M-Instruct (slow tier): TIES with a perturbed copy keeps quality."""

import json

import pytest
import torch

from apr_core.formats.apr import read_apr, write_apr
from apr_core.model import LazyTensor
from helpers import run_apr

pytestmark = pytest.mark.slow
PPL = ["--dataset", "code", "--seq-len", "512", "--max-tokens", "2048", "--json"]


def test_ties_and_slerp_with_a_perturbed_copy_keep_quality(smollm2_apr, tmp_path):
    base = read_apr(smollm2_apr)
    noisy = base.derive()
    g = torch.Generator().manual_seed(0)
    for name, lt in base.tensors.items():
        t = lt.load()
        noise = torch.randn(t.shape, generator=g).mul_(0.002).to(t.dtype)
        noisy.tensors[name] = LazyTensor.of(name, t + noise)
    write_apr(noisy, tmp_path / "noisy.apr")
    dense = json.loads(run_apr("eval", smollm2_apr, *PPL, check=True).stdout)["value"]
    run_apr("merge", str(tmp_path / "noisy.apr"), "--strategy", "ties", "--base-model", smollm2_apr,
            "--density", "0.2", "-o", str(tmp_path / "ties.apr"), check=True)
    run_apr("merge", str(tmp_path / "ties.apr"), smollm2_apr, "--strategy", "slerp", "--weights", "0.85,0.15",
            "-o", str(tmp_path / "final.apr"), check=True)
    final = read_apr(tmp_path / "final.apr")
    assert final.tokenizer == base.tokenizer and final.config == base.config
    merged = json.loads(run_apr("eval", str(tmp_path / "final.apr"), *PPL, check=True).stdout)["value"]
    assert merged < dense * 1.1
