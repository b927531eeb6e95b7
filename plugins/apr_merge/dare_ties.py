"""DARE-TIES: DARE's random drop and rescale, then TIES' sign election and disjoint mean.

DARE replaces TIES' magnitude trim (Yu et al. 2024 evaluate DARE in front of
both task arithmetic and TIES); there is no ``--density``: the kept fraction
is 1 - ``--drop-rate``.
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .taskvector import COMMON, DROP_RATE, TaskVectorMerge


class DareTies(TaskVectorMerge):
    name = "dare_ties"
    summary = "DARE drop-and-rescale of each task vector, then TIES sign election and disjoint mean"
    paper = "Yu et al. 2024 (DARE) with Yadav et al. 2023 (TIES sign consensus)"
    params = COMMON + (DROP_RATE,)
    sparsify = "random"
    consensus = "sign"
    random = True


@hookimpl
def apr_register_techniques(register):
    register(DareTies())
