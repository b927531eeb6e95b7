"""Pruning the real SmolLM2-135M-Instruct (slow tier): the playbook's recipe and a depth cut."""

import json

import pytest

from helpers import run_apr

pytestmark = pytest.mark.slow
PPL = ["--dataset", "code", "--seq-len", "512", "--max-tokens", "2048", "--json"]


@pytest.fixture(scope="module")
def dense_ppl(smollm2_apr):
    return json.loads(run_apr("eval", smollm2_apr, *PPL, check=True).stdout)["value"]


def test_wanda_30_percent_keeps_quality(smollm2_apr, dense_ppl, tmp_path):
    out = tmp_path / "pruned-30.apr"
    summary = json.loads(run_apr("prune", smollm2_apr, "--method", "wanda", "--target-ratio", "0.3",
                                 "--calibration-samples", "16", "--calibration-seq-len", "128", "-o", str(out),
                                 "--json", check=True).stdout)
    assert summary["report"]["achieved_sparsity"] == pytest.approx(0.3, abs=0.005)
    threshold = str(dense_ppl * 1.5)
    res = json.loads(run_apr("eval", str(out), *PPL, "--threshold", threshold, check=True).stdout)
    assert dense_ppl < res["value"] < dense_ppl * 1.5


def test_depth_remove_layers_loads_in_transformers(smollm2_apr, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "shallow.apr"
    run_apr("prune", smollm2_apr, "--method", "depth", "--remove-layers", "20-24", "-o", str(out), check=True)
    run_apr("export", str(out), "--format", "hf", "-o", str(tmp_path / "hf"), check=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert model.config.num_hidden_layers == 25 and len(model.model.layers) == 25
