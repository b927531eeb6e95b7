"""Plain-torch references for the sparsity kernels: the definition the Triton code must match."""

from __future__ import annotations


def nm_mask(scores, n: int, m: int):
    rows, cols = scores.shape
    groups = scores.reshape(-1, m)
    # stable descending sort: among equal scores the lower index comes first
    keep = groups.sort(dim=1, descending=True, stable=True).indices[:, :n]
    mask = groups.new_zeros(groups.shape, dtype=bool)
    mask.scatter_(1, keep, True)
    return mask.reshape(rows, cols)


def row_prune_mask(scores, k: int):
    rows, cols = scores.shape
    mask = scores.new_zeros(scores.shape, dtype=bool)
    if k > 0:
        # stable ascending sort: among equal scores the lower index is pruned first
        lowest = scores.sort(dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, lowest, True)
    return mask
