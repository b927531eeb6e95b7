"""The ``apr quantize`` plugin: the command family and every scheme of `apr_quant.schemes`."""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .common import QUANT_KIND
from .schemes import techniques


@hookimpl
def apr_register_techniques(register):
    register(QUANT_KIND)
    for technique in techniques():
        register(technique)
