"""The distillation loss of one chunk of positions: alpha T^2 D(p_teacher^T, p_student^T) + (1 - alpha) CE.

``D`` is forward KL(teacher || student) (Hinton et al. 2015), reverse KL(student || teacher)
(MiniLLM, Gu et al. 2024) or the Jensen-Shannon divergence (GKD, Agarwal et al. 2024). All three
are computed over *buckets*: for a live teacher the buckets are the shared vocabulary ids; for a
cached teacher (`apr_distill.cache`) they are the teacher's top-k ids plus one bucket holding the
rest of the mass, and the student's distribution is coarse-grained the same way (its top-k
probabilities and the log-sum-exp of its other logits). When k covers the vocabulary there is no
rest bucket and the two agree exactly; otherwise it is the divergence of the coarse-grained
distributions, a lower bound of the full one.

Only answer-token positions (the trainer's target mask, the same as finetune's) are selected
before any softmax, and the caller (`apr_core.runtime.loss.chunked_loss`) hands one chunk of
positions at a time and recomputes it in the backward pass, so the fp32 logits of the whole
batch never exist.
"""

from __future__ import annotations

import math

DIVERGENCES = ("kl", "reverse-kl", "jsd")
FLOOR = -100.0  # log-probability floor where a divergence would divide by a zero teacher probability


def divergence(t_logp, s_logp, kind: str):
    """Summed divergence between row-wise log-distributions (rows x buckets); ``t_logp`` may hold -inf."""
    import torch

    p = t_logp.exp()
    if kind == "kl":
        return torch.where(p > 0, p * (t_logp - s_logp), torch.zeros_like(p)).sum()
    if kind == "reverse-kl":
        q = s_logp.exp()
        return (q * (s_logp - t_logp.clamp(min=FLOOR))).sum()
    if kind == "jsd":
        q = s_logp.exp()
        log_m = torch.logaddexp(t_logp, s_logp) - math.log(2.0)
        left = torch.where(p > 0, p * (t_logp - log_m), torch.zeros_like(p))
        return 0.5 * left.sum() + 0.5 * (q * (s_logp - log_m)).sum()
    raise ValueError(f"unknown divergence {kind!r}")


def student_buckets(logits, ids, temperature: float, rest: bool):
    """The student's tempered log-probabilities on the teacher's top-k ``ids`` (rows x k), plus the
    log of its mass outside them as a last column when ``rest``."""
    import torch

    z = logits / temperature
    norm = torch.logsumexp(z, dim=-1, keepdim=True)
    picked = z.gather(-1, ids) - norm
    if not rest:
        return picked
    outside = z.scatter(-1, ids, float("-inf"))
    return torch.cat([picked, torch.logsumexp(outside, dim=-1, keepdim=True) - norm], dim=-1)


def kd_chunk(s_logits, labels, teacher_logp, temperature: float, alpha: float, kind: str, shared: int,
             teacher_ids=None):
    """Summed KD + CE loss of the selected positions.

    :param s_logits: student fp32 logits (rows x student vocab), untempered.
    :param labels: target ids (rows).
    :param teacher_logp: teacher tempered log-probs: over the ``shared`` vocabulary (rows x shared), or
        over its top-k ids (``teacher_ids`` rows x k) plus a rest column when k < shared.
    """
    import torch.nn.functional as F

    total = s_logits.new_zeros(())
    if alpha < 1:
        total = total + (1 - alpha) * F.cross_entropy(s_logits, labels, reduction="sum")
    if alpha > 0:
        restricted = s_logits[:, :shared]
        if teacher_ids is None:
            s_logp = F.log_softmax(restricted / temperature, dim=-1)
        else:
            rest = teacher_logp.shape[-1] > teacher_ids.shape[-1]
            s_logp = student_buckets(restricted, teacher_ids, temperature, rest)
        total = total + alpha * temperature ** 2 * divergence(teacher_logp, s_logp, kind)
    return total
