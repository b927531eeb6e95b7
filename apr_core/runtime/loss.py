"""The next-token loss, computed in chunks of positions so logits never exist whole.

A 150k-token vocabulary makes the fp32 logits of one 2048-token window 1.2 GB; computing the
LM head and the cross-entropy a chunk of positions at a time bounds that to ``chunk`` x vocab.
Perplexity, pruning analysis, classification and training all call `next_token_loss`, so
softcapping (Gemma), masking and reduction are written once.
"""

from __future__ import annotations

CHUNK = 1024  # positions per LM-head call


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

    total = hidden.new_zeros((), dtype=torch.float32)
    count = 0
    positions = ids.shape[1] - 1
    for s in range(0, positions, chunk):
        e = min(s + chunk, positions)
        logits = head(hidden[:, s:e]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        target = ids[:, s + 1: e + 1]
        if mask is not None:
            keep = mask[:, s + 1: e + 1]
            target = torch.where(keep, target, torch.full_like(target, -100))
            count += int(keep.sum())
        else:
            count += target.numel()
        total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                        reduction="sum", ignore_index=-100)
    return total, count


def softcap_of(module) -> float | None:
    """The model's final logit softcapping, if its config has one."""
    return getattr(module.config, "final_logit_softcapping", None)
