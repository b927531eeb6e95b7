"""The weighted mean: ``average`` (uniform soup) and ``weighted`` (``--weights``), one row each.

Computed as ``x_1 + sum_i w_i (x_i - x_1)`` with the weights normalised to sum
to 1: the same value as ``sum_i w_i x_i`` up to rounding, but exact where it
matters: merging identical models returns them bit for bit and weights
(1, 0) return the first model unchanged. ``weighted`` normalises its weights,
so ``0.7,0.3`` and ``7,3`` mean the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from apr_core.params import Param

from .common import MergeTechnique, normalized, weights_param


@dataclass(frozen=True)
class Mean:
    name: str
    summary: str
    paper: str
    params: tuple[Param, ...] = ()


MEANS = (
    Mean("average", "arithmetic mean of the models' weights", "Wortsman et al. 2022, Model soups (uniform soup)"),
    Mean("weighted", "weighted mean of the models (--weights, one per model, normalised)",
         "Wortsman et al. 2022 (weighted soups); Matena & Raffel 2022 (weighted averaging)",
         (weights_param("One weight per model, normalised to sum to 1 (e.g. 0.7,0.3)", required=True),)),
)


class LinearMerge(MergeTechnique):
    def __init__(self, row: Mean) -> None:
        self.name, self.summary, self.paper, self.params = row.name, row.summary, row.paper, row.params

    def contract_params(self, workdir, inputs):
        if any(p.name == "weights" for p in self.params):
            return {"weights": ",".join(["0.7", "0.3", "0.1", "0.1"][:len(inputs)])}
        return {}

    def combine(self, chunks, base, state, start, plan, params, context):
        weights = normalized(params.get("weights"), len(chunks))
        first = chunks[0]
        out = first.clone()
        for w, x in zip(weights[1:], chunks[1:]):
            if w:
                out += w * (x - first)
        return out


def techniques() -> list[LinearMerge]:
    return [LinearMerge(row) for row in MEANS]
