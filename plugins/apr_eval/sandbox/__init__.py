"""Run untrusted, model-written programs: one isolated process per sample, verdict by the parent.

Isolation backends, best first:

* ``bwrap`` — Debian's bubblewrap: new user, mount, PID, network, IPC and UTS namespaces, a root
  holding only read-only system and interpreter directories, a private writable scratch dir,
  ``--die-with-parent``. Run as an unprivileged uid when apr is root.
* ``namespaces`` — the same layout built by `nslaunch` with unshare/mount/pivot_root directly,
  for machines without bubblewrap.
* ``none`` — a plain subprocess in its own process group, with the same rlimits and wall-clock
  kill but no filesystem, network or process-tree isolation. Used only when the caller passes the
  louder ``--unsafe-no-isolation`` flag (and as the benchmark baseline).

Whatever the backend, the parent kills the process group on its own wall clock, the driver lowers
CPU/memory/process/file rlimits before the program runs, output goes to a size-capped file, and a
sample passes only if it exits 0 *and* echoes a per-run secret nonce on a private pipe after the
program finished (see `driver`). `open_sandbox` runs a self-test before the first sample.
"""

from __future__ import annotations

import os
import secrets
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
from typing import Iterable

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.py"
NSLAUNCH = HERE / "nslaunch.py"
SANDBOX_DIR = "/sandbox"
BASE_UID = 61000  # unprivileged uids (one per parallel slot) used when apr runs as root
MODES = ("bwrap", "namespaces", "none")


@dataclass(frozen=True)
class Limits:
    """Per-sample limits. ``cpu_s`` defaults to the wall-clock timeout rounded up, plus one."""

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    nproc: int = 32
    nofile: int = 64
    file_mb: int = 16
    tmp_mb: int = 64

    def cpu(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.timeout_s + 0.999) + 1


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


class Sandbox:
    """Runs programs in isolated processes; ``run_many`` spreads them over ``workers`` slots."""

    def __init__(self, mode: str, limits: Limits | None = None, workers: int | None = None,
                 workdir: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown sandbox mode {mode!r}")
        self.mode = mode
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.is_root = os.geteuid() == 0
        self.exe, self.prefix = _interpreter()
        self._base = tempfile.mkdtemp(prefix="apr-sandbox-", dir=workdir)
        os.chmod(self._base, 0o711)
        self._slots: list[int] = list(range(self.workers))
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ running
    def run_many(self, programs: Iterable[str]) -> list[Verdict]:
        programs = list(programs)
        if self.workers == 1 or len(programs) <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, programs))

    def run(self, program: str) -> Verdict:
        with self._lock:
            slot = self._slots.pop()
        try:
            return self._run(program, slot)
        finally:
            with self._lock:
                self._slots.append(slot)

    def _uid(self, slot: int) -> int | None:
        return BASE_UID + slot if self.is_root else None

    def _run(self, program: str, slot: int) -> Verdict:
        uid = self._uid(slot)
        work = Path(tempfile.mkdtemp(prefix="s", dir=self._base))
        scratch = work / "scratch"
        scratch.mkdir()
        (scratch / "program.py").write_text(program, encoding="utf-8")
        shutil.copyfile(DRIVER, scratch / "driver.py")
        if uid is not None and self.mode != "none":
            for p in (scratch, scratch / "program.py", scratch / "driver.py"):
                os.chown(p, uid, uid)
        out_path = work / "output"
        nonce = secrets.token_hex(16).encode()
        nonce_r, nonce_w = os.pipe()
        os.write(nonce_w, nonce)  # buffered in the pipe before the child exists: no SIGPIPE race
        os.close(nonce_w)
        nonce_w = -1
        verdict_r, verdict_w = os.pipe()
        scratch_in = SANDBOX_DIR if self.mode != "none" else str(scratch)
        lim = self.limits
        argv = [self.exe, "-I", f"{scratch_in}/driver.py", f"{scratch_in}/program.py", str(nonce_r),
                str(verdict_w), str(lim.cpu()), str(lim.memory_mb << 20), str(lim.nproc),
                str(lim.nofile), str(lim.file_mb << 20),
                str(uid) if uid is not None and self.mode == "bwrap" else "-"]
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch_in, "TMPDIR": "/tmp" if self.mode != "none"
               else str(scratch), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            if self.mode == "bwrap":
                cmd = self._bwrap_command(argv, scratch)
            elif self.mode == "namespaces":
                cmd = self._ns_command(argv, scratch, work, uid, (nonce_r, verdict_w))
            else:
                cmd = argv
            start = time.perf_counter()
            with open(out_path, "wb") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        pass_fds=(nonce_r, verdict_w), start_new_session=True,
                                        env=env, cwd=str(scratch) if self.mode == "none" else "/")
            for fd in (nonce_r, verdict_w):
                os.close(fd)
            nonce_r = verdict_w = -1
            timed_out = False
            try:
                code = proc.wait(timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)
            code = proc.wait()
            seconds = time.perf_counter() - start
            echoed = _read_nonblocking(verdict_r)
            output = _head_tail(out_path)
        finally:
            for fd in (nonce_r, nonce_w, verdict_w, verdict_r):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            shutil.rmtree(work, ignore_errors=True)
        if timed_out:
            return Verdict("timeout", f"killed after {lim.timeout_s:g}s wall clock", seconds, None, output)
        if code == 0 and secrets.compare_digest(echoed, nonce):
            return Verdict("passed", "", seconds, code, output)
        if code == 125 and "sandbox setup failed" in output:
            return Verdict("error", output.strip().splitlines()[-1], seconds, code, output)
        return Verdict("failed", _failure_detail(code, output, echoed == nonce), seconds, code, output)

    # ------------------------------------------------------------------ backends
    def _bwrap_command(self, argv: list[str], scratch: Path) -> list[str]:
        links, binds = _system_dirs()
        if not any(self.prefix == d or self.prefix.startswith(d + "/") for d in binds):
            binds.append(self.prefix)
        cmd = [bwrap_path() or "bwrap", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if self.is_root:
            # Privileged bwrap: no user namespace; the driver keeps only CAP_SETUID/CAP_SETGID
            # long enough to become the slot's unprivileged uid before the program runs.
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
        cmd += ["--bind", str(scratch), SANDBOX_DIR, "--proc", "/proc", "--dev", "/dev",
                "--size", str(self.limits.tmp_mb << 20), "--tmpfs", "/tmp", "--remount-ro", "/",
                "--chdir", SANDBOX_DIR, "--"]
        return cmd + argv

    def _ns_command(self, argv, scratch: Path, work: Path, uid, keep) -> list[str]:
        import json

        links, binds = _system_dirs()
        if not any(self.prefix == d or self.prefix.startswith(d + "/") for d in binds):
            binds.append(self.prefix)
        root = work / "root"
        root.mkdir()
        spec = {"root": str(root), "symlinks": links, "ro_binds": [(d, d) for d in binds],
                "scratch": str(scratch), "scratch_dst": SANDBOX_DIR, "tmp_bytes": self.limits.tmp_mb << 20,
                "uid": uid, "gid": uid, "keep_fds": list(keep), "argv": argv,
                "env": {"PATH": "/usr/bin:/bin", "HOME": SANDBOX_DIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
                        "PYTHONDONTWRITEBYTECODE": "1"}}
        return [self.exe, "-I", "-S", str(NSLAUNCH), json.dumps(spec)]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_nonblocking(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
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


def _failure_detail(code: int | None, output: str, echoed: bool) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by {name}" + (f": {lines[-1][:200]}" if lines else "")
    if code == 0 and not echoed:
        return "exited 0 before the tests finished"
    return (lines[-1][:300] if lines else f"exit code {code}")


def available_modes() -> list[str]:
    """Isolating backends that can start here (cheap probes, no self-test)."""
    found = []
    if bwrap_path() and _probe([bwrap_path(), "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"]):
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
