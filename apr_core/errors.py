"""Error types that separate a user's mistake from a bug in apr.

`AprError` is raised for bad input (a missing file, a corrupt model, an
out-of-range option). The CLI prints its message as one line and exits with
code 2; anything else is a bug and keeps its traceback.
"""


class AprError(Exception):
    """A problem with the user's input or environment, reported as one line (exit 2)."""

    exit_code = 2


class CorruptFileError(AprError):
    """A model file failed validation (bad magic, CRC mismatch, out-of-range offsets...)."""


class UpToDate(Exception):
    """Raised by a technique whose output already holds exactly what this run would write (a
    finished training run re-run with the same arguments): the pipeline reports it and writes
    nothing; the command exits 0."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so every atomic write removes its temporary."""


class PluginError(Exception):
    """A plugin broke the contract (duplicate technique name, bad parameter declaration)."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (with the next one if it ends in a colon; the
    type name if there is no message), for one-line errors that wrap a library's exception."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0] + (" " + lines[1] if lines[0].endswith(":") and len(lines) > 1 else "")
    return text[:limit]
