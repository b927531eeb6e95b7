"""The ``apr prune`` plugin: the command family and its six methods."""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .common import PRUNE_KIND
from .depth import Depth
from .magnitude import Magnitude
from .sparsegpt import SparseGPT
from .structured import Structured
from .wanda import Wanda
from .width import Width


@hookimpl
def apr_register_techniques(register):
    register(PRUNE_KIND)
    for technique in (Magnitude(), Wanda(), SparseGPT(), Structured(), Depth(), Width()):
        register(technique)
