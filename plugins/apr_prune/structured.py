"""Structured pruning: remove whole attention heads and FFN channels, physically.

Importance follows Wanda's structured variant: a structure's score is the sum
of |W| x ||X|| over the weights that read it — the o_proj columns of a query
head, the down_proj column of an FFN channel — with activation norms from
calibration data, computed layer by layer on the already-pruned model.

Transformers needs one head count and one intermediate size for every layer,
and every key/value head must serve the same number of query heads, so the
same number of query heads is removed from every KV group of every layer (the
least important ones in each group) and the same number of FFN channels from
every layer (rounded to ``--round-to``). Matrices shrink, the config is
updated (``head_dim`` is written explicitly since hidden_size / heads no
longer gives it), and the result loads in transformers, smaller and faster.
"""

from __future__ import annotations

import copy

from apr_core.errors import AprError
from apr_core.params import Param

from .common import CALIBRATION_PARAMS, StructuralPruner, ratio_param, require_float


def plan_sizes(cfg: dict, ratio: float, round_to: int) -> tuple[int, int]:
    """(query heads removed per KV group, FFN channels kept) for a removal ratio."""
    heads, kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    group = heads // kv
    drop = min(round(ratio * group), group - 1)
    inter = int(cfg["intermediate_size"])
    keep = inter - round(ratio * inter)
    keep = max(round_to, round(keep / round_to) * round_to)
    return drop, min(keep, inter)


class Structured(StructuralPruner):
    name = "structured"
    summary = "remove whole attention heads (per GQA group) and FFN channels; matrices shrink"
    paper = "Sun et al. 2023 (Wanda structured variant); head/channel removal as in Ma et al. 2023 (LLM-Pruner)"
    config_changes = ("num_attention_heads", "intermediate_size", "head_dim")
    params = (
        ratio_param("Fraction of query heads (per KV group) and FFN channels to remove", 0.25),
        Param("round_to", "int", 8, "Keep a multiple of this many FFN channels (hardware-friendly shapes)", min=1),
    ) + CALIBRATION_PARAMS

    def transform(self, inputs, params, context):
        import torch

        from apr_core.runtime.layerwise import Layerwise
        from apr_core.spill import TensorSpill

        model = inputs[0]
        require_float(model)
        cfg = model.text_config()
        heads, kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        drop, keep_ffn = plan_sizes(cfg, params["target_ratio"], params["round_to"])
        if drop == 0 and keep_ffn == int(cfg["intermediate_size"]):
            raise AprError(f"--target-ratio {params['target_ratio']} removes nothing at this model's granularity")
        engine = Layerwise.calibrated(model, params, context)
        new_heads = heads - drop * kv
        new_cfg = copy.deepcopy(engine.skeleton.config)
        new_cfg.num_attention_heads, new_cfg.intermediate_size, new_cfg.head_dim = new_heads, keep_ffn, head_dim
        spill = TensorSpill()
        out = model.derive(keepalive=(model.keepalive, spill))
        for name in list(out.tensors):
            if name.startswith(engine.prefix):
                del out.tensors[name]
        for step in engine.sweep(context.progress, "structured"):
            layer = step.layer
            attn, mlp = layer.self_attn, layer.mlp
            zeros = {"dtype": torch.float64, "device": engine.device}
            sq = {"o": torch.zeros(attn.o_proj.in_features, **zeros),
                  "down": torch.zeros(mlp.down_proj.in_features, **zeros)}
            step.statistics([("o", attn.o_proj), ("down", mlp.down_proj)],
                            lambda n, x: sq[n].add_(x.double().pow(2).sum(0)))
            col_o = (attn.o_proj.weight.abs().double() * sq["o"].sqrt()).sum(0)
            col_down = (mlp.down_proj.weight.abs().double() * sq["down"].sqrt()).sum(0)
            keep_heads = _keep_heads(col_o.view(heads, head_dim).sum(1), kv, drop)
            keep_ch = col_down.topk(keep_ffn).indices.sort().values
            new_layer = type(layer)(new_cfg, layer_idx=step.index).to(engine.dtype).eval()
            new_layer.load_state_dict(_shrink(layer.state_dict(), keep_heads.cpu(), keep_ch.cpu(), head_dim))
            step.replace(new_layer)
            out.tensors.update(spill.put(step.state()))
        tcfg = out.config.get("text_config") or out.config
        tcfg.update(num_attention_heads=new_heads, intermediate_size=keep_ffn, head_dim=head_dim)
        context.report.update({"attention_heads": f"{heads} -> {new_heads} (kv heads {kv})",
                               "intermediate_size": f"{cfg['intermediate_size']} -> {keep_ffn}",
                               "params": f"{model.param_count} -> {out.param_count}",
                               "removed_fraction": round(1 - out.param_count / model.param_count, 4)})
        return out


def _keep_heads(importance, kv: int, drop: int):
    """Indices of query heads to keep: the most important (group size - drop) of every KV group."""
    import torch

    group = importance.numel() // kv
    keep = []
    for g in range(kv):
        scores = importance[g * group:(g + 1) * group]
        keep.append(scores.topk(group - drop).indices.sort().values + g * group)
    return torch.cat(keep)


def _shrink(state: dict, keep_heads, keep_ch, head_dim: int) -> dict:
    import torch

    rows = (keep_heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
    out = dict(state)
    for key in ("self_attn.q_proj.weight", "self_attn.q_proj.bias"):
        if key in out:
            out[key] = out[key][rows].contiguous()
    out["self_attn.o_proj.weight"] = out["self_attn.o_proj.weight"][:, rows].contiguous()
    for key in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias"):
        if key in out:
            out[key] = out[key][keep_ch].contiguous()
    out["mlp.down_proj.weight"] = out["mlp.down_proj.weight"][:, keep_ch].contiguous()
    return out
