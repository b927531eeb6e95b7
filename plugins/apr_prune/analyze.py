"""``apr prune --analyze``: how sensitive each layer is, and how far the whole model can be pruned.

Two measurements, both with the chosen calibrated method (wanda by default):

1. Per layer (dense inputs, one pass): block influence 1 - cos(x_in, x_out),
   and the relative error of the layer's update, ||f_r(x) - f(x)|| / ||f(x) - x||,
   when only that layer is pruned at each ratio of the grid.
2. The whole model pruned sequentially at each ratio of the grid on a small
   calibration subset, with perplexity measured on held-out windows of the
   same corpus (drawn with a different seed). The recommended ratio is the
   largest whose perplexity rises by at most 5% over the dense model; the
   full curve is reported so a user can pick another tolerance.

Analysis costs one pruning pass per grid ratio, so it uses at most 16
calibration windows and 8 held-out windows (on SmolLM2-135M with 256-token
windows: a few minutes of CPU).
"""

from __future__ import annotations

import math
from typing import Any

GRID = (0.1, 0.2, 0.3, 0.4, 0.5)
LAYER_RATIOS = (0.3, 0.5)
TOLERANCE = 0.05
MAX_WINDOWS = 16
HELD_OUT = 8


def _heldout_nll(hidden, head, targets) -> float:
    """Mean next-token cross-entropy of final hidden states ``hidden`` against ``targets``."""
    import torch

    from apr_core.runtime.loss import next_token_loss

    norm, lm_head, cap = head
    total, count = 0.0, 0
    with torch.inference_mode():
        for h, ids in zip(hidden, targets):
            nll, n = next_token_loss(h, lambda x: lm_head(norm(x)), ids.to(h.device), softcap=cap)
            total += float(nll)
            count += n
    return total / count


def _head_modules(model, engine):
    """Final norm and LM head of the model, materialised on the engine's device (small next to the
    layers)."""
    import copy

    import torch

    skeleton = engine.skeleton
    norm = copy.deepcopy(skeleton.get_decoder().norm).to_empty(device=engine.device)
    prefix = engine.prefix[: -len("layers.")]
    norm.load_state_dict({"weight": model.tensor(prefix + "norm.weight").float()})
    head_name = "lm_head.weight" if "lm_head.weight" in model.tensors else prefix + "embed_tokens.weight"
    lm_head = torch.nn.Linear(int(model.text_config()["hidden_size"]), model.spec(head_name).shape[0], bias=False,
                              device=engine.device)
    lm_head.weight.data = model.tensor(head_name).to(engine.device, torch.float32)
    return norm.to(engine.dtype), lm_head.to(engine.dtype), model.text_config().get("final_logit_softcapping")


def analyze(technique, model, params, context) -> dict[str, Any]:
    import torch

    from apr_core.runtime.layerwise import Layerwise
    from apr_core.runtime.tokens import calibration_windows

    from .common import parse_pattern, require_float

    require_float(model)
    nm = parse_pattern(params["pattern"])
    n_cal = min(params["calibration_samples"], MAX_WINDOWS)
    cal = calibration_windows(model, params["calibration"], n_cal, params["calibration_seq_len"], context.seed)
    held = calibration_windows(model, params["calibration"], HELD_OUT, params["calibration_seq_len"],
                               context.seed + 1_000_003)
    batch = params["calibration_batch"]
    dtype = context.compute_dtype()
    engine = Layerwise(model, cal, batch, dtype, context.device)
    held_engine = Layerwise(model, held, batch, dtype, context.device)
    head = _head_modules(model, engine)
    targets = [held[s: s + batch] for s in range(0, held.shape[0], batch)]

    # 1. per-layer sensitivity on dense inputs, plus the dense held-out loss
    layer_ratios = LAYER_RATIOS if nm is None else (params["target_ratio"],)
    rows = []
    held_hidden = held_engine.inputs
    for step in engine.sweep(context.progress, "layer sensitivity"):
        hidden, layer = step.inputs, step.layer
        dense_out = step.forward()  # the dense outputs feed the next layer
        update = sum(float((o - h).pow(2).sum()) for o, h in zip(dense_out, hidden))
        cos = torch.cat([torch.nn.functional.cosine_similarity(h, o, dim=-1).reshape(-1)
                         for h, o in zip(hidden, dense_out)])
        row = {"layer": step.index, "block_influence": round(float(1 - cos.mean()), 5)}
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        for r in layer_ratios:
            technique.prune_layer(step, r, nm)
            pruned = engine.run(step.index, layer, hidden)
            err = sum(float((p - o).pow(2).sum()) for p, o in zip(pruned, dense_out))
            row[f"update_error@{r}"] = round(math.sqrt(err / max(update, 1e-30)), 5)
            layer.load_state_dict(state)
        held_hidden = held_engine.run(step.index, layer, held_hidden)
        rows.append(row)
    dense_ppl = math.exp(_heldout_nll(held_hidden, head, targets))

    # 2. whole-model curve: sequential pruning at each ratio
    curve = []
    grid = GRID if nm is None else (params["target_ratio"],)
    for r in context.progress(grid, desc="ratio sweep", total=len(grid)):
        held_hidden = held_engine.inputs
        for step in engine.sweep():
            technique.prune_layer(step, r, nm)
            held_hidden = held_engine.run(step.index, step.layer, held_hidden)
        ppl = math.exp(_heldout_nll(held_hidden, head, targets))
        curve.append({"ratio": r, "perplexity": round(ppl, 4), "increase": round(ppl / dense_ppl - 1, 4)})
    ok = [c["ratio"] for c in curve if c["increase"] <= TOLERANCE]
    report: dict[str, Any] = {
        "method": technique.name,
        "pattern": params["pattern"],
        "calibration_windows": n_cal,
        "held_out_windows": HELD_OUT,
        "dense_perplexity": round(dense_ppl, 4),
        "curve": curve,
        "recommended_ratio": max(ok) if ok else None,
        "recommendation_rule": f"largest ratio whose held-out perplexity rises by at most {TOLERANCE:.0%}",
        "most_sensitive_layers": [r["layer"] for r in sorted(
            rows, key=lambda r: -r[f"update_error@{layer_ratios[-1]}"])[:5]],
    }
    if context.verbose:
        report["layers"] = rows
    return report
