"""Importing torch and bitsandbytes at a command's start without paying for it.

torch costs the garbage collector; bitsandbytes costs log lines (`quiet_bitsandbytes`).

``import torch`` leaves about 158,000 objects the collector tracks (8,000 before it). With the
collector on, CPython runs full collections as they pile up during the import, and its final
collection at exit walks them all again: on the development machine that was 0.5 s of the
1.4 s ``python -c "import torch"`` takes (docs/performance.md). Commands therefore import torch
with the collector paused and then `gc.freeze` what the import built: module-level objects
that live until the process ends anyway move to the permanent generation, which collections
skip. The collector is back on afterwards, so cycles made by the work itself are collected as
before; only garbage that existed at the moment of the freeze is kept (a few hundred objects).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys


def import_torch():
    """``torch``, imported with the collector paused and frozen after (once per process)."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return torch


# bitsandbytes' import logs about optional kernels: its CPU backend, on a CPU with AVX512-BF16, asks
# the HF `kernels` package for a hub-hosted matmul kernel, and `kernels` warns that it cannot check
# the publisher offline before bitsandbytes warns that the kernel did not load. Neither line says
# anything about the run, and they would turn a user error into three lines of stderr.
_IMPORT_CHATTER = ("bitsandbytes", "kernels")


@contextlib.contextmanager
def quiet_bitsandbytes():
    """Warnings (not errors) of bitsandbytes and of HF ``kernels`` silenced for the block: wrap
    whatever may import bitsandbytes (peft does) or make it repack weights."""
    loggers = [logging.getLogger(name) for name in _IMPORT_CHATTER]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
