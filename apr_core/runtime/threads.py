"""How many CPU threads torch computes with, and how idle threads wait: chosen by apr.

torch's OpenMP pool busy-waits between parallel regions by default. When another process holds
a core, the spinning thread takes the time slices the working one needs: on the shared 2-core
machine apr is developed on, a SmolLM2 forward pass ran 5.7x slower with two spinning threads
than with two passive ones, and decoding up to 12x slower (benchmarks/threads.py, docs/performance.md).
With passive waiting (``OMP_WAIT_POLICY=PASSIVE``) two threads were as fast as or faster than one
in the configurations measured, so apr sets that policy for itself and its
children unless the user chose one, and ``auto`` gives torch one thread per core the process
may run on (its CPU affinity); processes started together by torchrun share those cores evenly.

The count comes from ``apr --threads N``, else ``APR_THREADS``, else ``OMP_NUM_THREADS`` (a
user's explicit choice is kept), else ``auto``. It is applied before torch starts its pool
(through ``OMP_NUM_THREADS``, which subprocesses inherit) and to a torch already imported.
"""

from __future__ import annotations

import os
import sys

from ..errors import AprError

ENV = "APR_THREADS"
SOURCE_ENV = "APR_THREADS_SOURCE"  # "auto" when an apr process chose OMP_NUM_THREADS itself


def prepare_environment(environ=os.environ) -> None:
    """Make OpenMP threads sleep instead of spinning while they wait (unless the user chose);
    must run before torch is imported to reach the pool."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None) -> int:
    """One thread per core this process may use."""
    return max(1, usable_cores() if cores is None else cores)


def parse(spec: str | int | None, source: str) -> int | None:
    """A thread count from ``spec`` (``auto``/empty -> None), one line for anything else."""
    if spec is None or str(spec).strip().lower() in ("", "auto"):
        return None
    try:
        value = int(str(spec).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise AprError(f"{source} {spec!r} is not a positive number of threads or 'auto'")
    return value


def choose(spec: str | int | None = None, environ=os.environ) -> tuple[int, str]:
    """The thread count for this run and where it came from. An ``OMP_NUM_THREADS`` that an
    apr parent chose automatically is chosen again here (a process started by torchrun gets its
    share of the cores, not its parent's count)."""
    inherited = environ.get("OMP_NUM_THREADS") if environ.get(SOURCE_ENV) != "auto" else None
    for value, source in ((spec, "--threads"), (environ.get(ENV), ENV), (inherited, "OMP_NUM_THREADS")):
        if value is None or not str(value).strip():
            continue
        n = parse(value, source)
        if n is not None:
            return n, source
        break  # an explicit "auto" wins over a lower-priority number
    local = environ.get("LOCAL_WORLD_SIZE")
    if local and local.isdigit() and int(local) > 1:
        return max(1, usable_cores() // int(local)), "auto"
    return auto_threads(), "auto"


def apply(n: int, source: str = "auto", environ=os.environ) -> None:
    """Use ``n`` intra-op threads here and in the processes this one starts."""
    environ["OMP_NUM_THREADS"] = str(n)
    environ[SOURCE_ENV] = source
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)


def configure(spec: str | int | None = None) -> tuple[int, str]:
    """Choose and apply the thread count; returns (threads, source)."""
    n, source = choose(spec)
    apply(n, source)
    return n, source


def resume_with(saved: int | None, log=None, environ=os.environ) -> None:
    """A resumed training run computes with the thread count it was checkpointed with when apr
    chose the count (reductions split across another number of threads round differently, and a
    resumed run must end with the same weights); a count the user chose is kept."""
    if not saved or environ.get(SOURCE_ENV, "auto") != "auto":
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != int(saved):
        if log is not None:
            log(f"resuming with the checkpoint's {saved} thread(s)")
        apply(int(saved), "auto", environ)
