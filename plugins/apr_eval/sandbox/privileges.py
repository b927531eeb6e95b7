"""Privileges of the sample's processes: capabilities, the uid drop, rlimits (ctypes, stdlib only).

The driver (PID 1) keeps only ``CAP_SETUID``/``CAP_SETGID`` (`limit_capabilities`), which it needs
to give its children their uids; each child lowers its rlimits (soft = hard, so the program cannot
raise them back) and drops to its unprivileged uid, or, where there is only one uid (apr not
root: uid 0 of a user namespace), drops every capability, with no-new-privileges so ``exec``
regains nothing (`drop_privileges`). Imported by `driver` inside the sandbox.
"""

import ctypes
import os
import resource
import signal

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
CAP_SETGID, CAP_SETUID = 6, 7
# NOROOT (+locked), NO_CAP_AMBIENT_RAISE (+locked), KEEP_CAPS locked off: uid 0 regains nothing
SECUREBITS_NO_ROOT = 0x01 | 0x02 | 0x20 | 0x40 | 0x80
CAP_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def fail(what):
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _capabilities() -> int:
    """The effective | permitted capability mask of this process."""
    header, data = _CapHeader(CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        fail("capget")
    return sum((data[i].effective | data[i].permitted) << (32 * i) for i in range(2))


def limit_capabilities(keep=()) -> None:
    """Keep only ``keep`` (capability numbers) in the effective and permitted sets; clear the rest."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        if cap not in keep:
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # best effort: needs CAP_SETPCAP
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    mask = sum(1 << c for c in keep) & _capabilities()
    header, data = _CapHeader(CAP_VERSION_3, 0), (_CapData * 2)()
    for i in range(2):
        data[i].effective = data[i].permitted = (mask >> (32 * i)) & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        fail("capset")


def drop_privileges(uid) -> None:
    """Become ``uid`` (which clears every capability), or without one keep the uid and drop them all."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("sandbox: could not drop privileges")
    else:
        limit_capabilities(())
    if _capabilities() != 0:
        raise SystemExit("sandbox: capabilities survived the privilege drop")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("prctl no_new_privs")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # credential changes clear it; set again


def set_limits(limits: dict) -> None:
    """Soft = hard, so the program cannot raise them back."""
    for name, value in limits.items():
        if value > 0:
            which = getattr(resource, name)
            resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
