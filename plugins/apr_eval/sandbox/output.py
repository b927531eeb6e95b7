"""What the sample's processes print: the program's own traceback frames, and flushes before exit.

The harness files (this directory) are left out of tracebacks, so a sample's output ends with the
program's own error line, which the parent reports. Imported by `driver` inside the sandbox.
"""

import os
import sys
import traceback

HARNESS = os.path.dirname(os.path.abspath(__file__))


def last_line(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1][:300]
    except Exception:  # a hostile __str__
        return type(exc).__name__


def print_traceback(exc: BaseException) -> None:
    """The traceback from the first frame outside this harness (the program's own frames)."""
    tb = exc.__traceback__
    while tb is not None and os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) == HARNESS:
        tb = tb.tb_next
    try:
        traceback.print_exception(type(exc), exc, tb)
    except BaseException:
        print(type(exc).__name__, file=sys.stderr)


def flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
