"""The sample's init: PID 1 of its namespace, trusted, and the only holder of the verdict.

Invoked as ``python -I driver.py JOB_FD SECRET_FD VERDICT_FD``. JOB_FD holds what the model's code
may know (its source, the limits, the uids); SECRET_FD holds what it must not (the per-run nonce
and, for refereed programs, the tests). The driver never runs untrusted code itself:

1. it joins the sample's cgroups (fds the parent opened), keeps only the capabilities it needs to
   change uid, turns non-dumpable (so same-uid processes cannot ptrace it or open its
   ``/proc/PID/fd``) and lets SIGINT fall back to the default, which PID 1 ignores;
2. it forks the **candidate** *before* reading the secret, so the nonce and the tests are never in
   the candidate's memory; the child closes every descriptor but its own, lowers soft and hard
   rlimits, drops to its unprivileged uid (or, without root, every capability), sets
   no-new-privileges and a parent-death SIGKILL, and runs the code;
3. a **refereed** program (`apr_eval.sandbox.RefereedProgram`) then gets a second child, the
   **referee**, under another uid: it runs the trusted context and tests, and each call of the
   function under test goes to the candidate as plain values (`wire`). The candidate never holds
   the tests, the referee's result pipe or the verdict pipe, so it can pass only by returning
   correct values. A plain program (a string) runs whole in the candidate, which signals on a
   pipe when it returned; that is in-process and forgeable by code written against this harness
   (docs/eval.md says so);
4. it reaps every child (orphans included) until the sample ends or its own deadline passes,
   writes ``{"nonce", "passed", "detail"}`` to VERDICT_FD and exits. As PID 1 its exit makes the
   kernel kill everything left in the namespace.

The driver's siblings do the parts: `privileges` (capabilities, uids, rlimits), `referee` (both
ends of a refereed call), `wire` (the values), `output` (tracebacks). They are imported under
private names, so the program's own ``import wire`` cannot find them. Only the standard library
is used: these files run under the bare interpreter (``-I``).
"""

import builtins
import json
import os
import select
import signal
import sys
import time

HARNESS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HARNESS)  # the sibling files (-I leaves the script's directory off sys.path) ...
try:
    from output import flush, print_traceback
    from privileges import (CAP_SETGID, CAP_SETUID, PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_SET_SECUREBITS,
                            SECUREBITS_NO_ROOT, drop_privileges, libc, limit_capabilities, set_limits)
    from referee import referee, serve
finally:
    sys.path.remove(HARNESS)
for _name in ("wire", "output", "privileges", "referee"):  # ... which the program's own imports must not find
    sys.modules["_apr_harness_" + _name] = sys.modules.pop(_name)


def _close_fds_except(keep) -> None:
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _spawn(job: dict, uid, keep, body, dumpable=True) -> int:
    """Fork a child that closes all but ``keep``, lowers its limits, drops privileges and runs ``body``."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _close_fds_except(set(keep))
        set_limits(job["limits"])
        drop_privileges(uid)
        # the candidate may read its own /proc/self (fd, mem) as any program can; the referee, like
        # this init, stays non-dumpable: same-uid processes cannot trace it or open its /proc files
        libc.prctl(PR_SET_DUMPABLE, 1 if dumpable else 0, 0, 0, 0)
        code = body()
    except BaseException as exc:
        flush()  # the program's own output first, so the traceback's last line is the last line
        print_traceback(exc)
    flush()
    os._exit(code)


def _run_program(source: str, done_fd: int, _write=os.write) -> int:
    """A plain program, run whole; the pipe hears "done" only if it returned."""
    code = compile(source, "program.py", "exec")
    del source
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
    _write(done_fd, b"done")
    return 0


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def _wait(target: int, deadline: float):
    """Reap every child (orphans land here as PID 1) until ``target`` exits: its exit code, or None
    if the deadline passed first."""
    try:
        pidfd = os.pidfd_open(target)
    except OSError:  # a kernel without pidfds: wake up every tick instead
        pidfd = None
    try:
        while True:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return None
                if pid == 0:
                    break
                if pid == target:
                    return os.waitstatus_to_exitcode(status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            select.select([pidfd] if pidfd is not None else [], [], [], min(remaining, 0.05))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _exit_detail(code) -> str:
    if code is None:
        return "timeout (the sandbox's own deadline)"
    if code < 0:
        return f"killed by {signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code}"
    return f"exit code {code}"


def main(argv) -> None:
    job_fd, secret_fd, verdict_fd = (int(a) for a in argv[:3])
    job = json.loads(_read_all(job_fd))
    os.close(job_fd)
    deadline = time.monotonic() + job["deadline_s"]
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores default-handled signals from inside
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    try:
        for fd in job["cgroup_fds"]:
            os.write(fd, b"0")
            os.close(fd)
    except OSError as exc:
        raise SystemExit(f"sandbox setup failed: cannot join the sample's cgroup: {exc}")
    try:
        if not job["uids"]:  # uid 0 (of a user namespace) must not regain capabilities through exec
            libc.prctl(PR_SET_SECUREBITS, SECUREBITS_NO_ROOT, 0, 0, 0)  # best effort: needs CAP_SETPCAP
        limit_capabilities((CAP_SETUID, CAP_SETGID) if job["uids"] else ())
    except OSError as exc:
        raise SystemExit(f"sandbox setup failed: {exc}")
    candidate_uid, referee_uid = job["uids"] or (None, None)
    if job["entry"] is None:
        done_r, done_w = os.pipe()
        worker = _spawn(job, candidate_uid, (done_w,), lambda: _run_program(job.pop("program"), done_w))
        os.close(done_w)
        secret = json.loads(_read_all(secret_fd))
        os.close(secret_fd)
        code = _wait(worker, deadline)
        passed = code == 0 and _read_available(done_r) == b"done"
        # a failed plain program is described by the parent, from its output and this exit code
        detail = "exited 0 before the program finished" if code == 0 and not passed else ""
        others = ()
    else:
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        candidate_pid = _spawn(job, candidate_uid, (requests_r, replies_w),
                           lambda: serve(job.pop("candidate"), job["entry"], requests_r, replies_w))
        os.close(requests_r)
        os.close(replies_w)
        secret = json.loads(_read_all(secret_fd))  # only now: the candidate's copy of memory lacks it
        os.close(secret_fd)
        result_r, result_w = os.pipe()
        referee_pid = _spawn(job, referee_uid, (replies_r, requests_w, result_w),
                         lambda: referee(secret, job["entry"], replies_r, requests_w, result_w), dumpable=False)
        for fd in (replies_r, requests_w, result_w):
            os.close(fd)
        code = _wait(referee_pid, deadline)
        try:
            result = json.loads(_read_available(result_r) or b"{}")
        except ValueError:
            result = {}
        passed = code == 0 and result.get("passed") is True
        detail = "" if passed else (result.get("detail") or _exit_detail(code))
        others = (candidate_pid,)
    os.write(verdict_fd, json.dumps({"nonce": secret["nonce"], "passed": passed, "detail": detail,
                                     "exit": code, "timeout": code is None}).encode())
    for pid in others:  # as PID 1 our exit kills the namespace anyway; this covers --isolation none
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    flush()
    os._exit(0 if passed else 1)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            flush()
            os._exit(125)
        raise
