"""Wanda: prune by |W| x ||X||, compared within each output row (Sun et al. 2023).

The score of weight W[i, j] is |W[i, j]| times the L2 norm of input feature j
over every calibration token; the lowest-scoring fraction of each output row
is removed (or the M-N lowest of every M inputs for N:M). No weight update.
"""

from __future__ import annotations


from .common import prune_mask
from .sparse import CalibratedPruner


class Wanda(CalibratedPruner):
    name = "wanda"
    summary = "|weight| x input-activation norm, per output row (calibrated, no weight update)"
    paper = "Sun, Liu, Bair, Kolter 2023, A Simple and Effective Pruning Approach for LLMs (arXiv:2306.11695)"

    def new_stats(self, linear):
        import torch

        return torch.zeros(linear.in_features, dtype=torch.float64, device=linear.weight.device)

    def accumulate(self, stats, x) -> None:
        stats += x.double().pow(2).sum(0)

    def prune_linear(self, linear, stats, ratio, nm) -> None:
        w = linear.weight.data
        scores = w.abs() * stats.sqrt().to(w.dtype)[None, :]
        w[prune_mask(scores, ratio, nm, per_row=True)] = 0
