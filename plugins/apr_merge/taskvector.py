"""The task-vector family: task arithmetic, TIES, DARE and DARE-TIES as one algorithm, one row each.

For inputs x_i fine-tuned from a base b, the task vectors are tau_i = x_i - b
(Ilharco et al. 2023). A member of the family chooses

- a sparsification of each tau_i: none, ``magnitude`` (TIES' trim: keep the
  k = floor(``--density`` * n) largest |tau_i| of each tensor, as mergekit
  does; entries tied with the k-th largest are kept too) or ``random``
  (DARE: drop each entry with probability ``--drop-rate`` and rescale the
  survivors by 1/(1-p), Philox-seeded by ``--seed``, the tensor and the
  input, so CPU and GPU drop the same entries);
- a consensus: none (weighted sum) or ``sign`` (TIES' sign election by summed
  weighted magnitude, then only the entries that agree with it);

and the result is ``b + scaling * merged``. ``--normalize`` divides the
weighted sum by the sum of the weights (of the agreeing inputs, for sign
consensus). Defaults follow the papers and mergekit: task arithmetic and DARE
add the task vectors (Ilharco et al.'s and Yu et al.'s sum), TIES and
DARE-TIES take the disjoint mean (Yadav et al.). Adding a variant is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from apr_core.params import Param, Search

from .common import BASE_MODEL, MergeTechnique, stream_seed, weights_param

SCALING = Param("scaling", "float", 1.0, "lambda: the merged task vector is multiplied by this before it is "
                "added to the base", search=Search(0.3, 1.5))
WEIGHTS = weights_param("One weight per model: task-vector strategies weigh each task vector (default equal); "
                        "weighted: shares, normalised; slerp: a,b shares of the first and second model")
DENSITY = Param("density", "float", 0.2, "Fraction of each task vector kept, by magnitude, per tensor "
                "(TIES' k = floor(density * n); the paper's default keeps the top 20%)", min=0, max=1,
                min_exclusive=True, search=Search(0.05, 0.9))
DROP_RATE = Param("drop_rate", "float", 0.3, "Probability of dropping each task-vector entry; survivors are "
                  "scaled by 1/(1-p)", min=0, max=1, max_exclusive=True,
                  search=Search(0.1, 0.9))


def normalize_param(default: bool) -> Param:
    return Param("normalize", "bool", default, "Divide the weighted sum of task vectors by the sum of the "
                 "weights (of the agreeing inputs under sign consensus): a mean instead of a sum")


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    paper: str
    sparsify: str | None  # None, "magnitude" or "random"
    consensus: str | None  # None or "sign"
    normalize: bool  # the default of --normalize

    @property
    def params(self) -> tuple[Param, ...]:
        extra = {"magnitude": (DENSITY,), "random": (DROP_RATE,), None: ()}[self.sparsify]
        return (BASE_MODEL, WEIGHTS, SCALING, normalize_param(self.normalize)) + extra


VARIANTS = (
    Variant("task_arithmetic", "add the weighted task vectors (input - base) to the base model",
            "Ilharco et al. 2023, Editing models with task arithmetic (ICLR)", None, None, False),
    Variant("ties", "trim each task vector to --density by magnitude, elect signs, average the agreeing values",
            "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)",
            "magnitude", "sign", True),
    Variant("dare", "drop task-vector entries with probability --drop-rate, rescale by 1/(1-p), add to the base",
            "Yu et al. 2024, Language Models are Super Mario (ICML; arXiv 2311.03099)", "random", None, False),
    Variant("dare_ties", "DARE drop-and-rescale of each task vector, then TIES sign election and disjoint mean",
            "Yu et al. 2024 (DARE) with Yadav et al. 2023 (TIES sign consensus)", "random", "sign", True),
)


class TaskVectorMerge(MergeTechnique):
    """Generalised task arithmetic, configured by a `Variant` row."""

    uses_base = True
    min_inputs = 1

    def __init__(self, row: Variant) -> None:
        self.name, self.summary, self.paper = row.name, row.summary, row.paper
        self.params = row.params
        self.sparsify, self.consensus = row.sparsify, row.consensus
        self.random = row.sparsify == "random"

    def contract_params(self, workdir, inputs):
        from apr_core.testing import write_tiny

        return {"base_model": write_tiny(workdir / "base.apr", seed=99)}

    def prepare(self, plan, views, base, params, context):
        if self.sparsify != "magnitude":
            return None
        from apr_core.kernels.merge import task_vector_threshold

        from .common import CHUNK

        return [task_vector_threshold(v, base, params["density"], context.device, CHUNK) for v in views]

    def combine(self, chunks, base, state, start, plan, params, context):
        import torch

        from apr_core.kernels.merge import dare_, ties_combine

        weights = list(params["weights"]) if params["weights"] is not None else [1.0] * len(chunks)
        # the kernels work in float32; the task vectors are written straight into one stacked buffer
        stacked = torch.empty((len(chunks), base.numel()), dtype=torch.float32, device=base.device)
        for i, x in enumerate(chunks):
            torch.sub(x, base, out=stacked[i])
        deltas = list(stacked)
        if self.sparsify == "random":
            for i, d in enumerate(deltas):
                dare_(d, params["drop_rate"], stream_seed(context.seed, plan.name, i), start)
        if self.consensus == "sign":
            thresholds = state if state is not None else [0.0] * len(deltas)
            merged = ties_combine(stacked, thresholds, weights, params["normalize"])
        else:
            merged = torch.zeros_like(deltas[0])
            for w, d in zip(weights, deltas):
                if w:
                    merged += w * d
            if params["normalize"]:
                merged /= sum(weights)
        return base + params["scaling"] * merged.to(base.dtype)


def techniques() -> list[TaskVectorMerge]:
    return [TaskVectorMerge(row) for row in VARIANTS]
