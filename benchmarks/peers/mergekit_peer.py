"""mergekit as the peer of benchmarks/merge.py: its venv, its inputs and its YAML for each apr strategy.

mergekit (Goddard et al. 2024, ``mergekit-yaml``) is what users run instead of ``apr merge``. It is
installed into its own venv (``runs/peers/mergekit``, never apr's): torch==2.13.0 (the CPU wheel)
first, then mergekit with a constraints file pinning that torch, so pip cannot pull a CUDA build.
An existing venv with ``mergekit-yaml`` is reused. Inputs are the benchmark's models written as
Hugging Face directories (config.json, model.safetensors, tokenizer files).

The YAML for each apr strategy sets every parameter that decides the result, apr's defaults
included where mergekit's differ (dare_ties: mergekit does not normalise by default, apr does):

=================  =====================================================================
apr                mergekit
=================  =====================================================================
average            linear, weight 1 and 1, normalize
weighted           linear, weight 0.7 and 0.3, normalize
slerp 0.85,0.15    slerp, base_model = first model, t = 0.15
task_arithmetic    task_arithmetic, weight 1 each, no normalize, lambda 1
ties --density d   ties, density d, weight 1 each, normalize (sign consensus "sum")
dare --drop-rate p dare_linear, density 1-p, rescale, weight 1 each, no normalize
dare_ties -p       dare_ties, density 1-p, rescale, weight 1 each, normalize
=================  =====================================================================
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"
PACKAGE = "mergekit"


def install(venv: Path) -> Path:
    """The ``mergekit-yaml`` of a venv at ``venv``, creating and filling the venv if needed."""
    exe = venv / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    quiet = ["-q", "--disable-pip-version-check"]
    subprocess.run([py, "-m", "pip", "install", *quiet, TORCH], check=True)
    subprocess.run([py, "-m", "pip", "install", *quiet, "-c", str(constraints), PACKAGE], check=True)
    return exe


def version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'))"],
                         capture_output=True, text=True, check=True).stdout.split()
    return f"mergekit {out[0]}, torch {out[1]}"


def write_hf_dir(apr_path: Path, out: Path) -> Path:
    """``apr_path`` as a Hugging Face model directory (kept if it already exists)."""
    if (out / "model.safetensors").exists():
        return out
    from apr_core.formats.apr import read_apr
    from apr_core.formats.safetensors import write_safetensors

    model = read_apr(apr_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config, indent=2))
    for name, data in model.tokenizer.items():
        (out / name).write_bytes(data)
    tmp = out / "model.safetensors.tmp"
    write_safetensors(model.tensors, tmp)
    os.replace(tmp, out / "model.safetensors")
    return out


def config(strategy: str, a: Path, b: Path, base: Path, *, weights=(0.7, 0.3), slerp=(0.85, 0.15),
           density: float = 0.2, drop_rate: float = 0.3) -> dict:
    """mergekit's merge config (as a dict, written as YAML) equivalent to ``apr merge a b --strategy``."""
    def models(**params):
        return [{"model": str(a), "parameters": dict(params)}, {"model": str(b), "parameters": dict(params)}]

    if strategy in ("average", "weighted"):
        w = (1.0, 1.0) if strategy == "average" else weights
        return {"merge_method": "linear", "dtype": "bfloat16", "parameters": {"normalize": True},
                "models": [{"model": str(a), "parameters": {"weight": w[0]}},
                           {"model": str(b), "parameters": {"weight": w[1]}}]}
    if strategy == "slerp":
        return {"merge_method": "slerp", "dtype": "bfloat16", "base_model": str(a),
                "parameters": {"t": slerp[1] / sum(slerp)}, "models": [{"model": str(a)}, {"model": str(b)}]}
    family = {"task_arithmetic": ("task_arithmetic", {"weight": 1.0}, False),
              "ties": ("ties", {"weight": 1.0, "density": density}, True),
              "dare": ("dare_linear", {"weight": 1.0, "density": 1 - drop_rate}, False),
              "dare_ties": ("dare_ties", {"weight": 1.0, "density": 1 - drop_rate}, True)}
    if strategy not in family:
        raise KeyError(strategy)
    method, params, normalize = family[strategy]
    top = {"normalize": normalize, "lambda": 1.0}
    if strategy.startswith("dare"):
        top["rescale"] = True
    return {"merge_method": method, "dtype": "bfloat16", "base_model": str(base), "parameters": top,
            "models": models(**params)}


def command(exe: Path, yaml_path: Path, out: Path, threads: int, seed: int = 0) -> list[str]:
    """``mergekit-yaml`` on CPU with its fastest documented CPU settings for ``threads`` threads:
    ``--async-write`` (writes shards on a background thread while merging), ``-j threads``,
    ``--no-cuda``; ``--quiet`` and no model card, which only cost time."""
    return [str(exe), str(yaml_path), str(out), "--no-cuda", "--num-threads", str(threads), "--async-write",
            "--random-seed", str(seed), "--quiet", "--no-write-model-card", "--copy-tokenizer"]


def write_yaml(cfg: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
