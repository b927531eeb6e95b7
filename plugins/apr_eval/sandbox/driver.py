"""Runs inside the sandbox, before any untrusted code: lowers limits, runs the program, signs off.

Invoked as ``python -I driver.py PROGRAM NONCE_FD VERDICT_FD CPU_S AS_BYTES NPROC NOFILE FSIZE UID``.
It lowers soft *and* hard rlimits (so the program cannot raise them back), drops to UID (when
started as root inside bubblewrap; "-" keeps the current user) with no-new-privileges and a
parent-death SIGKILL, executes PROGRAM as
``__main__``, and only if that returns normally reads the parent's secret nonce from NONCE_FD and
writes it to VERDICT_FD. The parent counts a pass only when the process exits 0 *and* the nonce
came back on that pipe, so printing "PASS", exiting 0 early (``os._exit``, ``sys.exit``,
``SystemExit``) or patching ``sys.exit`` cannot fake a pass. The functions used to sign off are
bound before the program runs, so monkeypatching ``os`` does not reach them.
Only the standard library is used: this file runs under the bare interpreter (``-I``).
"""

import ctypes
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def _limit(which, value):
    value = int(value)
    if value > 0:
        resource.setrlimit(which, (value, value))


def main(argv, _read=os.read, _write=os.write, _close=os.close, _exit=os._exit):
    program, nonce_fd, verdict_fd = argv[0], int(argv[1]), int(argv[2])
    cpu, address_space, nproc, nofile, fsize = argv[3:8]
    _limit(resource.RLIMIT_CPU, cpu)
    _limit(resource.RLIMIT_AS, address_space)
    _limit(resource.RLIMIT_NPROC, nproc)
    _limit(resource.RLIMIT_NOFILE, nofile)
    _limit(resource.RLIMIT_FSIZE, fsize)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if argv[8] != "-":
        uid = int(argv[8])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("sandbox: could not drop privileges")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit("sandbox: could not set no_new_privs")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # cleared by setuid; set again
    with open(program, encoding="utf-8") as f:
        source = f.read()
    code = compile(source, "program.py", "exec")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    del source, f
    exec(code, namespace)
    # Reached only if the program (tests included) ran to the end without raising.
    nonce = _read(nonce_fd, 256)
    _write(verdict_fd, nonce)
    _close(verdict_fd)
    _exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
