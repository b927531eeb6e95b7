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
                     check_ratio_and_pattern, parse_pattern, prune_mask)

EMBEDDING_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


class SparsePruner(TransformTechnique):
    kind = "prune"
    params = (TARGET_RATIO, PATTERN, INCLUDE_EMBEDDINGS)

    def check(self, params: dict[str, Any]) -> None:
        check_ratio_and_pattern(params)

    def contract_params(self, workdir, inputs):
        return {"target_ratio": "0.5"}

    def _embedding_tensors(self, model, params, tally, spill) -> dict[str, LazyTensor]:
        """Per-row magnitude pruning of embeddings / LM head, when asked (one tensor at a time)."""
        out: dict[str, LazyTensor] = {}
        if not params["include_embeddings"]:
            return out
        nm = parse_pattern(params["pattern"])
        for name in model.names():
            if name.endswith(EMBEDDING_SUFFIXES):
                w = model.tensor(name).clone()
                w[prune_mask(w.float().abs(), params["target_ratio"], nm, per_row=True)] = 0
                tally.add(w)
                out.update(spill.put({name: w}))
        return out


class CalibratedPruner(SparsePruner):
    """Pruners that weigh weights by calibration activations, layer by layer."""

    params = SparsePruner.params + CALIBRATION_PARAMS
    random = True  # --seed picks the calibration windows

    def contract_params(self, workdir, inputs):
        from .calibration import contract_calibration

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

    def prune_layer(self, engine, i: int, layer, hidden, ratio: float, nm, tally=None) -> None:
        """Gather input statistics of ``layer``'s linears over ``hidden`` and prune them in place."""
        from .layerwise import with_input_hooks

        linears = list(engine.linears(layer))
        stats = {name: self.new_stats(mod) for name, mod in linears}
        handles = with_input_hooks(linears, lambda name, x: self.accumulate(stats[name], x))
        try:
            engine.run(i, layer, hidden)
        finally:
            for h in handles:
                h.remove()
        for name, mod in linears:
            self.prune_linear(mod, stats[name], ratio, nm)
            if tally is not None:
                tally.add(mod.weight.detach())

    def transform(self, inputs, params, context):
        from apr_core.spill import TensorSpill

        from .layerwise import Layerwise

        model = inputs[0]
        nm = parse_pattern(params["pattern"])
        engine = Layerwise.calibrated(model, params, context.seed)
        spill = TensorSpill()
        tally = SparsityTally(nm, params["target_ratio"], model.param_count, context.report)
        out = model.derive(keepalive=(model.keepalive, spill))
        hidden = engine.inputs
        for i in context.progress(range(engine.num_layers), desc=self.name, total=engine.num_layers):
            layer = engine.materialize(i)
            self.prune_layer(engine, i, layer, hidden, params["target_ratio"], nm, tally)
            hidden = engine.run(i, layer, hidden)
            out.tensors.update(spill.put(engine.state(i, layer)))
            engine.release(layer)
        out.tensors.update(self._embedding_tensors(model, params, tally, spill))
        return out
