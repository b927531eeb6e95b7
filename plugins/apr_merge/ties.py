"""TIES: trim, elect sign, disjoint merge (Yadav et al. 2023, NeurIPS).

For each tensor: keep the ``--density`` fraction of largest-magnitude entries
of every task vector (the rest set to 0); elect, per entry, the sign of the
weighted sum of the trimmed values (the sign with more total magnitude); then
average only the trimmed values that have the elected sign (disjoint mean)
and add the result, times ``--scaling``, to the base. Resolves sign conflicts
between specialists, which plain task arithmetic averages away.
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .taskvector import COMMON, DENSITY, TaskVectorMerge


class Ties(TaskVectorMerge):
    name = "ties"
    summary = "trim each task vector to --density by magnitude, elect signs, average the agreeing values"
    paper = "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)"
    params = COMMON + (DENSITY,)
    sparsify = "magnitude"
    consensus = "sign"


@hookimpl
def apr_register_techniques(register):
    register(Ties())
