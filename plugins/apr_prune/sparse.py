"""The shared machinery of unstructured / N:M pruning (magnitude, wanda, sparsegpt).

`SparsePruner` validates ratio and pattern, prunes embeddings and the LM
head by per-row magnitude when asked, and reports achieved sparsity.
`CalibratedPruner` adds the layer-by-layer calibration loop: for each decoder
layer, statistics of every linear's inputs are gathered over the calibration
batches (dense weights of this layer, inputs from the already-pruned layers
before it), the layer's linears are pruned, and the pruned layer's outputs
become the next layer's inputs.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from apr_core.model import LazyTensor
from apr_core.technique import TransformTechnique

from .common import (CALIBRATION_PARAMS, INCLUDE_EMBEDDINGS, PATTERN, TARGET_RATIO, SparsityTally,
                     check_ratio_and_pattern, contract_calibration, parse_pattern, prune_mask,
                     require_float)

EMBEDDING_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


class SparsePruner(TransformTechnique):
    kind = "prune"
    params = (TARGET_RATIO, PATTERN, INCLUDE_EMBEDDINGS)

    def check(self, params: dict[str, Any]) -> None:
        check_ratio_and_pattern(params)

    def contract_params(self, workdir, inputs):
        return {"target_ratio": "0.5"}

    def _embedding_tensors(self, model, params, tally, spill, device) -> dict[str, LazyTensor]:
        """Per-row magnitude pruning of embeddings / LM head, when asked (one tensor at a time)."""
        out: dict[str, LazyTensor] = {}
        if not params["include_embeddings"]:
            return out
        nm = parse_pattern(params["pattern"])
        for name in model.names():
            if name.endswith(EMBEDDING_SUFFIXES):
                w = model.tensor(name).to(device, copy=True)
                w[prune_mask(w.float().abs(), params["target_ratio"], nm, per_row=True)] = 0
                tally.add(w)
                out.update(spill.put({name: w.cpu()}))
        return out


class CalibratedPruner(SparsePruner):
    """Pruners that weigh weights by calibration activations, layer by layer."""

    params = SparsePruner.params + CALIBRATION_PARAMS
    random = True  # --seed picks the calibration windows
    actions = ("analyze",)

    def contract_params(self, workdir, inputs):
        return {"target_ratio": "0.5", **contract_calibration(workdir)}

    @abstractmethod
    def new_stats(self, linear) -> Any:
        """Empty statistics for one linear layer's inputs."""

    @abstractmethod
    def accumulate(self, stats: Any, x) -> None:
        """Add a batch of inputs ``x`` (tokens x in_features) to ``stats``."""

    @abstractmethod
    def prune_linear(self, linear, stats: Any, ratio: float, nm) -> None:
        """Zero (and, for SparseGPT, update) ``linear.weight`` in place."""

    def analyze(self, inputs, params, context):
        """``apr prune --analyze``: per-layer sensitivity and a recommended ratio; writes nothing."""
        from .analyze import analyze

        return analyze(self, inputs[0], params, context)

    def prune_layer(self, step, ratio: float, nm, tally=None) -> None:
        """Gather input statistics of the step's linears over its inputs and prune them in place."""
        linears = list(step.linears())
        stats = {name: self.new_stats(mod) for name, mod in linears}
        step.statistics(linears, lambda name, x: self.accumulate(stats[name], x))
        for name, mod in linears:
            self.prune_linear(mod, stats[name], ratio, nm)
            if tally is not None:
                tally.add(mod.weight.detach())

    def transform(self, inputs, params, context):
        from apr_core.runtime.layerwise import Layerwise
        from apr_core.spill import TensorSpill

        model = inputs[0]
        require_float(model)
        nm = parse_pattern(params["pattern"])
        engine = Layerwise.calibrated(model, params, context)
        spill = TensorSpill()
        tally = SparsityTally(nm, params["target_ratio"], model.param_count, context.report)
        out = model.derive(keepalive=(model.keepalive, spill))
        for step in engine.sweep(context.progress, self.name):
            self.prune_layer(step, params["target_ratio"], nm, tally)
            out.tensors.update(spill.put(step.state()))
        out.tensors.update(self._embedding_tensors(model, params, tally, spill, context.device))
        return out
