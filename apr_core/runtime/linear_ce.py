"""The LM head and the cross-entropy of a training step, fused, for a plain float32 linear head.

Why: autograd's chunked cross-entropy (`apr_core.runtime.loss.chunked_loss`) allocates, for
every chunk, the logits, the log-softmax it saves and its gradient: three chunk x vocabulary
float32 tensors, each a fresh mapping whose pages fault in on the CPU (about 200k page faults
and a third of the head's time for one 4 x 256-token SmolLM2 micro-batch). It also runs the head
on every position, prompt tokens included, although the loss counts only the answer's.

Here the counted positions are gathered first, and each chunk of them goes through one logits
buffer, reused: logits = x W^T (+ b), softmax in place, minus one at the target — which is the
gradient of the summed loss with respect to the logits — and from it the gradient of x and, when
the head trains, of W and b, accumulated in place. As in `loss.chunked_loss` with ``params``,
the gradients are computed in the forward pass and the backward pass only scales them by the
incoming gradient (exact, because the loss is a plain sum).

`fusable` says when this applies (a plain ``nn.Linear`` head, float32 hidden states and
weights, no autocast, no softcapping, gradients being recorded); `apr_core.runtime.loss.
next_token_loss` takes this path then and autograd's otherwise, with the same result to float
rounding (tests/test_runtime.py::test_training_loss_gradients_are_exact).
"""

from __future__ import annotations

import functools


def fusable(head, hidden, softcap) -> bool:
    """Whether `linear_cross_entropy` can stand in for the autograd loss of this head and input."""
    import torch

    if type(head) is not torch.nn.Linear or softcap or not torch.is_grad_enabled():
        return False
    trains = [hidden.requires_grad] + [p.requires_grad for p in head.parameters()]
    return (any(trains) and hidden.dtype == torch.float32 and head.weight.dtype == torch.float32
            and not torch.is_autocast_enabled(hidden.device.type))


def linear_cross_entropy(hidden, head, ids, mask, chunk: int):
    """(summed cross-entropy of ``ids[:, t+1]`` given ``hidden[:, t]`` over the positions whose
    target ``mask`` counts, count), the sum carrying gradients to ``hidden`` and the head."""
    import torch

    target_ids = ids[:, 1:]
    keep = mask[:, 1:] if mask is not None else torch.ones_like(target_ids, dtype=torch.bool)
    rows, cols = keep.nonzero(as_tuple=True)
    bias = () if head.bias is None else (head.bias,)
    total = _function().apply(hidden, rows, cols, target_ids[rows, cols], max(1, chunk), head.weight, *bias)
    return total, int(rows.numel())


@functools.cache
def _function():
    """The autograd function (built on first use: apr imports torch lazily)."""
    import torch

    from .loss import scaled_grads

    class LinearCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy through a linear head, its gradients computed chunk by chunk in
        the forward pass and scaled by the incoming gradient in the backward pass."""

        @staticmethod
        def forward(ctx, hidden, rows, cols, targets, chunk, weight, *bias):
            b = bias[0] if bias else None
            w = weight.detach()
            x_all = hidden.detach()[rows, cols]  # counted positions x hidden size
            n = x_all.shape[0]
            gx = torch.empty_like(x_all) if hidden.requires_grad else None
            gw = torch.zeros_like(w) if weight.requires_grad else None
            gb = torch.zeros_like(b) if b is not None and b.requires_grad else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            buf = torch.empty(min(chunk, n), w.shape[0], dtype=torch.float32, device=hidden.device)
            minus_one = torch.full((min(chunk, n), 1), -1.0, dtype=torch.float32, device=hidden.device)
            for s in range(0, n, chunk):
                x, t = x_all[s:s + chunk], targets[s:s + chunk, None]
                logits, m = buf[:x.shape[0]], x.shape[0]
                if b is None:
                    torch.mm(x, w.t(), out=logits)
                else:
                    torch.addmm(b.detach(), x, w.t(), out=logits)
                picked = logits.gather(1, t)
                top = logits.amax(1, keepdim=True)
                norm = logits.sub_(top).exp_().sum(1, keepdim=True)
                total += (norm.log() + top - picked).sum()
                grad = logits.div_(norm).scatter_add_(1, t, minus_one[:m])  # softmax - one-hot
                if gx is not None:
                    torch.mm(grad, w, out=gx[s:s + m])
                if gw is not None:
                    gw.addmm_(grad.t(), x)
                if gb is not None:
                    gb.add_(grad.sum(0))
            grad_hidden = None
            if gx is not None:
                grad_hidden = torch.zeros_like(hidden)
                grad_hidden[rows, cols] = gx
            ctx.grads = [grad_hidden, gw] + ([gb] if bias else [])
            return total

        @staticmethod
        def backward(ctx, grad_out):
            scaled = scaled_grads(ctx, grad_out)
            return (scaled[0], None, None, None, None, *scaled[1:])

    return LinearCrossEntropy
