"""The weighted mean shared by `average` and `weighted`.

Computed as ``x_1 + sum_i w_i (x_i - x_1)`` with the weights normalised to sum
to 1: the same value as ``sum_i w_i x_i`` up to rounding, but exact where it
matters: merging identical models returns them bit for bit and weights
(1, 0) return the first model unchanged.
"""

from __future__ import annotations

from .common import MergeTechnique, normalized


class LinearMerge(MergeTechnique):
    def merge_weights(self, params, n: int) -> list[float]:
        return normalized(params.get("weights"), n)

    def combine(self, chunks, base, state, start, plan, params, context):
        weights = self.merge_weights(params, len(chunks))
        first = chunks[0]
        out = first.clone()
        for w, x in zip(weights[1:], chunks[1:]):
            if w:
                out += w * (x - first)
        return out
