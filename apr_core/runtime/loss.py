"""The next-token loss, computed in chunks of positions so logits never exist whole.

A 150k-token vocabulary makes the fp32 logits of one 2048-token window 1.2 GB; computing the
LM head and the cross-entropy a chunk of positions at a time (about ``CHUNK`` tokens of the batch
per chunk) bounds that to ``CHUNK`` x vocab.
When gradients are being recorded, training holds one chunk's logits at a time too, in one
of two ways. If the caller names the trainable parameters the chunk loss uses (``params``; the
LM head's, usually none under LoRA), each chunk's backward runs right away inside the forward
pass (`_grad_in_forward`): the chunk's gradient with respect to the hidden states and those
parameters is kept and scaled by the incoming gradient in the backward pass, which is exact
because the result is a plain sum. The LM head then runs twice per chunk (forward, and the
gradient of the hidden states) as in an unchunked loss. Without ``params`` each chunk is
checkpointed instead (its logits are recomputed in the backward pass, a third head
multiplication: about 10% of a LoRA step on SmolLM2's 49k vocabulary).
A training step through a plain float32 linear head takes `linear_ce` instead: the head and the
cross-entropy fused, on the counted positions only, through one reused logits buffer.
Perplexity, pruning analysis, classification, training and distillation all call
`next_token_loss` (or `chunked_loss` with their own per-chunk loss), so softcapping (Gemma),
masking and reduction are written once.
"""

from __future__ import annotations

import functools

CHUNK = 512  # tokens (batch rows x positions) per LM-head call
CPU_TRAINING_CHUNK = 256  # the same, for a training step on CPU (`training_chunk` says why)


def training_chunk(device_type: str) -> int:
    """Tokens per LM-head chunk of a training step on ``device_type`` ("cpu", "cuda", ...).

    Measured with autograd's chunked loss: there a chunk's fp32 logits and their gradient are
    fresh glibc mappings (above its 32 MiB mmap ceiling) whose pages fault in every step, and
    with SmolLM2's 49k vocabulary 256-token chunks spent 4.3-8.0 s of system time over 8 LoRA
    steps against 7.3-14.4 s for 512-token ones, at 207-229 tokens/s against 176-210 and the same
    or a lower peak (benchmarks/finetune.py, docs/finetune.md); 128-token chunks fall below the
    ceiling and fragment the heap instead. The fused head (`linear_ce`) reuses one buffer, so
    there the chunk only sets that buffer's size. CUDA's caching allocator reuses blocks, so it
    keeps ``CHUNK``."""
    return CPU_TRAINING_CHUNK if device_type == "cpu" else CHUNK


def logits_of(head, hidden, softcap: float | None):
    """float32 logits of ``hidden`` through ``head``, softcapped when the model caps them."""
    import torch

    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunks(ids, mask, chunk: int, extra):
    """(start, end, targets, keep, extra pieces, count) of each position chunk with counted targets."""
    import torch

    positions = ids.shape[1] - 1
    chunk = max(1, chunk // max(1, ids.shape[0]))
    for s in range(0, positions, chunk):
        e = min(s + chunk, positions)
        target = ids[:, s + 1: e + 1]
        keep = mask[:, s + 1: e + 1] if mask is not None else torch.ones_like(target, dtype=torch.bool)
        n = int(keep.sum())  # one device sync per chunk
        if n:
            yield s, e, target, keep, [x[:, s:e] for x in extra], n


def chunked_loss(hidden, ids, mask, per_chunk, chunk: int = CHUNK, extra=(), params=None):
    """Sum ``per_chunk(hidden[:, s:e], targets, keep, *extra_chunks)`` over chunks of positions
    (about ``chunk`` tokens of the batch each), where ``targets = ids[:, s+1:e+1]`` and ``keep``
    marks the counted targets; returns (sum, count). ``extra`` are tensors (batch x seq x ...)
    cut into the same position chunks; they get no gradient.

    With gradients on: if ``params`` is given it must list every tensor requiring gradients
    that ``per_chunk`` reaches besides ``hidden`` (the module docstring says why), and each
    chunk's backward runs during the forward pass; without it each chunk is checkpointed."""
    import torch
    from torch.utils.checkpoint import checkpoint

    chunks = list(_chunks(ids, mask, chunk, extra))
    pieces, count = [c[:5] for c in chunks], sum(c[5] for c in chunks)
    if not (torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in params or ()))):
        total = hidden.new_zeros((), dtype=torch.float32)
        for s, e, target, keep, rest in pieces:
            total = total + per_chunk(hidden[:, s:e], target, keep, *rest)
        return total, count
    if params is not None:
        trainable = [p for p in params if p.requires_grad]
        return _grad_in_forward().apply(hidden, per_chunk, pieces, len(trainable), *trainable), count
    total = hidden.new_zeros((), dtype=torch.float32)
    for s, e, target, keep, rest in pieces:
        total = total + checkpoint(per_chunk, hidden[:, s:e], target, keep, *rest, use_reentrant=False)
    return total, count


@functools.cache
def _grad_in_forward():
    """The autograd function (built on first use: this module imports torch lazily)."""
    import torch

    class GradInForward(torch.autograd.Function):
        """The summed chunk losses, with their gradients computed chunk by chunk in the forward
        pass and multiplied by the (scalar) incoming gradient in the backward pass."""

        @staticmethod
        def forward(ctx, hidden, per_chunk, pieces, n_params, *params):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
            grads: list = [None] * n_params
            with torch.enable_grad():
                for s, e, target, keep, rest in pieces:
                    h = hidden[:, s:e].detach().requires_grad_(hidden.requires_grad)
                    part = per_chunk(h, target, keep, *rest)
                    wrt = ([h] if hidden.requires_grad else []) + list(params)
                    got = list(torch.autograd.grad(part, wrt, allow_unused=True))
                    if hidden.requires_grad:
                        grad_hidden[:, s:e] = got.pop(0)
                    for i, g in enumerate(got):
                        if g is not None:
                            grads[i] = g if grads[i] is None else grads[i].add_(g)
                    total += part.detach().float()
            ctx.grads = [grad_hidden, *grads]
            return total

        @staticmethod
        def backward(ctx, grad_out):
            scaled = scaled_grads(ctx, grad_out)
            return (scaled[0], None, None, None, *scaled[1:])

    return GradInForward


def scaled_grads(ctx, grad_out):
    """The gradients a grad-in-forward function kept on ``ctx.grads``, times the incoming (scalar)
    gradient, in place; ``ctx`` lets them go."""
    grads, ctx.grads = ctx.grads, None
    return [None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads]


def next_token_loss(hidden, head, ids, mask=None, softcap: float | None = None, chunk: int = CHUNK,
                    workspace: dict | None = None):
    """Summed cross-entropy (nats) of predicting ``ids[:, t+1]`` from ``hidden[:, t]``, and the
    number of predicted tokens.

    :param hidden: final hidden states (batch x seq x d), before the LM head.
    :param head: the LM head (a module or callable mapping hidden states to logits).
    :param ids: token ids (batch x seq) the hidden states were computed from.
    :param mask: optional bool (batch x seq): which *target* positions count (answer tokens).
    :param softcap: final logit softcapping (Gemma 2/3), applied as tanh(l / c) * c.
    :param workspace: a dict the caller keeps across calls (an evaluation loop): without gradients,
        a bias-free linear head's chunks then reuse its logits buffers (`_buffered_chunk`).
    :return: (loss sum as a 0-d float32 tensor that carries gradients when the inputs do, count).
    """
    import torch
    import torch.nn.functional as F

    from .linear_ce import fusable, linear_cross_entropy

    if fusable(head, hidden, softcap):
        return linear_cross_entropy(hidden, head, ids, mask, chunk)

    def per_chunk(h, target, keep):
        logits = logits_of(head, h, softcap)
        target = torch.where(keep, target, torch.full_like(target, -100))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum",
                               ignore_index=-100)

    buffered = workspace is not None and not softcap and not torch.is_grad_enabled() \
        and type(head) is torch.nn.Linear and head.bias is None

    params = list(head.parameters()) if hasattr(head, "parameters") else None
    return chunked_loss(hidden, ids, mask, _buffered_chunk(head, workspace) if buffered else per_chunk, chunk,
                        params=params)


def _buffered_chunk(head, workspace: dict):
    """``per_chunk`` of `next_token_loss` without gradients, through logits buffers kept in
    ``workspace``: the same operations as ``F.cross_entropy(head(h).float(), ...)`` (the head's
    matmul, log-softmax, NLL; bit-identical, tested), but each 512-token chunk of a 49k vocabulary
    no longer maps and faults in two fresh 100 MB tensors (SmolLM2: 260 -> 185 ms per window
    for the head and the loss)."""
    import torch
    import torch.nn.functional as F

    def buffer(name, rows, dtype, device):
        held = workspace.get(name)
        if held is None or held.shape[0] < rows or held.dtype != dtype or held.device != device \
                or held.shape[1] != head.weight.shape[0]:
            held = workspace[name] = torch.empty(rows, head.weight.shape[0], dtype=dtype, device=device)
        return held[:rows]

    def per_chunk(h, target, keep):
        x = h.reshape(-1, h.shape[-1])
        logits = torch.mm(x, head.weight.t(), out=buffer("logits", x.shape[0], x.dtype, x.device))
        if logits.dtype != torch.float32:
            logits = buffer("float32", x.shape[0], torch.float32, x.device).copy_(logits)
        logp = torch.log_softmax(logits, 1, out=buffer("logp", x.shape[0], torch.float32, x.device))
        target = torch.where(keep, target, torch.full_like(target, -100))
        return F.nll_loss(logp, target.reshape(-1), reduction="sum", ignore_index=-100)

    return per_chunk


def softcap_of(module) -> float | None:
    """The model's final logit softcapping, if its config has one."""
    return getattr(module.config, "final_logit_softcapping", None)
