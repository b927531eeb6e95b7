"""hf:// imports through huggingface_hub: a populated offline cache works, an empty one is one line."""

import json

from apr_core import pipeline
from apr_core.testing import tiny_model
from helpers import one_error_line, run_apr

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(root, repo):
    """The Hub cache layout snapshot_download reads when offline: refs/main -> snapshots/<commit>/."""
    org, name = repo.split("/")
    base = root / "hub" / f"models--{org}--{name}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    (base / "snapshots").mkdir()
    pipeline.save(tiny_model("qwen2"), str(base / "snapshots" / COMMIT), "hf")
    return base


def test_hf_import_from_offline_cache(tmp_path):
    _fake_cache(tmp_path / "hf-home", "tiny-org/tiny-coder")
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    run_apr("import", "hf://tiny-org/tiny-coder", "-o", str(tmp_path / "m.apr"), env=env, check=True)
    info = json.loads(run_apr("inspect", str(tmp_path / "m.apr"), "--json", check=True).stdout)
    assert info["model_type"] == "qwen2" and info["tokenizer"]["chat_template"]
    assert info["provenance"][0]["params"]["source"] == "hf://tiny-org/tiny-coder"


def test_hf_import_offline_without_cache_names_the_fix(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "1"}
    line = one_error_line(run_apr("import", "hf://Qwen/Qwen2.5-Coder-7B", "-o", str(tmp_path / "x.apr"), env=env))
    assert "local model directory" in line and "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "x.apr").exists()
