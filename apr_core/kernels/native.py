"""CPU kernels in C, compiled on first use with the machine's C compiler and loaded with ctypes.

Triton has no CPU backend, and a few hot paths cannot be written as whole-tensor torch or numpy
calls without paying for every intermediate array (DARE's Philox stream: ten rounds of
multiplies per counter, about 7 ns per element in numpy against well under 1 ns in C). Such a
kernel ships as a C file beside its reference; `library(source)` compiles it once per machine
(``cc -O3 -march=native``: the cache key holds the source, the flags, the compiler and the
CPU's feature flags, so a shared home directory never hands one machine another's build) into
``$APR_CACHE/native/`` (default ``~/.cache/apr``), atomically, and returns the loaded library.

``-fno-trapping-math`` lets the compiler evaluate both arms of a select such as
``agree ? w * x : 0`` and blend them, which is how such loops vectorise on CPUs without AVX-512's
mask registers (TIES' combination took 19 ns per element with branches on an AVX2 EPYC, 3 ns
blended); it only gives up floating-point exception flags, which nothing reads, and every value
is the same IEEE operation (the tests compare bits). ``-ffp-contract=off`` keeps products and sums
separately rounded, as torch computes them.

It returns None when there is no compiler, the build fails or ``APR_NATIVE=0``: callers then
run the reference, which computes the same bits (tests compare the two), only slower. ctypes
releases the GIL for the call, so a caller may split a long range over threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-fPIC", "-shared")
_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return os.environ.get("APR_NATIVE", "1").lower() not in ("0", "false", "no", "off")


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else cc, gcc or clang on PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def cache_dir() -> Path:
    return Path(os.environ.get("APR_CACHE", Path.home() / ".cache" / "apr")) / "native"


def _build(source: Path, cc: str) -> Path | None:
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, " ".join(FLAGS).encode(), cc.encode(),
                                     platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:20]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError:
        return None
    try:
        done = subprocess.run([cc, *FLAGS, "-o", tmp, str(source)], capture_output=True, timeout=120)
        if done.returncode != 0:
            return None
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
        return target
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library(source: Path) -> ctypes.CDLL | None:
    """The compiled ``source`` (a C file), built on first use; None where that is not possible."""
    if not enabled():
        return None
    with _lock:
        if source not in _loaded:
            cc = compiler()
            built = _build(source, cc) if cc else None
            try:
                _loaded[source] = ctypes.CDLL(str(built)) if built else None
            except OSError:
                _loaded[source] = None
        return _loaded[source]


def function(source: Path, name: str, argtypes: list, restype):
    """Function ``name`` of the compiled ``source`` with its ctypes signature; None where
    `library` gives None."""
    lib = library(source)
    if lib is None:
        return None
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.argtypes, fn.restype = argtypes, restype
    return fn
