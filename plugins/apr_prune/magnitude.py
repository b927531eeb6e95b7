"""Magnitude pruning: remove the smallest |W| (the baseline of the Wanda and SparseGPT papers).

Scores are compared across each whole weight matrix (layer-wise magnitude,
as the Wanda paper's baseline), or within each group of M inputs for N:M.
Needs no calibration, so it streams: each output tensor is pruned as the
writer asks for it.
"""

from __future__ import annotations

from apr_core.model import LazyTensor

from .common import SparsityTally, parse_pattern, prune_mask, require_float
from .sparse import SparsePruner


class Magnitude(SparsePruner):
    name = "magnitude"
    summary = "remove the smallest-magnitude weights of each matrix (no calibration)"
    paper = "Han et al. 2015 (magnitude pruning); the layer-wise baseline of Sun et al. 2023"

    def transform(self, inputs, params, context):
        from apr_core.runtime.layerwise import layers_prefix
        from apr_core.spill import TensorSpill

        model = inputs[0]
        require_float(model)
        nm = parse_pattern(params["pattern"])
        prefix = layers_prefix(model.config)
        tally = SparsityTally(nm, params["target_ratio"], model.param_count, context.report)
        out = model.derive()
        for name in model.names():
            spec = model.spec(name)
            if not (name.startswith(prefix) and name.endswith(".weight") and len(spec.shape) == 2):
                continue

            def load(lazy=model.tensors[name]):
                t = lazy.load().to(context.device, copy=True)
                t[prune_mask(t.float().abs(), params["target_ratio"], nm, per_row=False)] = 0
                tally.add(t)
                return t.cpu()

            out.tensors[name] = LazyTensor(spec, load)
        spill = TensorSpill()
        out.tensors.update(self._embedding_tensors(model, params, tally, spill, context.device))
        out.keepalive = (model.keepalive, spill)
        return out
