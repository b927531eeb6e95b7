"""Namespace launcher: the isolation used when bubblewrap is not installed.

Run by the parent as ``python -I -S nslaunch.py SPEC_JSON`` (as root, or as a user allowed to
create user namespaces). It dies with its parent (parent-death SIGKILL, checked against the
parent's pid), unshares mount, PID, network, IPC and UTS namespaces (plus a user namespace when
not root) and forks: the child is PID 1 of the new PID namespace. The child gets a parent-death
SIGKILL, builds a fresh root on a tmpfs holding only read-only binds of the system and
interpreter directories and of the harness (``/harness``), a size-capped tmpfs as the scratch
dir (``/sandbox``, with ``/tmp`` a link to it), a minimal ``/dev`` like bubblewrap's (null, zero,
full, random, urandom, tty, the ``fd``/``std*`` links and a size-capped tmpfs ``/dev/shm``) and a
private ``/proc``, pivots into it and execs the driver, which stays PID 1 (see `driver`). The
launcher writes ``{"child-pid": PID}`` (the host pid of that PID 1, as bubblewrap's
``--info-fd`` does) to the info descriptor, waits, and exits with the child's status. Only the
standard library (ctypes) is used.
"""

import ctypes
import json
import os
import platform
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"))

libc = ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {source} on {target}")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _bind_ro(src, target):
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(src, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_dev(dev, shm_bytes):
    """A tmpfs /dev with the harmless device nodes bound from the host's, read-only once built."""
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(f"{dev}/{name}", "a").close()
            mount("/dev/" + name, f"{dev}/{name}", None, MS_BIND)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_bytes},mode=1777")
    mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")


def build_root(spec):
    root = spec["root"]
    os.umask(0o022)  # directories made for binds stay traversable by the unprivileged uid
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    for link, target in spec["symlinks"]:
        os.symlink(target, root + link)
    for src, dst in spec["ro_binds"]:
        _bind_ro(src, root + dst)
    scratch = root + spec["scratch_dst"]
    os.makedirs(scratch, exist_ok=True)
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmp_bytes']},mode=1777")
    os.symlink(spec["scratch_dst"], root + "/tmp")
    build_dev(root + "/dev", spec["tmp_bytes"])
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    number = PIVOT_ROOT.get(platform.machine())
    if number is not None:
        _check(libc.syscall(number, b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    else:
        os.chroot(".")
    os.chdir(spec["scratch_dst"])


def child(spec):
    # PID 1 of the namespace: it must die with the launcher (an exit or kill of PID 1 kills the
    # whole namespace); the driver it becomes keeps this across exec.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl pdeathsig")
    os.close(spec["info_fd"])
    build_root(spec)
    socket.sethostname("sandbox")
    keep = set(spec["keep_fds"]) | {0, 1, 2}
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def main():
    spec = json.loads(sys.argv[1])
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl pdeathsig")
    if os.getppid() != spec["parent_pid"]:  # the parent died before the line above
        os._exit(125)
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
    outer_uid, outer_gid = os.getuid(), os.getgid()
    if outer_uid != 0:
        flags |= CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare")
    if outer_uid != 0:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {outer_uid} 1")
        _write("/proc/self/gid_map", f"0 {outer_gid} 1")
    pid = os.fork()
    if pid == 0:
        try:
            child(spec)
        except BaseException as exc:  # setup failed: report and never run the program
            os.write(2, f"sandbox setup failed: {exc}\n".encode())
        os._exit(125)
    os.write(spec["info_fd"], json.dumps({"child-pid": pid}).encode())
    os.close(spec["info_fd"])
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
