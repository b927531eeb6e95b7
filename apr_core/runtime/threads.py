"""How many CPU threads torch computes with, and how idle threads wait: chosen by apr.

Two measurements on the shared 2-core machine apr is developed on (docs/performance.md) set
these rules. torch's OpenMP pool busy-waits between parallel regions by default; when another
process holds a core, the spinning thread steals the time slices the working one needs and a
SmolLM2 forward pass took 4-5x longer with two threads than with one. Passive waiting
(``OMP_WAIT_POLICY=PASSIVE``) removes that cliff at no measurable cost when the machine is idle,
so apr sets it for itself and its children unless the user chose a policy. And a thread per
*idle* core beats a thread per core when the machine is busy, so ``auto`` samples the CPU time
other processes use over a short window (from ``/proc/stat``) and gives torch the cores left
over, at least one.

The count comes from ``apr --threads N``, else ``APR_THREADS``, else ``OMP_NUM_THREADS`` (a
user's explicit choice is kept), else ``auto``. It is applied before torch starts its pool
(through ``OMP_NUM_THREADS``, which subprocesses inherit) and to a torch already imported.
"""

from __future__ import annotations

import os
import sys
import time

from ..errors import AprError

ENV = "APR_THREADS"
SOURCE_ENV = "APR_THREADS_SOURCE"  # "auto" when an apr process chose OMP_NUM_THREADS itself
SAMPLE_SECONDS = 0.05


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


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields)
    return total - idle, total


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of the machine's cores other processes keep busy, averaged over ``seconds``
    (this process sleeps meanwhile); 0 where /proc/stat is unavailable."""
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0.0
    busy, total = second[0] - first[0], second[1] - first[1]
    return busy / total * (os.cpu_count() or 1)


def auto_threads(cores: int | None = None, busy: float | None = None) -> int:
    """One thread per core this process may use that other processes leave idle, at least one."""
    cores = usable_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, round(cores - busy)))


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
    apr parent chose automatically is measured again (the load has moved since); processes
    started by torchrun share the cores evenly (their siblings are busy by design)."""
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
