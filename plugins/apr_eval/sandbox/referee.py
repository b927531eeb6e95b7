"""Both ends of a refereed call: the candidate serves its function, the referee's tests call it.

The candidate (`serve`) runs the model's module, says it is ready (or why it is not), then answers
each call of a function it defines with the return value or the exception, as plain values
(`wire`). The referee (`referee`) runs the trusted context and tests with the function's name
bound to a stub that calls the candidate (`Channel`); a builtin exception the candidate raised is
raised again as itself (so tests that catch, say, ``ValueError`` still do), anything else, a
malformed message or the candidate's death as `CandidateFailed`. The referee writes
``{"passed", "detail"}`` to its result pipe. Imported by `driver` inside the sandbox.
"""

import builtins
import json
import os

import wire
from output import flush, last_line, print_traceback


def serve(source: str, entry: str, requests: int, replies: int,
           _read=wire.read_message, _send=wire.write_message, _encode=wire.encode, _decode=wire.decode) -> int:
    """Run the candidate module, then answer the referee's calls of ``entry`` until it hangs up."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except BaseException as exc:
        flush()
        print_traceback(exc)
        flush()
        _send(replies, {"error": last_line(exc)})
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
        flush()
        _send(replies, reply)


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


def referee(secret: dict, entry: str, replies: int, requests: int, result_fd: int) -> int:
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
        detail = str(exc)[:300] if isinstance(exc, CandidateFailed) else last_line(exc)
        if not isinstance(exc, CandidateFailed):
            print_traceback(exc)
        os.write(result_fd, json.dumps({"passed": False, "detail": detail}).encode())
        return 1
    os.write(result_fd, json.dumps({"passed": True, "detail": ""}).encode())
    return 0
