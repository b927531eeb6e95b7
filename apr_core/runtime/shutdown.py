"""Ending a finished command's process without tearing the interpreter down.

After a command returns, CPython's finalisation deallocates every module (torch's thousands of
objects among them) and runs the C++ static destructors of every extension: on the development
machine 0.10 of the 0.14 s between `apr quantize` returning and its process ending, as long as
that command's own model loading (docs/performance.md). `exit_now` does the part of
finalisation anyone can observe -- it joins the non-daemon threads (running threading's exit
hooks first, so thread pools finish their queued work), runs the atexit handlers, flushes
stdout and stderr -- and then ends the process with ``os._exit``. Outputs are complete by then:
atomic writes commit (fsync and rename) before a command returns.

Only the process's own command line takes this path (`apr_core.cli.main` called without
arguments, as the ``apr`` script and ``python -m apr_core.cli`` do); code that calls ``main``
in-process gets a normal ``SystemExit``. Where the interpreter lacks the hooks used here, or
any of the steps fails (a closed stdout), it falls back to ``sys.exit``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(code: int) -> None:
    """End the process with ``code`` after joining threads, atexit handlers and flushed stdio."""
    join_threads = getattr(threading, "_shutdown", None)
    run_atexit = getattr(atexit, "_run_exitfuncs", None)
    if join_threads is None or run_atexit is None or threading.current_thread() is not threading.main_thread():
        sys.exit(code)
    try:
        join_threads()
        run_atexit()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        sys.exit(code)
    os._exit(code)
