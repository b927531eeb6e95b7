"""Where the teacher's distribution comes from while the student trains, and the module the
trainer calls.

`LiveTeachers` runs one or more frozen teacher networks beside the student: their final hidden
states are computed once per micro-batch (no gradients) and the LM head is applied chunk by
chunk, restricted to the shared vocabulary ids. Several teachers (``ensemble``) are combined as a
mixture of their softened distributions, log sum_i w_i p_i^T, with fixed ``--teacher-weights`` or,
per token, weights proportional to each teacher's confidence (its top probability at T = 1).
`CachedTeacher` reads the same thing, as top-k log-probabilities, from a `TeacherCache`.

`DistillLoss` is the ``forward(ids, attention_mask, target_mask) -> (summed loss, count)`` module
the shared trainer (`apr_core.runtime.trainer`) expects. The teacher is deliberately not a
registered submodule: it is never trained, checkpointed, wrapped by DDP or written out. In eval
mode (the trainer's held-out loss) it returns the student's plain cross-entropy on the answer
tokens, so held-out losses are comparable between strategies and with CE-only training.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LiveTeachers:
    """Frozen teacher networks; ``weights`` None means confidence weighting."""

    def __init__(self, modules, shared: int, temperature: float, weights=None) -> None:
        from apr_core.runtime.loss import softcap_of

        self.modules = list(modules)
        self.shared, self.temperature = shared, temperature
        self.softcaps = [softcap_of(m) for m in self.modules]
        self.log_weights = None
        if weights is not None and len(self.modules) > 1:
            total = float(sum(weights))
            self.log_weights = [math.log(w / total) if w > 0 else float("-inf") for w in weights]

    def extras(self, ids, attention_mask, target_mask):
        with torch.no_grad():
            return tuple(m.get_decoder()(input_ids=ids, attention_mask=attention_mask, use_cache=False)
                         .last_hidden_state for m in self.modules)

    def logits(self, pieces, keep):
        """Untempered fp32 teacher logits of the kept positions, restricted to the shared ids."""
        from apr_core.runtime.loss import logits_of

        return [logits_of(m.get_output_embeddings(), h[keep], cap)[:, :self.shared]
                for m, h, cap in zip(self.modules, pieces, self.softcaps)]

    def chunk(self, pieces, keep):
        """(tempered log-probabilities over the shared ids, None)."""
        with torch.no_grad():
            return self.mixture(self.logits(pieces, keep)), None

    def mixture(self, logits):
        T = self.temperature
        logps = [torch.log_softmax(z / T, dim=-1) for z in logits]
        if len(logps) == 1:
            return logps[0]
        if self.log_weights is not None:
            log_w = [torch.full_like(logps[0][:, :1], w) for w in self.log_weights]
        else:  # confidence: each teacher's top probability at T = 1, normalised over teachers
            conf = [(z.max(-1, keepdim=True).values - torch.logsumexp(z, -1, keepdim=True)) for z in logits]
            norm = torch.logsumexp(torch.cat(conf, -1), -1, keepdim=True)
            log_w = [c - norm for c in conf]
        return torch.logsumexp(torch.stack([w + lp for w, lp in zip(log_w, logps)]), dim=0)


class CachedTeacher:
    """The teacher's top-k log-probabilities read from a `TeacherCache` for each batch row."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def extras(self, ids, attention_mask, target_mask):
        return self.cache.dense(ids, attention_mask, target_mask)

    def chunk(self, pieces, keep):
        ids, logp = pieces
        return logp[keep], ids[keep]


class DistillLoss(nn.Module):
    """Student forward + chunked distillation loss against ``source`` (see the module docstring)."""

    def __init__(self, lm, source, shared: int, temperature: float, alpha: float, divergence: str) -> None:
        super().__init__()
        self.lm = lm
        self.__dict__["source"] = source  # not a submodule: never trained, saved or wrapped
        self.shared, self.temperature, self.alpha, self.kind = shared, temperature, alpha, divergence

    def forward(self, ids, attention_mask, target_mask):
        from apr_core.runtime.loss import chunked_loss, logits_of, next_token_loss, softcap_of, training_chunk

        from .loss import kd_chunk

        hidden = self.lm.get_decoder()(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        head, cap, chunk = self.lm.get_output_embeddings(), softcap_of(self.lm), training_chunk(hidden.device.type)
        if not self.training or self.alpha == 0:  # held-out loss, or CE-only training: no teacher needed
            return next_token_loss(hidden, head, ids, target_mask, cap, chunk)
        extras = self.source.extras(ids, attention_mask, target_mask)

        def per_chunk(h, target, keep, *pieces):
            t_logp, t_ids = self.source.chunk(pieces, keep)
            return kd_chunk(logits_of(head, h[keep], cap), target[keep], t_logp, self.temperature, self.alpha,
                            self.kind, self.shared, t_ids)

        return chunked_loss(hidden, ids, target_mask, per_chunk, chunk, extras, list(head.parameters()))
