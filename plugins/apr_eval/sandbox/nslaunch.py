"""Namespace launcher: the isolation used when bubblewrap is not installed.

Run by the parent as ``python -I -S nslaunch.py SPEC_JSON`` (as root, or as a user allowed to
create user namespaces). It unshares mount, PID, network, IPC and UTS namespaces (plus a user
namespace when not root), forks so the child is PID 1 of the new PID namespace (when PID 1 exits
the kernel kills everything left in it, so detached grandchildren die with the sample), builds a
fresh root on a tmpfs holding only read-only binds of the system and interpreter directories, a
writable scratch dir and a private /tmp, pivots into it, drops to the unprivileged uid/gid, sets
no-new-privileges and a parent-death SIGKILL, and execs the driver. The launcher itself waits and
exits with the child's status. Only the standard library (ctypes) is used.
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
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}

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


def build_root(spec):
    root = spec["root"]
    os.umask(0o022)  # directories made for binds stay traversable by the unprivileged uid
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    for link, target in spec["symlinks"]:
        os.symlink(target, root + link)
    for src, dst in spec["ro_binds"]:
        target = root + dst
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        mount(src, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    scratch = root + spec["scratch_dst"]
    os.makedirs(scratch, exist_ok=True)
    mount(spec["scratch"], scratch, None, MS_BIND)
    mount(None, scratch, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/tmp", exist_ok=True)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={spec['tmp_bytes']},mode=1777")
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
    build_root(spec)
    socket.sethostname("sandbox")
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    # Credential changes clear the parent-death signal, so it is set after them.
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl pdeathsig")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl no_new_privs")
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
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
    outer_uid, outer_gid = os.getuid(), os.getgid()
    if outer_uid != 0:
        flags |= CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare")
    if outer_uid != 0:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {outer_uid} 1")
        _write("/proc/self/gid_map", f"0 {outer_gid} 1")
        spec["uid"] = spec["gid"] = None
    pid = os.fork()
    if pid == 0:
        try:
            child(spec)
        except BaseException as exc:  # setup failed: report and never run the program
            os.write(2, f"sandbox setup failed: {exc}\n".encode())
        os._exit(125)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
