"""apr_core.runtime.startup: torch is imported with the collector paused, then frozen, and the
collector is left as it was."""

import subprocess
import sys

CODE = """
import gc, sys
from apr_core.runtime.startup import import_torch
torch = import_torch()
assert torch is sys.modules["torch"]
print(gc.isenabled(), gc.get_freeze_count())
"""


def test_import_torch_freezes_the_import_and_restores_the_collector():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert int(out[1]) > 50_000  # torch's module-level objects sit in the permanent generation
