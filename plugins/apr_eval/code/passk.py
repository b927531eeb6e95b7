"""The unbiased pass@k estimator of Chen et al. 2021 (HumanEval paper, eq. 1 and its numerically
stable product form): 1 - C(n-c, k) / C(n, k) for n samples of which c passed.

Plain ``math``: this module is imported when ``apr plugins`` lists the tasks, which must stay
free of numpy/torch."""

from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: list[tuple[int, int]], ks) -> dict[str, float]:
    """Mean over problems of pass@k, for every k no larger than the fewest samples of any problem."""
    if not counts:
        return {}
    n_min = min(n for n, _ in counts)
    return {f"pass@{k}": math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            for k in sorted(set(int(k) for k in ks)) if k <= n_min}
