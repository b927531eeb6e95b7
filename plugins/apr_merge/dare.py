"""DARE: drop and rescale task vectors, then task arithmetic (Yu et al. 2024, ICML; arXiv 2023).

Each entry of every task vector is dropped with probability ``--drop-rate``
p (Bernoulli) and the survivors are multiplied by 1/(1-p), which keeps each
task vector's expected value; the sparsified vectors are then combined by
task arithmetic. The random stream is Philox keyed by ``--seed``, the tensor
name and the input's position, so the same seed gives the same bytes on CPU
and GPU.
"""

from __future__ import annotations

from apr_core.plugins import hookimpl

from .taskvector import COMMON, DROP_RATE, TaskVectorMerge


class Dare(TaskVectorMerge):
    name = "dare"
    summary = "drop task-vector entries with probability --drop-rate, rescale by 1/(1-p), add to the base"
    paper = "Yu et al. 2024, Language Models are Super Mario (ICML; arXiv 2311.03099)"
    params = COMMON + (DROP_RATE,)
    sparsify = "random"
    random = True


@hookimpl
def apr_register_techniques(register):
    register(Dare())
