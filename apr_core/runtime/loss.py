"""The next-token loss, computed in chunks of positions so logits never exist whole.

A 150k-token vocabulary makes the fp32 logits of one 2048-token window 1.2 GB; computing the
LM head and the cross-entropy a chunk of positions at a time (about ``CHUNK`` tokens of the batch
per chunk) bounds that to ``CHUNK`` x vocab.
When gradients are being recorded each chunk is checkpointed (its logits are recomputed in
the backward pass instead of kept), so training holds one chunk's logits at a time too.
Perplexity, pruning analysis, classification, training and distillation all call
`next_token_loss` (or `chunked_loss` with their own per-chunk loss), so softcapping (Gemma),
masking and reduction are written once.
"""

from __future__ import annotations

CHUNK = 512  # tokens (batch rows x positions) per LM-head call


def logits_of(head, hidden, softcap: float | None):
    """float32 logits of ``hidden`` through ``head``, softcapped when the model caps them."""
    import torch

    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def chunked_loss(hidden, ids, mask, per_chunk, chunk: int = CHUNK, extra=()):
    """Sum ``per_chunk(hidden[:, s:e], targets, keep, *extra_chunks)`` over chunks of positions
    (about ``chunk`` tokens of the batch each), where ``targets = ids[:, s+1:e+1]`` and ``keep``
    marks the counted targets; returns (sum, count). With gradients on, each chunk is recomputed
    in the backward pass (checkpointed). ``extra`` are tensors (batch x seq x ...) cut into the
    same position chunks."""
    import torch
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    count = 0
    positions = ids.shape[1] - 1
    chunk = max(1, chunk // max(1, ids.shape[0]))
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    for s in range(0, positions, chunk):
        e = min(s + chunk, positions)
        target = ids[:, s + 1: e + 1]
        keep = mask[:, s + 1: e + 1] if mask is not None else torch.ones_like(target, dtype=torch.bool)
        n = int(keep.sum())
        if n == 0:
            continue
        pieces = [x[:, s:e] for x in extra]
        if recompute:
            part = checkpoint(per_chunk, hidden[:, s:e], target, keep, *pieces, use_reentrant=False)
        else:
            part = per_chunk(hidden[:, s:e], target, keep, *pieces)
        total = total + part
        count += n
    return total, count


def next_token_loss(hidden, head, ids, mask=None, softcap: float | None = None, chunk: int = CHUNK):
    """Summed cross-entropy (nats) of predicting ``ids[:, t+1]`` from ``hidden[:, t]``, and the
    number of predicted tokens.

    :param hidden: final hidden states (batch x seq x d), before the LM head.
    :param head: the LM head (a module or callable mapping hidden states to logits).
    :param ids: token ids (batch x seq) the hidden states were computed from.
    :param mask: optional bool (batch x seq): which *target* positions count (answer tokens).
    :param softcap: final logit softcapping (Gemma 2/3), applied as tanh(l / c) * c.
    :return: (loss sum as a 0-d float32 tensor that carries gradients when the inputs do, count).
    """
    import torch
    import torch.nn.functional as F

    def per_chunk(h, target, keep):
        logits = logits_of(head, h, softcap)
        target = torch.where(keep, target, torch.full_like(target, -100))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum",
                               ignore_index=-100)

    return chunked_loss(hidden, ids, mask, per_chunk, chunk)


def softcap_of(module) -> float | None:
    """The model's final logit softcapping, if its config has one."""
    return getattr(module.config, "final_logit_softcapping", None)
