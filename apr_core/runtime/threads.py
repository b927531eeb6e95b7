"""How many CPU threads torch computes with, and how idle threads wait: chosen by apr.

torch's OpenMP pool (libgomp) busy-waits between parallel regions by default, for a while,
before it sleeps. When another process holds a core, the spinning thread takes the time slices
the working one needs: on the shared 2-core machine apr is developed on, a SmolLM2 forward pass
ran 1.5-5.7x slower with two spinning threads than with two passive ones, and decoding 2-12x
slower (benchmarks/threads.py --busy 1, docs/performance.md). On an idle machine the spinning
pays: a LoRA training step ran 12-18% faster with spinning threads than with passive ones, and
inference about as fast. So at start-up apr looks at what the other processes are doing: when
they used at least half a core of this process's cores over a short sample, it sets
``OMP_WAIT_POLICY=PASSIVE``; otherwise it leaves libgomp's default. A policy the user set is
kept, and apr's choice is passed to the processes it starts (``APR_WAIT_POLICY``: ``passive`` or
``default``), so torchrun's workers don't sample each other's start-up. ``auto`` threads gives
torch one thread per core the process may run on (its CPU affinity); processes started
together by torchrun share those cores evenly.

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
POLICY_ENV = "APR_WAIT_POLICY"  # the wait policy an apr parent chose: "passive" or "default"
BUSY_CORES = 0.5  # other processes' use of our cores, in cores, from which threads wait passively
SAMPLE_SECONDS = 0.05


def prepare_environment(environ=os.environ, busy=None) -> str:
    """Choose how OpenMP threads wait (module docstring); must run before torch is imported to
    reach the pool. Returns the choice: "user", "passive" or "default". ``busy`` (for tests)
    replaces the measurement of the other processes' load."""
    if "OMP_WAIT_POLICY" in environ and environ.get(POLICY_ENV) != "passive":
        return "user"
    choice = environ.get(POLICY_ENV)
    if choice not in ("passive", "default"):
        if busy is None and _env_threads(environ) == 1:
            busy = 0.0  # one thread has nobody to wait for: no need to sample
        load = others_busy_cores() if busy is None else busy
        choice = "passive" if load is None or load >= BUSY_CORES else "default"
    environ[POLICY_ENV] = choice
    if choice == "passive":
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return choice


def _env_threads(environ) -> int | None:
    """The thread count the environment asks for, if it is a valid number."""
    try:
        return choose(None, environ)[0]
    except AprError:
        return None


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` since boot, from /proc/stat."""
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                    continue
                ticks = [int(x) for x in fields[:8]]
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


def others_busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of this process's cores other processes kept busy over ``seconds`` while this
    one slept (None where /proc/stat is unreadable)."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    time.sleep(seconds)
    after = _cpu_times(cpus)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


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


def describe(environ=os.environ) -> dict:
    """The thread count and wait policy this process computes with (for run reports)."""
    torch = sys.modules.get("torch")
    return {"threads": torch.get_num_threads() if torch is not None else None,
            "omp_wait_policy": environ.get("OMP_WAIT_POLICY") or "default"}


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
