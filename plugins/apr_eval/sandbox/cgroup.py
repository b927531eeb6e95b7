"""Per-sample cgroups: one memory and process budget for a sample as a whole, and a sure kill.

rlimits are per process, so a sample that forks N children could use N x ``--memory-mb``. Where a
cgroup hierarchy with the ``memory`` and ``pids`` controllers is writable, each sample gets its
own group below a per-sandbox group below apr's own cgroup, with ``memory.max`` (v2; v1:
``memory.limit_in_bytes``) and ``pids.max`` set; the sample's init joins it (through descriptors
the parent opened) before it forks anything, so every process of the sample is inside. When the
sample ends, whatever is left in the group is killed (``cgroup.kill`` where the kernel has it)
and the group removed.

cgroup v2 is used when apr's cgroup can give children the controllers (its
``cgroup.subtree_control`` lists them, or accepts them); otherwise v1 hierarchies mounted with
those controllers. Where neither works, `Cgroups.open` raises `Unavailable` with the reason, and
the sandbox says so in its self-test report and keeps only the rlimits. Empty groups left behind
by a killed apr are removed on the next start (`stale`).
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import signal
import time
from dataclasses import dataclass

from .stale import own_name, sweep_cgroups

CONTROLLERS = ("memory", "pids")


class Unavailable(RuntimeError):
    """No usable cgroup hierarchy here; the message says why."""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, root inside the hierarchy, mount point, super options) of each cgroup mount."""
    found = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            paths[name] = path
    return paths


def _under(mount_root: str, mount_point: str, path: str) -> str | None:
    if mount_root != "/" and not (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        return None
    rel = path[len(mount_root):] if mount_root != "/" else path
    return os.path.join(mount_point, rel.lstrip("/"))


def _kill_all(dirs: list[str], attempts: int = 200) -> None:
    """SIGKILL every process in the groups until they are empty."""
    for d in dirs:
        if os.path.exists(os.path.join(d, "cgroup.kill")):
            try:
                _write(os.path.join(d, "cgroup.kill"), "1")
            except OSError:
                pass
    for _ in range(attempts):
        pids = set()
        for d in dirs:
            try:
                pids.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
            except (OSError, ValueError):
                pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


def _remove(dirs: list[str]) -> None:
    """rmdir each group (children first), retrying while the kernel finishes the exits."""
    for d in dirs:
        for _ in range(400):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                _kill_all([d], attempts=1)
                time.sleep(0.005)


@dataclass
class SampleGroup:
    """One sample's cgroup(s): pass `fds` to the sample's init, then `finish` when it ended."""

    version: int
    dirs: dict[str, str]   # controller -> directory (v2: the same one for both)
    fds: list[int]

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def oom_kills(self) -> int:
        d = self.dirs.get("memory")
        if d is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(d, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def finish(self) -> int:
        """Kill what is left, remove the group; returns the number of OOM kills it saw."""
        self.close_fds()
        dirs = sorted(set(self.dirs.values()))
        _kill_all(dirs)
        ooms = self.oom_kills()
        _remove(dirs)
        return ooms


class Cgroups:
    """The per-sandbox parent group(s); `sample` makes one limited group per sample."""

    def __init__(self, version: int, parents: dict[str, str]):
        self.version, self.parents = version, parents
        self.name = os.path.basename(next(iter(parents.values())))
        self._count = itertools.count(1)  # next() is atomic under the GIL: samples run in threads

    @classmethod
    def open(cls) -> "Cgroups":
        """Create this sandbox's parent group; raises `Unavailable` with the reason."""
        if not os.path.isdir("/sys/fs/cgroup"):
            raise Unavailable("no /sys/fs/cgroup")
        try:
            mounts, own = _mounts(), _own_paths()
        except OSError as exc:
            raise Unavailable(f"cannot read the cgroup setup: {exc}") from None
        name = own_name() + secrets.token_hex(4)
        reasons = []
        for fstype, root, point, _ in mounts:
            if fstype == "cgroup2" and "" in own:
                base = _under(root, point, own[""])
                if base is None:
                    continue
                try:
                    return cls(2, cls._make_v2(base, name))
                except OSError as exc:
                    reasons.append(f"cgroup v2 at {base}: {exc.strerror or exc}")
        dirs = {}
        for controller in CONTROLLERS:
            for fstype, root, point, options in mounts:
                if fstype == "cgroup" and controller in options and controller in own:
                    base = _under(root, point, own[controller])
                    if base is not None:
                        dirs[controller] = base
                        break
        if set(dirs) == set(CONTROLLERS):
            made = {}
            try:
                for controller, base in dirs.items():
                    sweep_cgroups(base)
                    path = os.path.join(base, name)
                    os.mkdir(path)
                    made[controller] = path
                return cls(1, made)
            except OSError as exc:
                _remove(list(made.values()))
                reasons.append(f"cgroup v1: {exc.strerror or exc} ({dirs[controller]})")
        elif not reasons:
            reasons.append("no cgroup hierarchy with the memory and pids controllers")
        raise Unavailable("; ".join(reasons))

    @staticmethod
    def _make_v2(base: str, name: str) -> dict[str, str]:
        enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
        if not set(CONTROLLERS) <= enabled:
            available = set(_read(os.path.join(base, "cgroup.controllers")).split())
            missing = set(CONTROLLERS) - available
            if missing:
                raise OSError(errno.ENOTSUP, f"controllers {', '.join(sorted(missing))} not available")
            try:
                _write(os.path.join(base, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))
            except OSError as exc:
                raise OSError(exc.errno, "cannot enable memory and pids for child groups (a cgroup that holds "
                              "processes cannot; start apr in a delegated cgroup)") from None
        sweep_cgroups(base)
        path = os.path.join(base, name)
        os.mkdir(path)
        try:
            _write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))
        except OSError:
            os.rmdir(path)
            raise
        return {c: path for c in CONTROLLERS}

    def describe(self, memory_mb: int, pids: int) -> str:
        return f"memory {memory_mb} MiB and {pids} tasks per sample as a whole (cgroup v{self.version})"

    def sample(self, memory_bytes: int, pids: int) -> SampleGroup:
        """A new group with the limits set and its ``cgroup.procs`` open for the init to join."""
        child = f"s{next(self._count)}"
        dirs = {c: os.path.join(p, child) for c, p in self.parents.items()}
        made: list[str] = []
        fds: list[int] = []
        try:
            for d in sorted(set(dirs.values())):
                os.mkdir(d)
                made.append(d)
            if self.version == 2:
                d = dirs["memory"]
                _write(os.path.join(d, "memory.max"), str(memory_bytes))
                for optional, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                    if os.path.exists(os.path.join(d, optional)):
                        _write(os.path.join(d, optional), value)
                _write(os.path.join(d, "pids.max"), str(pids))
            else:
                mem = dirs["memory"]
                _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
                try:  # without swap accounting this file is absent
                    _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                except OSError:
                    pass
                _write(os.path.join(dirs["pids"], "pids.max"), str(pids))
            for d in sorted(set(dirs.values())):
                fds.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            _remove(list(reversed(made)))
            raise
        return SampleGroup(self.version, dirs, fds)

    def close(self) -> None:
        dirs = sorted(set(self.parents.values()))
        for d in dirs:  # samples that were not finished (should not happen)
            try:
                children = [os.path.join(d, n) for n in os.listdir(d) if os.path.isdir(os.path.join(d, n))]
            except OSError:
                children = []
            _kill_all(children)
            _remove(children)
        _remove(dirs)
