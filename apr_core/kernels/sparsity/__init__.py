"""Sparsity masks: N:M selection and row-wise lowest-k.

``nm_mask(scores, n, m)`` keeps the ``n`` highest-scoring of each ``m``
consecutive elements along the last dimension (ties go to the lower index,
so results are deterministic). ``row_prune_mask(scores, k)`` marks the ``k``
lowest non-negative scores of every row (ties: lower column first). Every
magnitude, Wanda and SparseGPT mask goes through these two
(`apr_prune.common.prune_mask`), so CUDA runs use the Triton kernels.
"""

from __future__ import annotations

from ...errors import AprError
from .. import use_triton
from . import reference


def _check_nm(scores, n: int, m: int) -> None:
    if scores.dim() != 2:
        raise AprError(f"N:M masks need a 2-D score matrix, got {scores.dim()}-D")
    if not 0 < n < m:
        raise AprError(f"N:M pattern needs 0 < N < M, got {n}:{m}")
    if scores.shape[1] % m:
        raise AprError(f"N:M pattern {n}:{m} needs rows divisible by {m}, got {scores.shape[1]}")


def nm_mask(scores, n: int, m: int):
    """Boolean mask with exactly ``n`` True values in each group of ``m`` along the last dim."""
    _check_nm(scores, n, m)
    if use_triton(scores) and m & (m - 1) == 0:
        from . import triton as tri

        return tri.nm_mask(scores, n, m)
    return reference.nm_mask(scores, n, m)


def row_prune_mask(scores, k: int):
    """Boolean mask marking exactly ``k`` entries per row: the lowest scores (scores must be >= 0)."""
    if scores.dim() != 2 or not 0 <= k <= scores.shape[1]:
        raise AprError(f"row_prune_mask needs a 2-D score matrix and 0 <= k <= {scores.shape[-1]}, got k={k}")
    if use_triton(scores):
        from . import triton as tri

        return tri.row_prune_mask(scores, k)
    return reference.row_prune_mask(scores, k)

