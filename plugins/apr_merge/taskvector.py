"""The task-vector family: task arithmetic, TIES, DARE and DARE-TIES as one algorithm.

For inputs x_i fine-tuned from a base b, the task vectors are tau_i = x_i - b
(Ilharco et al. 2023). A member of the family chooses

- a sparsification of each tau_i: none, ``magnitude`` (TIES' trim: keep the
  ``--density`` fraction of largest |tau_i| in each tensor) or ``random``
  (DARE: drop each entry with probability ``--drop-rate`` and rescale the
  survivors by 1/(1-p), seeded by ``--seed``);
- a consensus: none (weighted sum) or ``sign`` (TIES' sign election by summed
  weighted magnitude, then the mean over the inputs that agree with it);

and the result is ``b + scaling * merged``. With ``--normalize`` (default) the
weighted sum is divided by the sum of the weights (of the agreeing inputs,
for sign consensus), so by default the merged task vector is a mean; with
``--no-normalize`` and weights 1 it is the sum of Ilharco et al.
"""

from __future__ import annotations

from apr_core.params import Param

from .common import BASE_MODEL, MergeTechnique, stream_seed, weights_param

SCALING = Param("scaling", "float", 1.0, "lambda: the merged task vector is multiplied by this before it is "
                "added to the base")
NORMALIZE = Param("normalize", "bool", True, "Divide the weighted sum of task vectors by the sum of the weights "
                  "(a mean); --no-normalize adds them (Ilharco et al.'s sum)")
WEIGHTS = weights_param("One weight per model: task-vector strategies weigh each task vector (default equal); "
                        "weighted: shares, normalised; slerp: a,b shares of the first and second model")
DENSITY = Param("density", "float", 0.2, "Fraction of each task vector kept, by magnitude, per tensor "
                "(TIES' k; the paper's default keeps the top 20%)", min=0, max=1, min_exclusive=True)
DROP_RATE = Param("drop_rate", "float", 0.3, "Probability of dropping each task-vector entry; survivors are "
                  "scaled by 1/(1-p)", min=0, max=1, max_exclusive=True)
COMMON = (BASE_MODEL, WEIGHTS, SCALING, NORMALIZE)


class TaskVectorMerge(MergeTechnique):
    """Generalised task arithmetic; subclasses pick ``sparsify`` and ``consensus``."""

    uses_base = True
    min_inputs = 1
    sparsify: str | None = None  # None, "magnitude" or "random"
    consensus: str | None = None  # None or "sign"

    def contract_params(self, workdir, input_paths):
        from apr_core.testing import write_tiny

        return {"base_model": write_tiny(workdir / "base.apr", seed=99)}

    def prepare(self, plan, views, base, params, context):
        if self.sparsify != "magnitude":
            return None
        from apr_core.kernels.merge import kth_largest_magnitude

        from .common import CHUNK

        def task_vector(v):
            return lambda: (v[s:s + CHUNK].float() - base[s:s + CHUNK].float() for s in range(0, v.numel(), CHUNK))

        return [kth_largest_magnitude(task_vector(v), v.numel(), params["density"]) for v in views]

    def combine(self, chunks, base, state, start, plan, params, context):
        import torch

        from apr_core.kernels.merge import dare_, ties_combine

        weights = list(params["weights"]) if params["weights"] is not None else [1.0] * len(chunks)
        deltas = [(x - base).float() for x in chunks]  # the kernels work in float32
        if self.sparsify == "random":
            for i, d in enumerate(deltas):
                dare_(d, params["drop_rate"], stream_seed(context.seed, plan.name, i), start)
        if self.consensus == "sign":
            thresholds = state if state is not None else [0.0] * len(deltas)
            merged = ties_combine(torch.stack(deltas), thresholds, weights, params["normalize"])
        else:
            merged = torch.zeros_like(deltas[0])
            for w, d in zip(weights, deltas):
                if w:
                    merged += w * d
            if params["normalize"]:
                merged /= sum(weights)
        return base + params["scaling"] * merged.to(base.dtype)

