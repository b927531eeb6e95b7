"""benchmarks/kernels.py: a clean exit without a GPU, and its measuring code under the Triton interpreter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "kernels.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})), cwd=ROOT)


def test_without_gpu_says_so_and_exits_0(tmp_path):
    proc = _run("--out", str(tmp_path / "out"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stdout and "nothing was measured" in proc.stdout
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_interpret_mode_measures_and_compares(tmp_path):
    proc = _run("--interpret", "--kernels", "int4_dequantize,nm_mask", "--shapes", "8x64", "--out", str(tmp_path),
                env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["interpret"] is True
    names = [r["kernel"] for r in result["results"]]
    assert names == ["int4_dequantize (AprQ4)", "nm_mask 2:4"]
    for r in result["results"]:
        assert r["outputs"] == "equal"  # the Triton kernel and the torch reference agree
        assert r["traffic_mb"] >= 0 and r["triton_ms"] > 0 and r["torch_ms"] > 0
    assert "| int4_dequantize (AprQ4) | 8x64 |" in proc.stdout
