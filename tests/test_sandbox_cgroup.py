"""Per-sample cgroups on fake v1 and v2 trees (the real hierarchy of this machine is exercised by
tests/test_sandbox.py): which hierarchy is chosen, which files are written, what is removed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apr_eval.sandbox import cgroup as cg
from apr_eval.sandbox import stale

CONTROL_FILES = ("cgroup.procs", "cgroup.controllers", "cgroup.subtree_control", "memory.max", "memory.events",
                 "memory.limit_in_bytes", "memory.oom_control", "pids.max")


@pytest.fixture
def fake_cgroupfs(monkeypatch, tmp_path):
    """Under tmp_path/cgroupfs, mkdir creates the control files and rmdir removes them with the
    directory, as cgroupfs does."""
    real_mkdir, real_rmdir = os.mkdir, os.rmdir
    root = tmp_path / "cgroupfs"
    real_mkdir(root)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is not None or not str(path).startswith(str(root)):  # someone else's (shutil, pytest)
            return real_mkdir(path, mode, dir_fd=dir_fd)
        real_mkdir(path, mode)
        for name in CONTROL_FILES:
            Path(path, name).write_text("")

    def rmdir(path, *, dir_fd=None):
        if dir_fd is not None or not str(path).startswith(str(root)):
            return real_rmdir(path, dir_fd=dir_fd)
        for p in Path(path).iterdir():  # control files go with their group; child groups do not
            if p.is_file():
                p.unlink()
        real_rmdir(path)

    monkeypatch.setattr(cg.os, "mkdir", mkdir)
    monkeypatch.setattr(cg.os, "rmdir", rmdir)
    return mkdir


def _tree(fake_cgroupfs, monkeypatch, tmp_path, mounts, own):
    monkeypatch.setattr(cg, "_mounts", lambda: [(t, r, str(tmp_path / "cgroupfs" / p), o) for t, r, p, o in mounts])
    monkeypatch.setattr(cg, "_own_paths", lambda: own)
    monkeypatch.setattr(cg.os.path, "isdir", lambda p: True if p == "/sys/fs/cgroup" else os.path.lexists(p)
                        and Path(p).is_dir())


def test_v2_with_delegated_controllers(fake_cgroupfs, monkeypatch, tmp_path):
    _tree(fake_cgroupfs, monkeypatch, tmp_path, [("cgroup2", "/", "unified", set())], {"": "/apr.slice"})
    base = tmp_path / "cgroupfs" / "unified" / "apr.slice"
    fake_cgroupfs(str(tmp_path / "cgroupfs" / "unified"))
    fake_cgroupfs(str(base))
    (base / "cgroup.controllers").write_text("cpu io memory pids\n")
    (base / "cgroup.subtree_control").write_text("memory pids\n")
    groups = cg.Cgroups.open()
    assert groups.version == 2 and set(groups.parents) == {"memory", "pids"}
    parent = Path(groups.parents["memory"])
    assert parent.parent == base and parent.name.startswith(stale.own_name())
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"
    sample = groups.sample(256 << 20, 34)
    d = Path(sample.dirs["memory"])
    assert (d / "memory.max").read_text() == str(256 << 20) and (d / "pids.max").read_text() == "34"
    assert len(sample.fds) == 1  # one cgroup.procs for both controllers
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert sample.finish() == 1 and not d.exists()
    groups.close()
    assert not parent.exists()
    assert "cgroup v2" in groups.describe(256, 34) and "per sample as a whole" in groups.describe(256, 34)


def test_v2_that_cannot_delegate_falls_back_to_v1(fake_cgroupfs, monkeypatch, tmp_path):
    mounts = [("cgroup2", "/", "unified", set()), ("cgroup", "/", "memory", {"rw", "memory"}),
              ("cgroup", "/docker/x", "pids", {"rw", "pids"})]
    _tree(fake_cgroupfs, monkeypatch, tmp_path, mounts, {"": "/", "memory": "/m", "pids": "/docker/x/p"})
    for d in ("unified", "memory", "memory/m", "pids", "pids/p"):
        fake_cgroupfs(str(tmp_path / "cgroupfs" / d))
    (tmp_path / "cgroupfs" / "unified" / "cgroup.controllers").write_text("memory pids\n")
    # the kernel refuses (EBUSY) to enable controllers below a cgroup that holds processes
    monkeypatch.setattr(cg, "_write", _refusing_write(cg._write, "unified/cgroup.subtree_control"))
    groups = cg.Cgroups.open()
    assert groups.version == 1
    assert Path(groups.parents["memory"]).parent == tmp_path / "cgroupfs" / "memory" / "m"
    assert Path(groups.parents["pids"]).parent == tmp_path / "cgroupfs" / "pids" / "p"  # mount root /docker/x stripped
    sample = groups.sample(128 << 20, 10)
    assert (Path(sample.dirs["memory"]) / "memory.limit_in_bytes").read_text() == str(128 << 20)
    assert (Path(sample.dirs["pids"]) / "pids.max").read_text() == "10"
    assert len(sample.fds) == 2
    sample.finish()
    groups.close()
    assert [p.name for p in (tmp_path / "cgroupfs" / "memory" / "m").iterdir() if p.is_dir()] == []


def _refusing_write(real, suffix):
    def write(path, text):
        if path.endswith(suffix):
            raise OSError(16, "Device or resource busy")
        return real(path, text)
    return write


def test_unavailable_says_why(fake_cgroupfs, monkeypatch, tmp_path):
    _tree(fake_cgroupfs, monkeypatch, tmp_path, [("cgroup2", "/", "unified", set())], {"": "/"})
    fake_cgroupfs(str(tmp_path / "cgroupfs" / "unified"))
    (tmp_path / "cgroupfs" / "unified" / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(cg.Unavailable, match="controllers memory, pids not available"):
        cg.Cgroups.open()
    (tmp_path / "cgroupfs" / "unified" / "cgroup.controllers").write_text("memory pids\n")
    monkeypatch.setattr(cg, "_write", _refusing_write(cg._write, "unified/cgroup.subtree_control"))
    with pytest.raises(cg.Unavailable, match="cannot enable memory and pids for child groups"):
        cg.Cgroups.open()


def test_stale_groups_and_work_dirs_of_a_dead_apr_are_swept(fake_cgroupfs, monkeypatch, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    _tree(fake_cgroupfs, monkeypatch, tmp_path, [("cgroup2", "/", "unified", set())], {"": "/a"})
    base = tmp_path / "cgroupfs" / "unified" / "a"
    fake_cgroupfs(str(tmp_path / "cgroupfs" / "unified"))
    fake_cgroupfs(str(base))
    (base / "cgroup.subtree_control").write_text("memory pids")
    for name in (f"apr-sandbox-{pid}-dead", f"apr-sandbox-{os.getppid()}-live", "other"):
        fake_cgroupfs(str(base / name))
    fake_cgroupfs(str(base / f"apr-sandbox-{pid}-dead" / "s1"))
    cg.Cgroups.open().close()
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == [f"apr-sandbox-{os.getppid()}-live", "other"]

    old, young, live = (tmp_path / f"apr-sandbox-{pid}-o", tmp_path / f"apr-sandbox-{pid}-y",
                        tmp_path / f"apr-sandbox-{os.getppid()}-l")
    for d in (old, young, live):
        os.makedirs(d / "s1")
    for d in (old, live):
        os.utime(d, (1, 1))
    stale.sweep_workdirs(str(tmp_path))
    assert not old.exists() and young.exists() and live.exists()
