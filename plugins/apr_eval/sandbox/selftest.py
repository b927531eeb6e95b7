"""Start-up proof that the sandbox holds, run before any model output is executed.

`self_test` runs trusted probe programs through the very path samples take: a probe that must
pass only if the network is unreachable, the host filesystem (a canary file the parent just
wrote, the scratch dir's parent) is invisible and unwritable, the uid is unprivileged when apr is
root, the PID namespace is private and the rlimits are in force; and two controls that must fail
(a failing assert, and an early ``os._exit(0)``), which proves the verdict does not trust exit
codes alone. Any surprise raises `SandboxError` and nothing is executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROBE = r'''
import os, resource, socket
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
for target in ("/usr/apr-probe", "/apr-probe", os.path.join(os.path.dirname(os.getcwd()), "apr-probe")):
    try:
        open(target, "w").close()
    except OSError:
        continue
    raise AssertionError("could write outside the sandbox: " + target)
if WANT_UNPRIVILEGED:
    assert os.getuid() != 0 and os.geteuid() != 0, "still root"
assert os.getpid() < 10, "not in a private PID namespace (pid %d)" % os.getpid()
assert resource.getrlimit(resource.RLIMIT_AS)[1] == WANT_AS, resource.getrlimit(resource.RLIMIT_AS)
assert resource.getrlimit(resource.RLIMIT_NPROC)[1] == WANT_NPROC
open("scratch-ok", "w").write("ok")
'''


class SandboxError(RuntimeError):
    """The sandbox failed its self-test; the message says which property did not hold."""


def self_test(sandbox) -> dict:
    """Run the probes through ``sandbox``; returns what was checked, raises `SandboxError`."""
    with tempfile.NamedTemporaryFile(prefix="apr-canary-", delete=False) as f:
        canary = f.name
    try:
        checks = {}
        controls = {"failing assert": "assert False, 'control'",
                    "early os._exit(0)": "import os\nos._exit(0)\nassert False"}
        for name, program in controls.items():
            v = sandbox.run(program)
            if v.passed:
                raise SandboxError(f"sandbox self-test: the control '{name}' was counted as a pass")
            checks[name] = "fails as it must"
        if sandbox.mode == "none":
            checks["isolation"] = "none (--unsafe-no-isolation)"
            return checks
        header = (f"CANARY = {canary!r}\nWANT_UNPRIVILEGED = {sandbox.is_root!r}\n"
                  f"WANT_AS = {sandbox.limits.memory_mb << 20}\nWANT_NPROC = {sandbox.limits.nproc}\n")
        v = sandbox.run(header + PROBE)
        if not v.passed:
            raise SandboxError(f"sandbox self-test ({sandbox.mode}) failed: {v.detail or v.status}")
        if Path(canary).read_bytes() != b"" or Path(canary + ".sibling").exists():
            raise SandboxError("sandbox self-test: a host file was written from inside the sandbox")
        checks.update({"network": "unreachable", "filesystem": "host invisible, read-only outside scratch",
                       "uid": "unprivileged" if sandbox.is_root else "own (not root)",
                       "pid namespace": "private", "rlimits": "in force"})
        return checks
    finally:
        for path in (canary, canary + ".sibling"):
            if os.path.exists(path):
                os.unlink(path)
