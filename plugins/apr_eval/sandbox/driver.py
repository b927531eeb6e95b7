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

Only the standard library is used: this file runs under the bare interpreter (``-I``).
"""

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import wire  # noqa: E402  (a sibling file; -I leaves the script's directory off sys.path)

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


def _fail(what):
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _capabilities() -> int:
    """The effective | permitted capability mask of this process."""
    header, data = _CapHeader(CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        _fail("capget")
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
        _fail("capset")


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
        _fail("prctl no_new_privs")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # credential changes clear it; set again


def set_limits(limits: dict) -> None:
    """Soft = hard, so the program cannot raise them back."""
    for name, value in limits.items():
        if value > 0:
            which = getattr(resource, name)
            resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _close_fds_except(keep) -> None:
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _last_line(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1][:300]
    except Exception:  # a hostile __str__
        return type(exc).__name__


def _print_traceback(exc: BaseException) -> None:
    """The traceback from the first frame outside this harness (the program's own frames)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, wire.__file__):
        tb = tb.tb_next
    try:
        traceback.print_exception(type(exc), exc, tb)
    except BaseException:
        print(type(exc).__name__, file=sys.stderr)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
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
        _flush()  # the program's own output first, so the traceback's last line is the last line
        _print_traceback(exc)
    _flush()
    os._exit(code)


# ---------------------------------------------------------------------------------- candidate side
def _run_program(source: str, done_fd: int, _write=os.write) -> int:
    """A plain program, run whole; the pipe hears "done" only if it returned."""
    code = compile(source, "program.py", "exec")
    del source
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
    _write(done_fd, b"done")
    return 0


def _serve(source: str, entry: str, requests: int, replies: int,
           _read=wire.read_message, _send=wire.write_message, _encode=wire.encode, _decode=wire.decode) -> int:
    """Run the candidate module, then answer the referee's calls of ``entry`` until it hangs up."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except BaseException as exc:
        _flush()
        _print_traceback(exc)
        _flush()
        _send(replies, {"error": _last_line(exc)})
        return 1
    del source
    _send(replies, {"ready": True})
    while True:
        message = _read(requests)
        if message is None:
            return 0
        try:
            function = namespace.get(entry)
            if not callable(function):
                raise NameError(f"name {entry!r} is not defined")
            reply = {"value": _encode(function(*_decode(message["call"]), **_decode(message["kw"])))}
        except BaseException as exc:
            try:
                reply = {"raise": type(exc).__name__, "message": str(exc)[:2000]}
            except BaseException:
                reply = {"raise": "Exception", "message": ""}
        _flush()
        _send(replies, reply)


# ---------------------------------------------------------------------------------- referee side
class CandidateFailed(Exception):
    """The candidate's module failed, it died mid-call, or it sent something malformed."""


def _exception(name: str, message: str) -> BaseException:
    """The candidate raised ``name``: the builtin exception of that name (so tests catching, say,
    ValueError still do), else `CandidateFailed`; never anything the candidate defined."""
    cls = getattr(builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(str(message))
        except Exception:
            pass
    return CandidateFailed(f"{name}: {message}")


class Channel:
    """The referee's end of the candidate: calls go out as plain values, results come back decoded."""

    def __init__(self, replies: int, requests: int):
        self.replies, self.requests, self.ready = replies, requests, False

    def _receive(self, during: str):
        try:
            message = wire.read_message(self.replies)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CandidateFailed(f"malformed message from the candidate {during}: {exc}") from None
        if not isinstance(message, dict):
            raise CandidateFailed(f"the candidate process ended {during}" if message is None else
                                  f"malformed message from the candidate {during}")
        return message

    def call(self, args: tuple, kwargs: dict):
        if not self.ready:
            hello = self._receive("while loading")
            if "error" in hello:
                raise CandidateFailed(str(hello["error"]))
            if hello.get("ready") is not True:
                raise CandidateFailed("malformed message from the candidate while loading")
            self.ready = True
        wire.write_message(self.requests, {"call": wire.encode(list(args)), "kw": wire.encode(dict(kwargs))})
        reply = self._receive("during a call")
        if "value" in reply:
            try:
                return wire.decode(reply["value"])
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                raise CandidateFailed(f"malformed value from the candidate: {exc}") from None
        if "raise" in reply:
            raise _exception(reply["raise"], reply.get("message", ""))
        raise CandidateFailed("malformed reply from the candidate")


def _referee(secret: dict, entry: str, replies: int, requests: int, result_fd: int) -> int:
    """Run the trusted context and tests with ``entry`` bound to the remote candidate."""
    channel = Channel(replies, requests)

    def candidate(*args, **kwargs):
        return channel.call(args, kwargs)

    candidate.__name__ = candidate.__qualname__ = entry
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(secret["context"], "prompt.py", "exec"), namespace)
        namespace[entry] = candidate
        exec(compile(secret["tests"], "tests.py", "exec"), namespace)
    except BaseException as exc:
        detail = str(exc)[:300] if isinstance(exc, CandidateFailed) else _last_line(exc)
        if not isinstance(exc, CandidateFailed):
            _print_traceback(exc)
        os.write(result_fd, json.dumps({"passed": False, "detail": detail}).encode())
        return 1
    os.write(result_fd, json.dumps({"passed": True, "detail": ""}).encode())
    return 0


# ---------------------------------------------------------------------------------- init
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
        candidate = _spawn(job, candidate_uid, (requests_r, replies_w),
                           lambda: _serve(job.pop("candidate"), job["entry"], requests_r, replies_w))
        os.close(requests_r)
        os.close(replies_w)
        secret = json.loads(_read_all(secret_fd))  # only now: the candidate's copy of memory lacks it
        os.close(secret_fd)
        result_r, result_w = os.pipe()
        referee = _spawn(job, referee_uid, (replies_r, requests_w, result_w),
                         lambda: _referee(secret, job["entry"], replies_r, requests_w, result_w), dumpable=False)
        for fd in (replies_r, requests_w, result_w):
            os.close(fd)
        code = _wait(referee, deadline)
        try:
            result = json.loads(_read_available(result_r) or b"{}")
        except ValueError:
            result = {}
        passed = code == 0 and result.get("passed") is True
        detail = "" if passed else (result.get("detail") or _exit_detail(code))
        others = (candidate,)
    os.write(verdict_fd, json.dumps({"nonce": secret["nonce"], "passed": passed, "detail": detail,
                                     "exit": code, "timeout": code is None}).encode())
    for pid in others:  # as PID 1 our exit kills the namespace anyway; this covers --isolation none
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    _flush()
    os._exit(0 if passed else 1)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            _flush()
            os._exit(125)
        raise
