"""Small helpers shared by test modules."""

from conftest import run_apr  # noqa: F401  (re-exported for test modules)


def one_error_line(proc) -> str:
    """Assert the CLI failed like a user error should: exit 2, exactly one stderr line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    assert lines[0].startswith("apr: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]
