"""Width pruning: shrink the hidden size (the residual stream) of the whole model.

Two criteria, both computed from the dense model's residual stream on
calibration data (every layer's input and the final hidden state, pooled):

- ``rotation`` (default), after SliceGPT (Ashkboos et al. 2024): fold every
  RMSNorm's weights into the linear layers that read it, rotate the residual
  stream by the eigenvectors Q of its covariance, and keep the top principal
  directions. One global Q is used so that no extra "shortcut" matrices are
  needed and the result is a plain transformers model; SliceGPT's per-layer Q
  with shortcut matrices is more accurate but is not loadable as-is. A tied
  LM head cannot stay tied (the final norm's weights fold into it), so it is
  written as its own tensor.
- ``activation``: keep the channels with the most energy E[h_c^2]; weights
  are sliced, norms keep their weights, ties stay tied.

RMSNorm averages over the kept channels only, so every norm weight is scaled
by sqrt(d / d') to keep activations at their original scale. Supports models
whose layers use pre-norms only (Llama, Qwen2 and relatives); Gemma's extra
post-norms cannot absorb a rotation and are refused.
"""

from __future__ import annotations

import math

from apr_core.errors import AprError
from apr_core.model import LazyTensor, TensorSpec
from apr_core.params import Param

from .common import CALIBRATION_PARAMS, StructuralPruner, ratio_param, require_float

# role of each per-layer tensor: which norm folds into it (readers) or that it writes the stream (writers)
READERS = {"self_attn.q_proj.weight": "input_layernorm", "self_attn.k_proj.weight": "input_layernorm",
           "self_attn.v_proj.weight": "input_layernorm", "mlp.gate_proj.weight": "post_attention_layernorm",
           "mlp.up_proj.weight": "post_attention_layernorm"}
WRITERS = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")
UNTOUCHED = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
             "mlp.gate_proj.bias", "mlp.up_proj.bias")
NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def stream_covariance(model, params, context):
    """Sum of h h^T over calibration tokens at every layer input and the final hidden state."""
    import torch

    from apr_core.runtime.layerwise import Layerwise

    engine = Layerwise.calibrated(model, params, context)
    d = int(model.text_config()["hidden_size"])
    cov = torch.zeros(d, d, dtype=torch.float64, device=engine.device)

    def add(states):
        for h in states:
            x = h.reshape(-1, d).double()
            cov.add_(x.T @ x)

    for step in engine.sweep(context.progress, "width statistics"):
        add(step.inputs)
    add(engine.final)
    return cov.cpu()


class Width(StructuralPruner):
    name = "width"
    summary = "shrink the hidden size: PCA rotation (SliceGPT-style) or activation energy"
    paper = ("Ashkboos et al. 2024, SliceGPT: Compress Large Language Models by Deleting Rows and Columns "
             "(rotation); activation-energy channel selection")
    config_changes = ("hidden_size", "head_dim", "tie_word_embeddings")
    contract_ratio = "0.25"
    params = (
        ratio_param("Fraction of hidden dimensions to remove", 0.25),
        Param("criterion", "choice", "rotation", "How to choose the kept directions",
              choices=("rotation", "activation")),
        Param("round_to", "int", 8, "Keep a multiple of this many hidden dimensions", min=1),
    ) + CALIBRATION_PARAMS

    def transform(self, inputs, params, context):
        model = inputs[0]
        require_float(model)
        cfg = model.text_config()
        if "gemma" in model.model_type:
            raise AprError(f"width pruning does not support {model.model_type}: its post-norms and (1 + w) "
                           f"norm weights cannot absorb a change of basis; use --method structured or depth")
        d = int(cfg["hidden_size"])
        keep = d - round(params["target_ratio"] * d)
        keep = max(params["round_to"], round(keep / params["round_to"]) * params["round_to"])
        if keep >= d:
            raise AprError(f"--target-ratio {params['target_ratio']} removes nothing of hidden size {d}")
        cov = stream_covariance(model, params, context)
        if params["criterion"] == "rotation":
            import torch

            _evals, evecs = torch.linalg.eigh(cov)
            basis = evecs.flip(1)[:, :keep].float().contiguous()  # d x d', descending variance
            out = rotate(model, basis)
        else:
            channels = cov.diagonal().topk(keep).indices.sort().values
            out = select_channels(model, channels)
        context.report.update({"hidden_size": f"{d} -> {keep}", "criterion": params["criterion"],
                               "params": f"{model.param_count} -> {out.param_count}",
                               "tie_word_embeddings": bool(out.text_config().get("tie_word_embeddings"))})
        return out


def _rebuild(model, keep: int, prefix: str, make):
    """New Model with hidden size ``keep``; ``make(name, lazy, role) -> (shape, load)`` per tensor,
    where ``role`` is the name inside its decoder layer (None outside the layers)."""
    cfg = model.text_config()
    out = model.derive()
    out.tensors = {}
    for name, lazy in model.tensors.items():
        role = name[len(prefix):].split(".", 1)[1] if name.startswith(prefix) else None
        built = make(name, lazy, role)
        if built is None:
            raise AprError(f"width pruning does not know tensor {name} of {model.architecture}")
        shape, load = built
        out.tensors[name] = LazyTensor(TensorSpec(name, lazy.spec.dtype, tuple(shape)), load)
    tcfg = out.config.get("text_config") or out.config
    tcfg["head_dim"] = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    tcfg["hidden_size"] = keep
    return out


def _is_final_norm(name: str, role: str | None) -> bool:
    return role is None and name.endswith("norm.weight")


def _as(lazy, t):
    return t.to(lazy.spec.dt.torch_dtype()).contiguous()


def rotate(model, basis):
    """Fold every norm into its readers, rotate the stream by ``basis`` (d x d', orthonormal
    columns) and keep d' directions; norms become the uniform sqrt(d / d') rescaling."""
    import torch

    from apr_core.runtime.layerwise import layers_prefix

    d, keep = basis.shape
    scale = math.sqrt(d / keep)
    prefix = layers_prefix(model.config)
    final_norm = next(n for n in model.names() if not n.startswith(prefix) and _is_final_norm(n, None))

    def folded(lazy, norm_name):  # W diag(gamma) Q
        norm = model.tensors[norm_name]
        return (lazy.spec.shape[0], keep), lambda: _as(lazy, (lazy.load().float() * norm.load().float()) @ basis)

    def make(name, lazy, role):
        if name.endswith("embed_tokens.weight"):
            return (lazy.spec.shape[0], keep), lambda: _as(lazy, lazy.load().float() @ basis)
        if name.endswith("lm_head.weight"):
            return folded(lazy, final_norm)
        if role in READERS:
            return folded(lazy, name[: -len(role)] + READERS[role] + ".weight")
        if role in WRITERS:  # Q^T W (and Q^T b)
            shape = (keep,) if role.endswith("bias") else (keep, lazy.spec.shape[1])
            return shape, lambda: _as(lazy, basis.T @ lazy.load().float())
        if role in NORMS or _is_final_norm(name, role):
            return (keep,), lambda: _as(lazy, torch.full((keep,), scale))
        if role in UNTOUCHED:
            return lazy.spec.shape, lazy.load
        return None

    out = _rebuild(model, keep, prefix, make)
    if model.text_config().get("tie_word_embeddings"):
        embed = model.tensors[next(n for n in model.names() if n.endswith("embed_tokens.weight"))]
        shape, load = folded(embed, final_norm)
        out.tensors["lm_head.weight"] = LazyTensor(TensorSpec("lm_head.weight", embed.spec.dtype, shape), load)
        (out.config.get("text_config") or out.config)["tie_word_embeddings"] = False
    return out


def select_channels(model, channels):
    """Keep residual channels ``channels`` (sorted indices) everywhere; norms rescaled; ties kept."""
    from apr_core.runtime.layerwise import layers_prefix

    keep = int(channels.numel())
    scale = math.sqrt(int(model.text_config()["hidden_size"]) / keep)

    def make(name, lazy, role):
        shape = lazy.spec.shape
        if name.endswith(("embed_tokens.weight", "lm_head.weight")) or role in READERS:
            return (shape[0], keep), lambda: lazy.load()[:, channels].contiguous()
        if role in WRITERS:
            if role.endswith("bias"):
                return (keep,), lambda: lazy.load()[channels].contiguous()
            return (keep, shape[1]), lambda: lazy.load()[channels, :].contiguous()
        if role in NORMS or _is_final_norm(name, role):
            return (keep,), lambda: _as(lazy, lazy.load()[channels].float() * scale)
        if role in UNTOUCHED:
            return shape, lazy.load
        return None

    return _rebuild(model, keep, layers_prefix(model.config), make)
