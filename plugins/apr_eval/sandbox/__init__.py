"""Run untrusted, model-written programs: one isolated sample at a time per slot, verdict by the parent.

Isolation backends, best first:

* ``bwrap`` — Debian's bubblewrap: new mount, PID, network, IPC and UTS namespaces (and a user
  namespace when apr is not root), a root holding only read-only system and interpreter
  directories, ``--die-with-parent``.
* ``namespaces`` — the same layout built by `nslaunch` with unshare/mount/pivot_root directly,
  for machines without bubblewrap.
* ``none`` — plain processes in their own process group, with the same rlimits, cgroup and
  wall-clock kill but no filesystem, network or process-tree isolation. Used only when the caller
  passes the louder ``--unsafe-no-isolation`` flag (and as the benchmark baseline).

In both isolating backends PID 1 of the sample's PID namespace is the trusted `driver`, which
never runs untrusted code and cannot be signalled, traced or outlived by it; the sample's code
runs in the driver's children under unprivileged uids. When a sample ends (it finished, or the
parent's wall clock ran out) the parent SIGKILLs that PID 1 through a pidfd and waits for the
launcher to see it gone; the kernel kills every process of the namespace first, so nothing the
sample started (``setsid``, a cleared parent-death signal, double forks) is left when `run`
returns. Where a cgroup hierarchy is writable (`cgroup`), each sample also gets its own group
holding memory and process limits for the sample as a whole, which is emptied and removed at the
end. The scratch dir (``/sandbox``, also ``/tmp``) and ``/dev/shm`` are size-capped tmpfs inside
the mount namespace, so a sample cannot fill the host's disk.

The verdict: a plain program (a string) runs whole in one process and passes if it returned
normally (the driver's pipe heard so, and the parent got the driver's nonce); a `RefereedProgram`
has its tests run by a referee process under another uid, which calls the function under test in
the candidate process with plain values only (`wire`), so nothing the model's code does to its own
interpreter reaches the tests or the verdict. `open_sandbox` runs a self-test before the first
sample.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.py"
NSLAUNCH = HERE / "nslaunch.py"
SANDBOX_DIR = "/sandbox"
HARNESS_DIR = "/harness"  # read-only view of this package's directory inside the sandbox
BASE_UID = 61000  # unprivileged uids, two per parallel slot (candidate, referee), when apr runs as root
MODES = ("bwrap", "namespaces", "none")
HARNESS_TASKS = 2  # the driver and the referee, on top of --nproc, in a sample's pids.max
DRIVER_GRACE_S = 5.0  # the driver's own deadline, past the parent's wall clock (a backstop)


@dataclass(frozen=True)
class Limits:
    """Per-sample limits. ``cpu_s`` defaults to the wall-clock timeout rounded up, plus one.

    ``memory_mb`` bounds each process's address space (rlimit) and, with a cgroup, the memory of
    the sample as a whole; ``nproc`` bounds processes per uid (rlimit) and, with a cgroup, the
    sample's tasks (plus the harness's own two); ``tmp_mb`` caps each of the tmpfs ``/sandbox``
    and ``/dev/shm``; ``file_mb`` caps any one file written, the captured output included.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    nproc: int = 32
    nofile: int = 64
    file_mb: int = 16
    tmp_mb: int = 64

    def cpu(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.timeout_s + 0.999) + 1


@dataclass(frozen=True)
class RefereedProgram:
    """A function under test and its tests, run in separate processes (see `driver`).

    ``candidate`` is the model's module (for HumanEval, prompt + completion); ``context`` is
    trusted code the tests run after (the prompt: imports and helpers the tests use); ``tests``
    is trusted code that calls ``entry`` (``def check(candidate): ...`` then ``check(entry)``).
    In the referee ``entry`` is bound to a stub that calls the candidate's function remotely.
    """

    candidate: str
    context: str
    tests: str
    entry: str


Program = Union[str, RefereedProgram]


@dataclass
class Verdict:
    """What the parent decided about one program: passed, failed, timeout or error."""

    status: str
    detail: str = ""
    seconds: float = 0.0
    exit_code: int | None = None
    output: str = field(default="", repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _interpreter() -> tuple[str, str]:
    """The real (non-venv) interpreter and the prefix that holds its standard library."""
    exe = os.path.realpath(sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _system_dirs() -> tuple[list[tuple[str, str]], list[str]]:
    """(symlinks to recreate, directories to bind read-only) for the sandbox root."""
    links, binds = [], ["/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            links.append((d, os.readlink(d)))
        elif os.path.isdir(d):
            binds.append(d)
    for f in ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group"):
        if os.path.exists(f):
            binds.append(f)
    return links, binds


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _memfd(name: str, data: bytes) -> int:
    """An anonymous file holding ``data``, positioned at its start (handed to the driver)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Sandbox:
    """Runs programs in isolated processes; ``run_many`` spreads them over ``workers`` slots."""

    def __init__(self, mode: str, limits: Limits | None = None, workers: int | None = None,
                 workdir: str | None = None):
        from .cgroup import Cgroups, Unavailable
        from .stale import own_name, sweep_workdirs

        if mode not in MODES:
            raise ValueError(f"unknown sandbox mode {mode!r}")
        self.mode = mode
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.is_root = os.geteuid() == 0
        self.exe, self.prefix = _interpreter()
        sweep_workdirs(workdir or tempfile.gettempdir())
        self._base = tempfile.mkdtemp(prefix=own_name(), dir=workdir)
        os.chmod(self._base, 0o711)
        self._slots: list[int] = list(range(self.workers))
        self._lock = threading.Lock()
        try:
            self.cgroups = Cgroups.open()
            self.cgroup_status = self.cgroups.describe(self.limits.memory_mb, self._pids_max())
        except Unavailable as exc:
            self.cgroups = None
            self.cgroup_status = (f"unavailable ({exc}); per-process rlimits only, so a sample's "
                                  f"processes together can exceed --memory-mb")

    def _pids_max(self) -> int:
        return self.limits.nproc + HARNESS_TASKS

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()
            self.cgroups = None
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ running
    def run_many(self, programs: Iterable[Program]) -> list[Verdict]:
        programs = list(programs)
        if self.workers == 1 or len(programs) <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, programs))

    def run(self, program: Program) -> Verdict:
        with self._lock:
            slot = self._slots.pop()
        try:
            return self._run(program, slot)
        finally:
            with self._lock:
                self._slots.append(slot)

    def uids(self, slot: int) -> tuple[int, int] | None:
        """(candidate, referee) uids of a slot when apr is root and the backend isolates; else None."""
        if not self.is_root or self.mode == "none":
            return None
        return BASE_UID + 2 * slot, BASE_UID + 2 * slot + 1

    def _job(self, program: Program, slot: int, group) -> tuple[dict, dict]:
        """(what the sample's code may see, what only the driver and referee may see)."""
        lim = self.limits
        job = {"uids": self.uids(slot), "deadline_s": lim.timeout_s + DRIVER_GRACE_S,
               "cgroup_fds": list(group.fds) if group else [],
               "limits": {"RLIMIT_CPU": lim.cpu(), "RLIMIT_AS": lim.memory_mb << 20, "RLIMIT_NPROC": lim.nproc,
                          "RLIMIT_NOFILE": lim.nofile, "RLIMIT_FSIZE": lim.file_mb << 20}}
        secret = {"nonce": secrets.token_hex(16)}
        if isinstance(program, RefereedProgram):
            job.update(entry=program.entry, candidate=program.candidate)
            secret.update(context=program.context, tests=program.tests)
        else:
            job.update(entry=None, program=program)
        return job, secret

    def _run(self, program: Program, slot: int) -> Verdict:
        lim = self.limits
        work = Path(tempfile.mkdtemp(prefix="s", dir=self._base))
        out_path = work / "output"
        group = self.cgroups.sample(lim.memory_mb << 20, self._pids_max()) if self.cgroups else None
        job, secret = self._job(program, slot, group)
        fds: dict[str, int] = {}
        proc = None
        try:
            fds["job"] = _memfd("apr-job", json.dumps(job).encode())
            fds["secret"] = _memfd("apr-secret", json.dumps(secret).encode())
            fds["verdict_r"], fds["verdict_w"] = os.pipe()
            if self.mode != "none":
                fds["info_r"], fds["info_w"] = os.pipe()
            driver = str(DRIVER) if self.mode == "none" else f"{HARNESS_DIR}/{DRIVER.name}"
            argv = [self.exe, "-I", driver, str(fds["job"]), str(fds["secret"]), str(fds["verdict_w"])]
            child_fds = [fds["job"], fds["secret"], fds["verdict_w"], *(group.fds if group else [])]
            if self.mode == "none":
                scratch = work / "scratch"
                scratch.mkdir()
                home, cwd, cmd = str(scratch), str(scratch), argv
            else:
                home, cwd = SANDBOX_DIR, "/"
                child_fds.append(fds["info_w"])
                cmd = (self._bwrap_command(argv, fds["info_w"]) if self.mode == "bwrap" else
                       self._ns_command(argv, work, child_fds, fds["info_w"]))
            env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
                   "PYTHONDONTWRITEBYTECODE": "1"}
            start = time.perf_counter()
            with open(out_path, "wb") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        pass_fds=tuple(child_fds), start_new_session=True, env=env, cwd=cwd)
            for name in ("job", "secret", "verdict_w", "info_w"):
                if name in fds:
                    os.close(fds.pop(name))
            if group:
                group.close_fds()
            pidfd = _init_pidfd(fds.pop("info_r"), proc, start + lim.timeout_s) if "info_r" in fds else None
            timed_out = not _exited(proc, max(0.0, lim.timeout_s - (time.perf_counter() - start)))
            code = _end_sample(proc, pidfd)
            proc = None
            ooms = group.finish() if group else 0
            seconds = time.perf_counter() - start
            report = _read_report(fds["verdict_r"])
            output = _head_tail(out_path)
        finally:
            if proc is not None:  # an exception between start and end: still leave nothing running
                _end_sample(proc, None)
            if group:
                group.finish()
            for fd in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(work, ignore_errors=True)
        return _decide(code, timed_out, ooms, report, secret["nonce"], seconds, output, lim)

    # ------------------------------------------------------------------ backends
    def _binds(self) -> tuple[list[tuple[str, str]], list[str]]:
        links, binds = _system_dirs()
        if not any(self.prefix == d or self.prefix.startswith(d + "/") for d in binds):
            binds.append(self.prefix)
        return links, binds

    def _bwrap_command(self, argv: list[str], info_fd: int) -> list[str]:
        links, binds = self._binds()
        cmd = [bwrap_path() or "bwrap", "--die-with-parent", "--new-session", "--hostname", "sandbox",
               "--as-pid-1", "--info-fd", str(info_fd)]
        if self.is_root:
            # Privileged bwrap: no user namespace; the driver keeps only CAP_SETUID/CAP_SETGID,
            # to give its children their unprivileged uids.
            cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                    "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID",
                    "--cap-add", "CAP_SETGID"]
        else:
            cmd += ["--unshare-all"]
        for link, target in links:
            cmd += ["--symlink", target, link]
        made = {"/"}
        for d in binds:
            for parent in reversed(Path(d).parents):  # traversable by the unprivileged uid
                if str(parent) not in made and not any(str(parent) == b for b in binds):
                    made.add(str(parent))
                    cmd += ["--perms", "0755", "--dir", str(parent)]
            cmd += ["--ro-bind", d, d]
        tmp = str(self.limits.tmp_mb << 20)
        cmd += ["--ro-bind", str(HERE), HARNESS_DIR,
                "--perms", "1777", "--size", tmp, "--tmpfs", SANDBOX_DIR, "--symlink", SANDBOX_DIR, "/tmp",
                "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", tmp, "--tmpfs", "/dev/shm",
                "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SANDBOX_DIR, "--"]
        return cmd + argv

    def _ns_command(self, argv, work: Path, keep: list[int], info_fd: int) -> list[str]:
        links, binds = self._binds()
        root = work / "root"
        root.mkdir()
        spec = {"root": str(root), "symlinks": links,
                "ro_binds": [(d, d) for d in binds] + [(str(HERE), HARNESS_DIR)],
                "scratch_dst": SANDBOX_DIR, "tmp_bytes": self.limits.tmp_mb << 20,
                "keep_fds": [fd for fd in keep if fd != info_fd], "info_fd": info_fd,
                "parent_pid": os.getpid(), "argv": argv,
                "env": {"PATH": "/usr/bin:/bin", "HOME": SANDBOX_DIR, "TMPDIR": SANDBOX_DIR, "LANG": "C.UTF-8",
                        "PYTHONDONTWRITEBYTECODE": "1"}}
        return [self.exe, "-I", "-S", str(NSLAUNCH), json.dumps(spec)]


def _init_pidfd(info_fd: int, proc: subprocess.Popen, deadline: float) -> int | None:
    """A pidfd for the sample's PID 1, from the launcher's ``{"child-pid": N}`` (bwrap's --info-fd).

    The pid is checked to be the launcher's child after the pidfd is open, so a recycled pid can
    never be signalled. None if the launcher ended (or the wall clock ran out) before saying.
    """
    data = b""
    try:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not select.select([info_fd], [], [], remaining)[0]:
                return None
            chunk = os.read(info_fd, 4096)
            if not chunk:
                break
            data += chunk
            try:
                json.loads(data)
                break
            except ValueError:
                continue
    finally:
        os.close(info_fd)
    try:
        pid = int(json.loads(data)["child-pid"])
        pidfd = os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        ppid = -1
    if ppid != proc.pid:
        os.close(pidfd)
        return None
    return pidfd


def _end_sample(proc: subprocess.Popen, pidfd: int | None) -> int:
    """Kill the sample's PID 1 (so the kernel kills its whole namespace), wait for the launcher to
    see it gone, then kill the launcher's process group; returns the launcher's exit status."""
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
        # the launcher exits once PID 1 is reaped, which is after every process of the namespace
        _exited(proc, 10.0)
    _kill_group(proc.pid)
    return proc.wait()


def _exited(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``proc`` to exit, woken by a pidfd (Popen.wait(timeout) polls
    with sleeps of up to 50 ms, which would cost each sample that much)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # a kernel without pidfds (before 5.3)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _read_report(fd: int) -> dict:
    data = _read_nonblocking(fd, 1 << 16)
    try:
        report = json.loads(data) if data else {}
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def _decide(code: int, timed_out: bool, ooms: int, report: dict, nonce: str, seconds: float, output: str,
            lim: Limits) -> Verdict:
    if timed_out or report.get("timeout") is True:
        return Verdict("timeout", f"killed after {lim.timeout_s:g}s wall clock", seconds, None, output)
    echoed = isinstance(report.get("nonce"), str) and secrets.compare_digest(report["nonce"], nonce)
    if code == 0 and echoed and report.get("passed") is True:
        return Verdict("passed", "", seconds, code, output)
    if code == 125 and "sandbox setup failed" in output:
        return Verdict("error", output.strip().splitlines()[-1], seconds, code, output)
    if ooms:
        return Verdict("failed", f"killed: the sample exceeded its memory limit ({lim.memory_mb} MiB for all "
                       f"its processes together)", seconds, code, output)
    detail = report.get("detail") if isinstance(report.get("detail"), str) else ""
    worker = report.get("exit") if isinstance(report.get("exit"), int) else code  # the program's own status
    return Verdict("failed", detail or _failure_detail(worker, output), seconds, worker, output)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_nonblocking(fd: int, size: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return b""


OUTPUT_KEEP = 4096


def _head_tail(path: Path) -> str:
    """The first and last few KB of the program's output (the file itself is capped by RLIMIT_FSIZE)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= 2 * OUTPUT_KEEP:
            data = f.read()
        else:
            head = f.read(OUTPUT_KEEP)
            f.seek(size - OUTPUT_KEEP)
            data = head + b"\n...\n" + f.read()
    return data.decode("utf-8", "replace")


def _failure_detail(code: int | None, output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by {name}" + (f": {lines[-1][:200]}" if lines else "")
    return (lines[-1][:300] if lines else f"exit code {code}")


def available_modes() -> list[str]:
    """Isolating backends that can start here (cheap probes, no self-test)."""
    found = []
    if bwrap_path() and _probe([bwrap_path(), "--unshare-all", "--die-with-parent", "--as-pid-1", "--ro-bind", "/", "/",
                                "--perms", "1777", "--size", "1048576", "--tmpfs", "/tmp", "true"]):  # bwrap >= 0.8
        found.append("bwrap")
    if sys.platform.startswith("linux") and _probe(["unshare", "--net", "--mount", "--pid", "--fork", "true"]
                                                    if os.geteuid() == 0 else
                                                    ["unshare", "--user", "--map-root-user", "--net", "--mount",
                                                     "--pid", "--fork", "true"]):
        found.append("namespaces")
    return found


def _probe(cmd: list[str]) -> bool:
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        return False
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def open_sandbox(isolation: str = "auto", unsafe_no_isolation: bool = False, limits: Limits | None = None,
                 workers: int | None = None, log=None) -> Sandbox:
    """The best (or the requested) isolating sandbox, self-tested; refuses rather than run unisolated.

    ``isolation`` is ``auto``, ``bwrap``, ``namespaces`` or ``none``; ``none``, and falling back
    to it when no isolation works here, both need ``unsafe_no_isolation``.
    """
    from apr_core.errors import AprError

    from .selftest import SandboxError, self_test

    if isolation == "none":
        if not unsafe_no_isolation:
            raise AprError("--isolation none runs model code unisolated; add --unsafe-no-isolation to insist")
        candidates = ["none"]
    else:
        found = available_modes()
        candidates = found if isolation == "auto" else [isolation] if isolation in found else []
        if not candidates:
            need = ("bubblewrap (apt-get install bubblewrap)" if isolation == "bwrap" else
                    "Linux namespaces (root or unprivileged user namespaces)" if isolation == "namespaces" else
                    "bubblewrap (apt-get install bubblewrap) or Linux namespaces")
            if not unsafe_no_isolation or isolation != "auto":
                raise AprError(f"cannot isolate generated code here: needs {need}; refusing to run it "
                               f"(--unsafe-no-isolation runs it as a plain subprocess)")
            candidates = ["none"]
            if log:
                log("WARNING: no sandbox available; running generated code UNISOLATED (--unsafe-no-isolation)")
    errors = []
    for mode in candidates:
        sandbox = Sandbox(mode, limits, workers)
        try:
            checks = self_test(sandbox)
        except SandboxError as exc:
            sandbox.close()
            errors.append(str(exc))
            continue
        sandbox.checks = checks
        if log:
            log(f"sandbox: {mode}, self-test passed ({', '.join(f'{k}: {v}' for k, v in checks.items())})")
        return sandbox
    raise AprError(f"refusing to run generated code: {'; '.join(errors)}")
