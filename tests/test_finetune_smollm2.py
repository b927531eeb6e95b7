"""The playbook's fine-tuning commands (sections 7.4, 7.5, 7.2) as written, on SmolLM2-135M."""

import json
import shutil

import pytest

from helpers import run_apr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(smollm2_apr, tmp_path_factory):
    d = tmp_path_factory.mktemp("ft-smollm2")
    shutil.copy(smollm2_apr, d / "qwen-7b.apr")  # the playbook's name for its base
    run_apr("data", "code-instruct", "--language", "python", "--max-examples", "160", "-o",
            str(d / "code-instruct-50k.jsonl"), check=True)
    return d


def test_playbook_commands_run_as_written(setup):
    d = setup
    small = ["--max-steps", "3", "--batch-size", "2", "--max-seq-len", "128", "-q"]
    plan = json.loads(run_apr("finetune", "qwen-7b.apr", "--method", "auto", "--vram", "24", "--plan", "--json",
                              cwd=d, check=True).stdout)
    assert plan["choice"].startswith("full") and plan["fits_vram"]
    run_apr("finetune", "qwen-7b.apr", "--method", "lora", "--rank", "16", "--data", "code-instruct-50k.jsonl",
            "--epochs", "3", "--learning-rate", "2e-4", "-o", "qwen-7b-lora/", *small, cwd=d, check=True)
    assert (d / "qwen-7b-lora" / "adapter_model.safetensors").is_file()
    run_apr("finetune", "qwen-7b.apr", "--adapter", "qwen-7b-lora/", "--merge", "-o", "qwen-7b-finetuned.apr",
            cwd=d, check=True)
    run_apr("finetune", "qwen-7b.apr", "--method", "qlora", "--rank", "32", "--vram", "16", "--data",
            "code-instruct-50k.jsonl", "--epochs", "3", "--learning-rate", "2e-4", "-o", "qwen-7b-qlora/", *small,
            cwd=d, check=True)
    merged = json.loads(run_apr("finetune", "qwen-7b.apr", "--adapter", "qwen-7b-qlora/", "--merge", "-o",
                                "qwen-7b-qlora-merged.apr", "--json", cwd=d, check=True).stdout)
    assert merged["report"]["merged_into"].startswith("dequantized NF4")
    shutil.copy(d / "qwen-7b.apr", d / "base.apr")
    shutil.copy(d / "code-instruct-50k.jsonl", d / "python-instruct.jsonl")
    run_apr("finetune", "base.apr", "--method", "lora", "--data", "python-instruct.jsonl", "-o", "python-expert.apr",
            *small, cwd=d, check=True)
    info = json.loads(run_apr("inspect", "python-expert.apr", "--json", cwd=d, check=True).stdout)
    assert info["provenance"][-1]["result"]["method"] == "lora" and info["tokenizer"]["chat_template"]


def test_a_short_lora_run_lowers_the_held_out_loss(setup):
    d = setup
    out = json.loads(run_apr("finetune", "qwen-7b.apr", "--method", "lora", "--data", "code-instruct-50k.jsonl",
                             "--max-steps", "8", "--batch-size", "4", "--max-seq-len", "128", "--learning-rate",
                             "1e-3", "--eval-split", "0.1", "-o", "short/", "--json", "-q", cwd=d,
                             check=True).stdout)["report"]
    assert out["eval_loss"] < out["eval_loss_before"] - 0.02, out
