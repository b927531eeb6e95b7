"""Depth pruning: remove whole decoder layers (ShortGPT, Men et al. 2024).

Layers are chosen by Block Influence on calibration data, BI = 1 - mean over
tokens of cos(x_in, x_out) for each layer's input and output hidden states of
the dense model: the layers that change the residual stream least go first.
``--remove-layers 20-24`` (inclusive ranges and commas) names them instead.
Remaining layers are renumbered and the config (``num_hidden_layers`` and the
per-layer ``layer_types``) updated, so the result loads in transformers. The
output streams: tensors are renamed views of the input.
"""

from __future__ import annotations

import re

from apr_core.errors import AprError
from apr_core.model import LazyTensor, TensorSpec
from apr_core.params import Param

from .common import CALIBRATION_PARAMS, StructuralPruner, ratio_param

PER_LAYER_CONFIG_LISTS = ("layer_types",)


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'20-24' -> [20, 21, 22, 23, 24]; '3,7-8' -> [3, 7, 8]; validated against the layer count."""
    out: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not m:
            raise AprError(f"--remove-layers {spec!r}: use indices and inclusive ranges like 20-24,27")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= num_layers:
            raise AprError(f"--remove-layers {spec!r}: layers run 0..{num_layers - 1}")
        out.update(range(lo, hi + 1))
    if len(out) >= num_layers:
        raise AprError(f"--remove-layers {spec!r} would remove every layer")
    return sorted(out)


def block_influence(model, params, context) -> list[float]:
    """BI of every decoder layer of the dense model on the calibration windows."""
    import torch
    import torch.nn.functional as F

    from apr_core.runtime.layerwise import Layerwise

    scores = []
    for step in Layerwise.calibrated(model, params, context).sweep(context.progress, "block influence"):
        out = step.forward()
        cos = torch.cat([F.cosine_similarity(a.float(), b.float(), dim=-1).reshape(-1)
                         for a, b in zip(step.inputs, out)])
        scores.append(float(1 - cos.mean()))
    return scores


def drop_layers(model, remove: list[int], prefix: str):
    """A new Model without the given layers, renumbered, config updated (tensors stay lazy)."""
    n = int(model.text_config()["num_hidden_layers"])
    keep = [i for i in range(n) if i not in set(remove)]
    new_index = {old: new for new, old in enumerate(keep)}
    out = model.derive()
    out.tensors = {}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    for name, lazy in model.tensors.items():
        m = pattern.fullmatch(name)
        if m is None:
            out.tensors[name] = lazy
            continue
        old = int(m.group(1))
        if old in new_index:
            new_name = f"{prefix}{new_index[old]}.{m.group(2)}"
            out.tensors[new_name] = LazyTensor(TensorSpec(new_name, lazy.spec.dtype, lazy.spec.shape), lazy.load)
    cfg = out.config.get("text_config") or out.config
    cfg["num_hidden_layers"] = len(keep)
    for key in PER_LAYER_CONFIG_LISTS:
        if isinstance(cfg.get(key), list) and len(cfg[key]) == n:
            cfg[key] = [cfg[key][i] for i in keep]
    if isinstance(cfg.get("max_window_layers"), int):
        cfg["max_window_layers"] = sum(1 for i in keep if i < cfg["max_window_layers"])
    return out


class Depth(StructuralPruner):
    name = "depth"
    summary = "remove whole decoder layers by block influence (or --remove-layers)"
    paper = "Men et al. 2024, ShortGPT: Layers in Large Language Models are More Redundant Than You Expect"
    config_changes = ("num_hidden_layers", "layer_types", "max_window_layers")
    params = (
        ratio_param("Fraction of decoder layers to remove (rounded, at least one)", 0.25),
        Param("remove_layers", "str", None, "Layers to remove instead, e.g. 20-24 or 3,7-9 (0-based, inclusive)"),
    ) + CALIBRATION_PARAMS

    def contract_params(self, workdir, inputs):
        return {"remove_layers": "1"}

    def transform(self, inputs, params, context):
        from apr_core.runtime.layerwise import layers_prefix

        model = inputs[0]
        n = int(model.text_config()["num_hidden_layers"])
        if params["remove_layers"]:
            remove = parse_layers(params["remove_layers"], n)
            scores = None
        else:
            count = max(1, round(params["target_ratio"] * n))
            if count >= n:
                raise AprError(f"--target-ratio {params['target_ratio']} would remove all {n} layers")
            scores = block_influence(model, params, context)
            remove = sorted(sorted(range(n), key=lambda i: scores[i])[:count])
        out = drop_layers(model, remove, layers_prefix(model.config))
        context.report.update({"removed_layers": remove, "layers": f"{n} -> {n - len(remove)}",
                               "params": f"{model.param_count} -> {out.param_count}"})
        if scores is not None:
            context.report["block_influence"] = [round(s, 5) for s in scores]
        return out
