"""apr_core.runtime.startup and .shutdown: torch is imported with the collector paused, then
frozen, and the collector is left as it was; bitsandbytes' import chatter stays off a command's
stderr; a finished command ends without the interpreter's teardown but with everything else."""

import os
import subprocess
import sys

import pytest

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


# What bitsandbytes' CPU backend does on import on a CPU with AVX512-BF16 (CI machines have it, so
# every user error of `apr finetune` came with this warning as its first stderr line).
KERNEL_HUB = """
import contextlib, logging, sys
from apr_core.runtime.startup import quiet_bitsandbytes
from kernels import get_kernel
with (quiet_bitsandbytes() if sys.argv[1] == "quiet" else contextlib.nullcontext()):
    try:
        get_kernel("kernels-community/quantization-bitsandbytes", version=1)
    except Exception:
        pass
    logging.getLogger("bitsandbytes").warning("bitsandbytes chatter")
print(logging.getLogger("kernels").level, logging.getLogger("bitsandbytes").level)
"""


@pytest.mark.parametrize("mode", ["quiet", "loud"])
def test_bitsandbytes_and_kernel_hub_warnings_are_silenced_inside_the_block(mode):
    pytest.importorskip("kernels")
    proc = subprocess.run([sys.executable, "-c", KERNEL_HUB, mode], capture_output=True, text=True, check=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.stdout.split() == ["0", "0"]  # the loggers' own levels are back after the block
    if mode == "quiet":
        assert proc.stderr == ""
    else:  # without the block both reach stderr: what the quiet case is silencing is real
        assert "publisher trust" in proc.stderr and "bitsandbytes chatter" in proc.stderr


EXIT_NOW = """
import atexit, sys, threading, time
from apr_core.runtime.shutdown import exit_now

class Teardown:
    def __del__(self):
        print("module teardown ran", flush=True)

keep = Teardown()  # a module global: only the interpreter's teardown deletes it
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished", flush=True))).start()
print("buffered", end="")
sys.stderr.write("err buffered")
exit_now(3)
print("after exit_now")
"""


def test_exit_now_joins_threads_runs_atexit_and_flushes_but_skips_the_teardown():
    proc = subprocess.run([sys.executable, "-c", EXIT_NOW], capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stdout.split("\n")[:3] == ["bufferedthread finished", "atexit ran", ""]
    assert "module teardown ran" not in proc.stdout and proc.stderr == "err buffered"


def test_only_the_processs_own_command_line_skips_the_teardown():
    """`main(args)` in-process raises SystemExit as before; `main()` from the command line ends
    the process with the command's code."""
    code = ("import sys\nfrom apr_core.cli import main\n"
            "try:\n    main(['inspect', '/no/such.apr'])\nexcept SystemExit as e:\n    print('SystemExit', e.code)\n"
            "sys.argv = ['apr', 'inspect', '/no/such.apr']\nmain()\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["SystemExit", "2"] and proc.returncode == 2
    assert proc.stderr.count("apr: error:") == 2
