"""Task arithmetic: add the inputs' task vectors (x_i - base) to the base (Ilharco et al. 2023).

``base + scaling * sum_i w_i (x_i - base) / sum_i w_i`` by default (the mean
task vector; ``--no-normalize`` for the paper's plain sum, ``--scaling`` is
its lambda). TIES at density 1 and DARE at drop rate 0 reduce to this.
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .taskvector import COMMON, TaskVectorMerge


class TaskArithmetic(TaskVectorMerge):
    name = "task_arithmetic"
    summary = "add the weighted task vectors (input - base) to the base model"
    paper = "Ilharco et al. 2023, Editing models with task arithmetic (ICLR)"
    params = COMMON


@hookimpl
def apr_register_techniques(register):
    register(TaskArithmetic())
