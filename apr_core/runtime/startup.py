"""Importing torch at a command's start without paying the garbage collector for it.

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

import gc
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
