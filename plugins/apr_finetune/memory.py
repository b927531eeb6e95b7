"""The memory plan of a fine-tuning run, and ``--method auto``'s choice.

Peak memory is the sum of

- **weights**: full fine-tuning keeps float32 master weights; LoRA keeps the frozen base in the
  compute dtype; QLoRA keeps the decoder linears as NF4 (4 bits, plus one absmax per 64 weights:
  an 8-bit code with double quantization, float32 without) and the rest in the compute dtype;
- **adapter** parameters r x (in + out) per target linear, float32;
- **gradients** of the trainable parameters (float32) and **optimizer** states (AdamW: two float32
  moments; 8-bit AdamW: two bytes);
- **activations** saved for the backward pass, per token and layer: what autograd keeps for each
  op of a Llama-style layer (RMSNorm inputs, rotary q/k, attention inputs and output, the SiLU and
  product inputs of the MLP; the inputs of every *trainable* linear, which for LoRA are the
  adapters' inputs only, since a frozen matmul needs no input to pass its gradient on), plus the
  attention probabilities where attention is not fused (the CPU). With gradient checkpointing only
  each layer's input is kept, plus one layer's activations while it is recomputed;
- the **logits** of one chunk of `training_chunk` tokens in float32: one buffer where the head
  and the cross-entropy are fused (`apr_core.runtime.linear_ce`: a float32 head without
  softcapping), three (logits, log-softmax and gradient) where autograd computes the chunk's
  loss (`apr_core.runtime.loss`); either way the batch x sequence x vocabulary logits never
  exist whole;
- on the CPU, the process itself: the **runtime** (Python, torch, transformers, peft, accelerate,
  bitsandbytes; measured in the planning process after importing them), the **model file**'s
  pages (read whole when the checksum is verified at load; counted once when the module's
  weights are views of them, i.e. when their dtype is the stored one), and the tokenized
  **data**. On CUDA the plan is the allocator's view (``torch.cuda.max_memory_allocated``),
  not the CUDA context.

Time per step is the step's FLOPs (2 per parameter and token forward, 2 more backward for the
activation gradients, 2 more for weight gradients of trainable weights, and one more forward with
checkpointing) over the device's matmul throughput, measured with a short probe. The constants
were checked against measured peaks by ``benchmarks/finetune.py`` (docs/finetune.md).
"""

from __future__ import annotations

import math
import os
from typing import Any

from apr_core.errors import AprError
from apr_core.runtime.loss import training_chunk  # tokens per LM-head chunk

HEADROOM = 0.9  # a plan fits --vram when its peak is at most 90% of it
AUTO_RANKS = (64, 32, 16, 8)
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _shape(model) -> dict[str, int]:
    cfg = model.text_config()
    heads = int(cfg["num_attention_heads"])
    return {"h": int(cfg["hidden_size"]), "i": int(cfg["intermediate_size"]), "layers": int(cfg["num_hidden_layers"]),
            "heads": heads, "kv": int(cfg.get("num_key_value_heads") or heads),
            "d": int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads), "vocab": int(cfg["vocab_size"])}


def _linears(model) -> dict[str, tuple[int, int]]:
    """Decoder-layer linear weights: name -> (out, in)."""
    import re

    pat = re.compile(r"layers\.\d+\..*\.weight$")
    return {n: tuple(model.spec(n).shape) for n in model.names()
            if pat.search(n) and len(model.spec(n).shape) == 2}


def _targets(params, linears) -> dict[str, tuple[int, int]]:
    targets = params.get("target_modules") or "q_proj,v_proj"
    if targets == "all-linear":
        return linears
    wanted = {t.strip() for t in targets.split(",")}
    return {n: s for n, s in linears.items() if n.rsplit(".", 2)[-2] in wanted}


def activation_bytes(shape: dict[str, int], method: str, targets_per_layer: int, rank: int, tokens: int,
                     batch: int, seq: int, elem: int, fused_attention: bool, checkpointing: bool) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass (see the module docstring).

    Per token and layer, counted from what a Llama-style layer saves (checked with
    ``torch.autograd.graph.saved_tensors_hooks`` on SmolLM2): both RMSNorms' inputs and outputs
    and their reciprocal RMS; the attention's q and output (query heads) and k, v (key/value
    heads) and its log-sum-exp; the gate and up projections and the SiLU output; for LoRA each
    adapter's input (the dropout output, plus its mask) and rank-r intermediate; for full
    fine-tuning the product that feeds down_proj (every other linear reads a tensor already
    kept). Unfused attention (the CPU with a padding mask) also keeps the b x heads x s x s
    probabilities.
    """
    h, i, a, kv, d, L = shape["h"], shape["i"], shape["heads"], shape["kv"], shape["d"], shape["layers"]
    floats = 4 * h + 2 + 2 * a * d + 2 * kv * d + a + 3 * i
    extra_bytes = 0
    if method == "full":
        floats += i
    else:
        floats += targets_per_layer * (h + rank)
        extra_bytes = targets_per_layer * h  # dropout masks, one byte per element
    attention = 0 if fused_attention else batch * a * seq * seq * elem
    layer = tokens * (floats * elem + extra_bytes) + attention
    kept = L * tokens * h * elem + layer if checkpointing else L * layer
    return {"activations": int(kept), "per_layer": int(layer)}


def plan_method(model, method: str, params: dict[str, Any], context, rank: int | None = None) -> dict[str, Any]:
    """Bytes of every term of one method's peak, and the estimated seconds per step."""
    if method not in ("full", "lora", "qlora"):
        raise AprError(f"unknown fine-tuning method {method!r}")
    shape = _shape(model)
    cuda = context.device.startswith("cuda")
    compute = context.compute_dtype()
    elem = BYTES[compute]
    linears = _linears(model)
    lin_params = sum(o * i for o, i in linears.values())
    total_params = model.param_count
    rank = rank or params.get("rank") or 16
    targets = _targets(params, linears) if method != "full" else {}
    adapter = sum(rank * (o + i) for o, i in targets.values())
    if method == "full":
        weights = 4 * total_params
        trainable = total_params
    elif method == "lora":
        weights = elem * total_params
        trainable = adapter
    else:
        scale = (1 / 64 + 4 / (64 * 256)) if params.get("double_quant", True) else 4 / 64
        weights = int(lin_params * (0.5 + scale)) + elem * (total_params - lin_params)
        trainable = adapter
    optimizer_bytes = 2 if params.get("optimizer", "adamw") != "adamw" else 8
    batch, seq = int(params.get("batch_size") or 4), int(params.get("max_seq_len") or 1024)
    tokens = batch * seq
    per_layer_targets = len(targets) // max(shape["layers"], 1)
    act = activation_bytes(shape, method, per_layer_targets, rank, tokens, batch, seq, elem,
                           fused_attention=cuda or batch == 1 or bool(params.get("packing")),
                           checkpointing=bool(params.get("gradient_checkpointing")))
    logits = logits_bytes(model, tokens, cuda, compute)
    parts = {
        "weights": int(weights),
        "adapter": 4 * adapter,
        "gradients": 4 * trainable,
        "optimizer": optimizer_bytes * trainable,
        "activations": act["activations"],
        "logits": logits,
    }
    if not cuda:  # the process's own memory: the runtime, the mapped model file, the tokenized data
        module_dtype = "float32" if method == "full" else compute
        aliased = method != "qlora" and _stored_dtype(model) == module_dtype
        parts["model_file"] = 0 if aliased else model.nbytes  # read whole at load (checksum)
        parts["runtime"] = _process_rss()
        parts["data"] = _data_bytes(params.get("data"))
    peak = sum(parts.values())
    flops = _step_flops(total_params, trainable, method, tokens, bool(params.get("gradient_checkpointing")))
    accum = int(params.get("grad_accum") or 1)
    rate = _matmul_rate(context.device, compute)
    return {"method": method, "rank": rank if method != "full" else None, "peak_bytes": int(peak), "parts": parts,
            "trainable_params": int(trainable), "tokens_per_micro_batch": tokens,
            "activations_per_layer_bytes": act["per_layer"],
            "step_flops": flops * accum, "seconds_per_step": round(flops * accum / rate, 3) if rate else None,
            "device_flops_per_second": rate}


def logits_bytes(model, tokens: int, cuda: bool, compute: str, fused: bool = True) -> int:
    """The float32 logits one LM-head chunk of a training step holds (see the module docstring);
    ``fused=False`` for a loss that autograd computes chunk by chunk whatever the head (distillation)."""
    fused = fused and compute == "float32" and not model.text_config().get("final_logit_softcapping")
    vocab = int(model.text_config()["vocab_size"])
    return (1 if fused else 3) * 4 * min(tokens, training_chunk("cuda" if cuda else "cpu")) * vocab


def _step_flops(params: int, trainable: int, method: str, tokens: int, checkpointing: bool) -> float:
    forward = 2 * params * tokens
    backward = 2 * params * tokens + (2 * params * tokens if method == "full" else 2 * 2 * trainable * tokens)
    return forward * (2 if checkpointing else 1) + backward


_RATE: dict[tuple[str, str], float] = {}


def _matmul_rate(device: str, dtype: str) -> float:
    """Achieved matmul FLOP/s on ``device`` in ``dtype`` (a short probe, cached)."""
    key = (device, dtype)
    if key not in _RATE:
        import time

        import torch

        n = 1024 if device == "cpu" else 8192
        a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
        best = math.inf
        for _ in range(4):  # the best of a few: a busy machine slows some repetitions
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        _RATE[key] = 2 * n ** 3 / max(best, 1e-9)
    return _RATE[key]


def _stored_dtype(model) -> str:
    """The torch name of the dtype most of the model's parameters are stored in."""
    counts = model.dtype_counts()
    name = max(counts, key=counts.get) if counts else "F32"
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(name, "quantized")


def _data_bytes(path: str | None) -> int:
    """The tokenized training set in Python lists: about 48 bytes per token, 3.5 bytes of jsonl per
    token."""
    if not path or not os.path.isfile(path):
        return 0
    return int(os.path.getsize(path) / 3.5 * 48)


_RSS: list[int] = []


def _process_rss() -> int:
    """Resident memory of this process when first asked (bytes), from /proc (0 where unavailable):
    the runtime's share, measured once so every plan of a run uses the same figure."""
    if not _RSS:
        import warnings

        with warnings.catch_warnings():  # what a training process imports, so its memory is counted
            warnings.simplefilter("ignore")
            from apr_core.runtime.startup import quiet_bitsandbytes

            with quiet_bitsandbytes():
                import accelerate  # noqa: F401
                import peft  # noqa: F401
                import transformers  # noqa: F401
        try:
            with open(f"/proc/{os.getpid()}/statm") as f:
                _RSS.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, IndexError):
            _RSS.append(0)
    return _RSS[0]


def budget_bytes(params, context) -> tuple[float, str]:
    """The memory to plan against: --vram, else the GPU's total memory, else available RAM."""
    if params.get("vram"):
        return params["vram"] * 1e9, f"--vram {params['vram']:g} GB"
    if context.device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(torch.device(context.device)).total_memory
        return float(total), f"{context.device}'s {total / 1e9:.1f} GB"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return float(info.get("MemAvailable", info.get("MemTotal", 0))), "available RAM"
    except OSError:
        return math.inf, "no known limit"


def choose(model, params, context) -> tuple[str, dict[str, Any]]:
    """``auto``: full, then LoRA, then QLoRA; for the adapter methods the highest rank (from
    --rank down) that fits the budget with 10% headroom; one line when nothing fits."""
    limit, where = budget_bytes(params, context)
    tried = []
    candidates = [("full", None)] + [(m, r) for m in ("lora", "qlora") for r in _ranks(params)]
    for method, rank in candidates:
        plan = plan_method(model, method, params, context, rank)
        tried.append(f"{method}{'' if rank is None else f' r{rank}'} {plan['peak_bytes'] / 1e9:.2f} GB")
        if plan["peak_bytes"] <= HEADROOM * limit:
            plan["why"] = (f"{method}{'' if rank is None else f' at rank {rank}'} is the first of "
                           f"full > LoRA > QLoRA (highest rank first) whose estimated peak "
                           f"{plan['peak_bytes'] / 1e9:.2f} GB fits 90% of {where}; tried: {'; '.join(tried)}")
            return method, plan
    raise AprError(f"no method fits {where} with 10% headroom (smallest: {tried[-1]}); lower --batch-size or "
                   f"--max-seq-len, or add --gradient-checkpointing")


def _ranks(params) -> tuple[int, ...]:
    top = params.get("rank") or 16
    return tuple(r for r in sorted({top, *AUTO_RANKS}, reverse=True) if r <= max(top, 8))


def describe(model, method: str, plan: dict[str, Any], params, context) -> dict[str, Any]:
    """The ``--plan`` report."""
    report: dict[str, Any] = {"technique": f"finetune {method}", "device": context.device,
                              "compute_dtype": context.compute_dtype(), "model_params": model.param_count,
                              "output_bytes": model.nbytes}
    if plan.get("why"):
        report["choice"] = plan["why"]
    report.update({"rank": plan["rank"], "trainable_params": plan["trainable_params"],
                   "peak_memory_bytes": plan["peak_bytes"], "seconds_per_step": plan["seconds_per_step"]})
    report["memory"] = [{"part": k, "bytes": v, "GB": round(v / 1e9, 3)} for k, v in plan["parts"].items()]
    if params.get("vram"):
        report["fits_vram"] = plan["peak_bytes"] <= HEADROOM * params["vram"] * 1e9
    return report
