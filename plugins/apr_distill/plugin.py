"""The ``apr distill`` plugin: the command family and its three strategies.

``apr distill TEACHER [MORE_TEACHERS...] --student STUDENT --strategy standard|progressive|ensemble
--data FILE.jsonl -o OUT`` (docs/distill.md).
"""

from __future__ import annotations

from apr_core.plugins import hookimpl
from apr_core.technique import Kind

from .params import SHARED
from .technique import Ensemble, Progressive, Standard

DISTILL_KIND = Kind("distill", "strategy", "Distil TEACHER (or several, for ensemble) into a student: "
                    "--student PATH or --student-layers N (the teacher depth-pruned).", 1, None,
                    default="standard", options=SHARED, processes=True)


@hookimpl
def apr_register_techniques(register):
    register(DISTILL_KIND)
    for technique in (Standard(), Progressive(), Ensemble()):
        register(technique)
