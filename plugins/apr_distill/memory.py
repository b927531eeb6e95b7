"""``apr distill --plan``: the memory and time of a distillation run.

The student's terms are finetune's plan (`apr_finetune.memory.plan_method`: weights, gradients,
optimizer, activations, one logit chunk) for ``--method full`` or ``lora``; its logit chunk is
three fp32 tensors, since the KD term's chunks go through autograd rather than the fused head
(unless ``--alpha 0``). Each resident teacher adds its weights in the compute dtype (quantized teachers at their stored size), its final
hidden states for one micro-batch, and one chunk of fp32 logits (the KD term holds teacher and
student chunks side by side). With ``--cache-teacher`` the teachers are resident only while the
cache is built, not during training; the cache's size on disk is estimated from the data's
answer tokens. Time per step adds each teacher's forward (2 FLOPs per parameter and token).
"""

from __future__ import annotations

import math
from typing import Any

from apr_core.runtime.loss import training_chunk


def plan(strategy: str, teachers, student, params, context) -> dict[str, Any]:
    from apr_finetune.memory import BYTES, _matmul_rate, logits_bytes, plan_method

    method = params["method"]
    fparams = dict(params, alpha=params["lora_alpha"])
    student_plan = plan_method(student, method, fparams, context)
    compute = context.compute_dtype()
    elem = BYTES[compute]
    tokens = student_plan["tokens_per_micro_batch"]
    parts = dict(student_plan["parts"])
    if params["alpha"] > 0:  # the KD term's chunks go through autograd, not the fused head
        parts["logits"] = logits_bytes(student, tokens, context.device.startswith("cuda"), compute, fused=False)
    cached = bool(params["cache_teacher"])
    teacher_bytes, chunk = 0, training_chunk("cuda" if context.device.startswith("cuda") else "cpu")
    for i, t in enumerate(teachers):
        quantized = any(t.spec(n).dt.quantized for n in list(t.names())[:64])
        weights = t.nbytes if quantized else elem * t.param_count
        hidden = tokens * int(t.text_config()["hidden_size"]) * elem
        logits = 4 * min(tokens, chunk) * int(t.text_config()["vocab_size"])
        teacher_bytes += weights + hidden + logits
        if not cached:
            parts[f"teacher{i}_weights" if len(teachers) > 1 else "teacher_weights"] = int(weights)
            parts[f"teacher{i}_activations" if len(teachers) > 1 else "teacher_activations"] = int(hidden + logits)
    peak = sum(parts.values())
    rate = _matmul_rate(context.device, compute)
    accum = int(params.get("grad_accum") or 1)
    teacher_flops = 0 if cached else sum(2 * t.param_count * tokens for t in teachers) * accum
    flops = student_plan["step_flops"] + teacher_flops
    report: dict[str, Any] = {"technique": f"distill {strategy}", "device": context.device, "compute_dtype": compute,
                              "method": method, "teachers": len(teachers),
                              "teacher_params": [t.param_count for t in teachers],
                              "student_params": student.param_count,
                              "student_layers": int(student.text_config()["num_hidden_layers"]),
                              "trainable_params": student_plan["trainable_params"],
                              "peak_memory_bytes": int(peak),
                              "seconds_per_step": round(flops / rate, 3) if rate else None,
                              "output_bytes": student.nbytes}
    if cached:
        k = min(params["cache_top_k"], int(student.text_config()["vocab_size"]))
        bits = math.ceil(math.log2(int(student.text_config()["vocab_size"])))
        per_token = k * (bits / 8 + 2) + 2
        report["cache_bytes_per_token"] = round(per_token, 2)
        report["cache_build_peak_bytes"] = int(teacher_bytes)
        answer = _answer_tokens(params.get("data"))
        if answer:
            report["cache_bytes_estimate"] = int(answer * per_token)
    report["memory"] = [{"part": k, "bytes": v, "GB": round(v / 1e9, 3)} for k, v in parts.items()]
    if params.get("vram"):
        report["fits_vram"] = peak <= 0.9 * params["vram"] * 1e9
    return report


def _answer_tokens(path) -> int:
    """About how many tokens the data holds (3.5 bytes of jsonl per token)."""
    import os

    if not path or not os.path.isfile(path):
        return 0
    return int(os.path.getsize(path) / 3.5)
