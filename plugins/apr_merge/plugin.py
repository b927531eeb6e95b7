"""The ``apr merge`` plugin: the command family and every strategy (linear means, slerp, task vectors)."""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.technique import Kind

from . import linear, taskvector
from .slerp import Slerp

MERGE_KIND = Kind("merge", "strategy", "Merge models of the same architecture into one.", 1, None)


@hookimpl
def apr_register_techniques(register):
    register(MERGE_KIND)
    for technique in (*linear.techniques(), Slerp(), *taskvector.techniques()):
        register(technique)
