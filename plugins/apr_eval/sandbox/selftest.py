"""Start-up proof that the sandbox holds, run before any model output is executed.

`self_test` runs trusted probe programs through the very path samples take: a probe that must
pass only if the network is unreachable, the host filesystem (a canary file the parent just
wrote, the scratch dir's parent) is invisible and unwritable, the uid is unprivileged when apr is
root, the PID namespace is private, PID 1 (the driver) cannot be traced or inspected, the rlimits
are in force, ``/dev`` has its null, zero, random and urandom devices and a writable ``/dev/shm``,
the scratch dir is a tmpfs of the configured size and, where cgroups are used, the sample is in
its own group; and controls that must fail (a failing assert, an early ``os._exit(0)``, a refereed
function that returns the wrong value) or pass (a refereed function that is right), which proves
the verdict does not trust exit codes alone and that the referee works. Any surprise raises
`SandboxError` and nothing is executed. The report says whether memory and process limits apply
per sample (cgroup) or only per process (rlimits).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROBE = r'''
import ctypes, os, resource, socket
names = sorted(n for _, n in socket.if_nameindex())
assert names in ([], ["lo"]), "network interfaces visible: %s" % names
for addr in (("1.1.1.1", 53), ("8.8.8.8", 443)):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(addr)
    except OSError:
        pass
    else:
        raise AssertionError("network reachable: %s" % (addr,))
    finally:
        s.close()
assert not os.path.exists(CANARY), "host file visible: " + CANARY
for target in (CANARY, CANARY + ".sibling"):  # the parent checks the host copies afterwards
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").write("written from the sandbox")
    except OSError:
        pass
for target in ("/usr/apr-probe", "/apr-probe", "/harness/apr-probe", "/dev/apr-probe",
               os.path.join(os.path.dirname(os.getcwd()), "apr-probe")):
    try:
        open(target, "w").close()
    except OSError:
        continue
    raise AssertionError("could write outside the sandbox: " + target)
if WANT_UNPRIVILEGED:
    assert os.getuid() != 0 and os.geteuid() != 0, "still root"
assert os.getpid() < 10, "not in a private PID namespace (pid %d)" % os.getpid()
try:
    pid1_fds = ["/proc/1/fd/" + n for n in os.listdir("/proc/1/fd")]
except OSError:
    pid1_fds = []
for path in pid1_fds + ["/proc/1/environ", "/proc/1/mem"]:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        continue
    raise AssertionError("the driver (PID 1) is inspectable: " + path)
assert ctypes.CDLL(None).ptrace(16, 1, None, None) != 0, "PID 1 could be ptraced"
assert resource.getrlimit(resource.RLIMIT_AS)[1] == WANT_AS, resource.getrlimit(resource.RLIMIT_AS)
assert resource.getrlimit(resource.RLIMIT_NPROC)[1] == WANT_NPROC
with open(os.devnull, "w") as f:
    f.write("x")
assert open("/dev/zero", "rb").read(4) == bytes(4)
assert len(open("/dev/urandom", "rb").read(8)) == 8 and len(open("/dev/random", "rb").read(8)) == 8
open("/dev/shm/apr-probe", "w").write("ok")
st = os.statvfs(os.getcwd())
assert st.f_blocks * st.f_frsize == WANT_TMP, "scratch is not a %d-byte tmpfs" % WANT_TMP
if WANT_CGROUP:
    assert WANT_CGROUP in open("/proc/self/cgroup").read(), "not in the sample's cgroup"
open("scratch-ok", "w").write("ok")
'''

REFEREED_TESTS = "def check(candidate):\n    assert candidate(2, b=3) == (5, [2.5])\n\ncheck(add)\n"


class SandboxError(RuntimeError):
    """The sandbox failed its self-test; the message says which property did not hold."""


def self_test(sandbox) -> dict:
    """Run the probes through ``sandbox``; returns what was checked, raises `SandboxError`."""
    from . import RefereedProgram

    with tempfile.NamedTemporaryFile(prefix="apr-canary-", delete=False) as f:
        canary = f.name
    try:
        checks = {}
        right = RefereedProgram("def add(a, b):\n    return a + b, [(a + b) / 2]\n", "", REFEREED_TESTS, "add")
        wrong = RefereedProgram("def add(a, b):\n    return a * b, [2.5]\n", "", REFEREED_TESTS, "add")
        controls = {"failing assert": "assert False, 'control'",
                    "early os._exit(0)": "import os\nos._exit(0)\nassert False",
                    "refereed wrong function": wrong}
        for name, program in controls.items():
            v = sandbox.run(program)
            if v.passed:
                raise SandboxError(f"sandbox self-test: the control '{name}' was counted as a pass")
            checks[name] = "fails as it must"
        v = sandbox.run(right)
        if not v.passed:
            raise SandboxError(f"sandbox self-test: a correct refereed function failed: {v.detail or v.status}")
        checks["refereed right function"] = "passes"
        checks["cgroup"] = sandbox.cgroup_status
        if sandbox.mode == "none":
            checks["isolation"] = "none (--unsafe-no-isolation)"
            return checks
        cgroup = sandbox.cgroups.name if sandbox.cgroups else ""
        header = (f"CANARY = {canary!r}\nWANT_UNPRIVILEGED = {sandbox.is_root!r}\n"
                  f"WANT_AS = {sandbox.limits.memory_mb << 20}\nWANT_NPROC = {sandbox.limits.nproc}\n"
                  f"WANT_TMP = {sandbox.limits.tmp_mb << 20}\nWANT_CGROUP = {cgroup!r}\n")
        v = sandbox.run(header + PROBE)
        if not v.passed:
            raise SandboxError(f"sandbox self-test ({sandbox.mode}) failed: {v.detail or v.status}")
        if Path(canary).read_bytes() != b"" or Path(canary + ".sibling").exists():
            raise SandboxError("sandbox self-test: a host file was written from inside the sandbox")
        checks.update({"network": "unreachable", "filesystem": "host invisible, read-only outside scratch",
                       "uid": "unprivileged" if sandbox.is_root else "own (not root)",
                       "pid namespace": "private, PID 1 the driver (not traceable)", "rlimits": "in force",
                       "dev": "null, zero, random, urandom, shm",
                       "scratch": f"tmpfs of {sandbox.limits.tmp_mb} MiB"})
        return checks
    finally:
        for path in (canary, canary + ".sibling"):
            if os.path.exists(path):
                os.unlink(path)
