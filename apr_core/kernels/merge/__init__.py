"""Merge kernels: DARE drop-and-rescale with a seeded counter-based RNG, and TIES combination.

``dare_(delta, p, seed, offset)`` drops each entry of a flat float32 task
vector with probability ``p`` and scales the survivors by 1/(1-p) (Yu et al.
2023). The decision for element ``g`` (``offset`` + position) depends only on
``(seed, g)`` through Philox4x32-10, so a tensor processed in chunks gets the
same mask as in one piece, and CPU (reference) and GPU (Triton) drop the same
entries. ``ties_combine(deltas, thresholds, weights, normalize)`` is TIES'
trim / elect sign / disjoint mean over stacked task vectors (Yadav et al.
2023). ``kth_largest_magnitude(chunks, n, density)`` gives the trim threshold
from a tensor's chunks, in one chunk of memory; ``task_vector_threshold(v, base, ...)`` is that
threshold for the task vector v - base. On CPUs all three take the C kernels of cpu.py where the
machine can build them (same bits as the references).
"""

from __future__ import annotations

from ...errors import AprError
from .. import use_native, use_triton
from . import reference
from .reference import drop_threshold, kth_largest_magnitude, rescale  # noqa: F401

MAX_SEED = (1 << 63) - 1


def dare_(delta, p: float, seed: int, offset: int = 0):
    """Drop-and-rescale a contiguous 1-D float32 tensor in place; returns it."""
    import torch

    if delta.dim() != 1 or delta.dtype != torch.float32 or not delta.is_contiguous():
        raise AprError("dare_ needs a contiguous 1-D float32 tensor")
    if not 0 <= p < 1:
        raise AprError(f"--drop-rate must be in [0, 1), got {p}")
    if not 0 <= seed <= MAX_SEED or offset < 0:
        raise AprError("dare_ needs 0 <= seed < 2**63 and a non-negative offset")
    if use_triton(delta):
        from . import triton as tri

        return tri.dare_(delta, drop_threshold(p), rescale(p), seed, offset)
    if use_native(delta.device):
        from . import cpu

        if cpu.dare_(delta, drop_threshold(p), rescale(p), seed, offset) is not None:
            return delta
    return reference.dare_(delta, p, seed, offset)


def task_vector_threshold(v, base, density: float, device, chunk: int) -> float:
    """TIES' trim threshold for the task vector v - base (flat tensors of one length, computed in
    float32 on ``device``, ``chunk`` elements at a time): its `kth_largest_magnitude`."""
    import torch

    if use_native(device):
        from . import cpu

        found = cpu.kth_largest_task_vector(v, base, density)
        if found is not None:
            return found

    def chunks():
        # one float32 copy of each input chunk, the base subtracted in place: float(v) - float(base)
        return (v[s:s + chunk].to(device=device, dtype=torch.float32, copy=True).sub_(base[s:s + chunk].to(device))
                for s in range(0, v.numel(), chunk))

    return kth_largest_magnitude(chunks, v.numel(), density)


def ties_combine(deltas, thresholds, weights, normalize: bool = True):
    """TIES-merge stacked float32 task vectors ``deltas[K, n]`` into one ``[n]`` vector."""
    import torch

    if deltas.dim() != 2 or deltas.dtype != torch.float32:
        raise AprError("ties_combine needs a 2-D float32 tensor of stacked task vectors")
    if len(thresholds) != deltas.shape[0] or len(weights) != deltas.shape[0]:
        raise AprError("ties_combine needs one threshold and one weight per task vector")
    if use_triton(deltas):
        from . import triton as tri

        return tri.ties_combine(deltas, thresholds, weights, normalize)
    if use_native(deltas.device):
        from . import cpu

        out = cpu.ties_combine(deltas, thresholds, weights, normalize)
        if out is not None:
            return out
    return reference.ties_combine(deltas, thresholds, weights, normalize)
