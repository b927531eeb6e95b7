"""What every side-by-side benchmark needs: a peer's own environment, and a measured process.

Peers (mergekit, llm-compressor, gguf-py, plain transformers ...) are installed into their own
virtual environment under ``runs/peers/NAME``, never into apr's, so a peer's pins cannot change
what apr runs with. torch is installed first at the version apr uses (the CPU build on a machine
without a GPU; an unpinned torch would pull a multi-GB CUDA build) and pinned for the rest of
the install. An environment that holds everything already is reused.

`measure` runs one command as a child process and reports its wall time, its CPU time
(user + system of the child and its children, from ``wait4``) and its peak resident memory
(``ru_maxrss``), so apr and a peer are measured by the same code. Children get `child_env`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "runs" / "peers"


def torch_version() -> str:
    """The torch version apr's environment runs (the peers get the same)."""
    import torch

    return torch.__version__.split("+")[0]


def peer_python(name: str, packages: list[str], *, no_deps: list[str] = ()) -> str:
    """The python of peer environment ``name`` with ``packages`` installed (pip requirement
    strings), creating it on first use; ``no_deps`` are installed without their requirements
    (for peers whose pins conflict with the torch apr uses)."""
    env = PEERS / name
    python = env / "bin" / "python"
    stamp = env / "apr-peer.json"
    wanted = {"torch": torch_version(), "packages": sorted(packages), "no_deps": sorted(no_deps)}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and python.exists():
        return str(python)
    print(f"installing peer environment {env} ({', '.join([*packages, *no_deps])}) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    constraints = env / "constraints.txt"
    constraints.write_text(f"torch=={wanted['torch']}\n")
    subprocess.run([*pip, f"torch=={wanted['torch']}"], check=True)
    if packages:
        subprocess.run([*pip, "-c", str(constraints), *packages], check=True)
    if no_deps:
        subprocess.run([*pip, "--no-deps", *no_deps], check=True)
    stamp.write_text(json.dumps(wanted))
    return str(python)


def child_env(**extra: str) -> dict:
    """This environment plus ``extra`` for a benchmark's children, with the bytecode cache on.

    A shell with PYTHONDONTWRITEBYTECODE set (the development machine has it) makes every apr
    child compile apr's own modules again, about 0.1 s a run, which an installed apr never does;
    peers run from site-packages, whose .pyc files pip wrote at install."""
    env = dict(os.environ, **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def measure(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Run ``cmd``; its stdout, wall seconds, CPU seconds and peak RSS bytes. A failure stops the
    benchmark with the command's stderr."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=child_env() if env is None else env,
                                cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, so its rusage is the child's own
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
    return {"stdout": stdout, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss": usage.ru_maxrss * 1024}


def ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None
