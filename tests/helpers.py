"""Small helpers shared by test modules."""

import subprocess
import sys

from conftest import run_apr  # noqa: F401  (re-exported for test modules)


def run_without_heavy_imports(*arg_lists: list[str]) -> subprocess.CompletedProcess:
    """Run ``apr`` with each argument list in one fresh interpreter, asserting that every run exits
    0 and that none imported torch, triton, transformers or numpy; returns the process."""
    code = (
        "import sys\n"
        "from apr_core.cli import main\n"
        f"for args in {[list(a) for a in arg_lists]!r}:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "heavy = [m for m in ('torch', 'triton', 'transformers', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def one_error_line(proc) -> str:
    """Assert the CLI failed like a user error should: exit 2, exactly one stderr line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert lines[0].startswith("apr: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def run_apr_signalled_at_checkpoint(args: list[str], step: int, sig: int) -> subprocess.CompletedProcess:
    """Run ``apr ARGS`` in a child that sends itself SIG once, the moment checkpoint STEP is
    complete, so the signal lands mid-run however fast the machine (polling for the directory from
    outside raced runs that finished in a tenth of a second). Returns the finished process."""
    code = (
        "import os\n"
        "from apr_core.cli import main\n"
        "from apr_core.runtime import checkpoint\n"
        "keep, sent = checkpoint.keep_last, []\n"
        "def keep_last(workdir, n):\n"
        "    keep(workdir, n)\n"
        f"    if not sent and any(s == {int(step)} for s, _ in checkpoint.complete(workdir)):\n"
        "        sent.append(True)\n"
        f"        os.kill(os.getpid(), {int(sig)})\n"
        "checkpoint.keep_last = keep_last\n"
        f"main({list(args)!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
