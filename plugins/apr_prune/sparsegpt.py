"""SparseGPT: one-shot pruning with optimal-brain-surgeon weight updates (Frantar & Alistarh 2023).

For each linear layer, H = X^T X over the calibration tokens (the layer-wise
reconstruction Hessian up to a factor 2), dampened by ``--dampening`` times
its mean diagonal. Columns are processed in blocks of ``--block-size``: within
a block the mask is chosen adaptively (the lowest w^2 / [H^-1]_jj^2 over the
whole block for unstructured sparsity; per group of M for N:M), and each
pruned weight's error is spread over the not-yet-processed columns through
the upper Cholesky factor of H^-1, then the block's accumulated error updates
the remaining blocks.
"""

from __future__ import annotations

from apr_core.errors import AprError
from apr_core.params import Param

from .common import prune_mask
from .sparse import CalibratedPruner


def _inverse_cholesky(h, damp: float):
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, raising the damping until H is PD."""
    import torch

    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = h.diagonal().mean()
    for attempt in range(6):
        try:
            lower = torch.linalg.cholesky(h + damp * (10 ** attempt) * mean_diag * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise AprError("SparseGPT: the calibration Hessian is not positive definite even with 1e5x dampening; "
                   "use more calibration data")


def sparsegpt_prune_(weight, hessian, ratio: float, nm, block: int, damp: float) -> None:
    """Prune ``weight`` (out x in, float32) in place with OBS updates; see the module docstring."""
    import torch

    w = weight
    h = hessian.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    hinv = _inverse_cholesky(h, damp)
    cols = w.shape[1]
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        w_blk = w[:, b0:b1].clone()
        err_blk = torch.zeros_like(w_blk)
        h_blk = hinv[b0:b1, b0:b1]
        diag = h_blk.diagonal()
        if nm is None:
            mask = prune_mask((w_blk / diag).pow(2), ratio, None, per_row=False)
        else:
            mask = torch.zeros_like(w_blk, dtype=torch.bool)
        for j in range(b1 - b0):
            if nm is not None and j % nm[1] == 0:
                group = slice(j, j + nm[1])
                mask[:, group] = prune_mask((w_blk[:, group] / diag[group]).pow(2), ratio, nm, per_row=True)
            col = w_blk[:, j]
            kept = torch.where(mask[:, j], torch.zeros_like(col), col)
            err = (col - kept) / diag[j]
            w_blk[:, j:] -= err[:, None] * h_blk[j, j:][None, :]
            w_blk[:, j] = kept
            err_blk[:, j] = err
        w[:, b0:b1] = w_blk
        w[:, b1:] -= err_blk @ hinv[b0:b1, b1:]


class SparseGPT(CalibratedPruner):
    name = "sparsegpt"
    summary = "OBS-style one-shot pruning with Hessian-based weight updates (calibrated)"
    paper = ("Frantar & Alistarh 2023, SparseGPT: Massive Language Models Can Be Accurately Pruned "
             "in One-Shot (arXiv:2301.00774)")
    params = CalibratedPruner.params + (
        Param("block_size", "int", 128, "Columns per lazy-update block", min=1),
        Param("dampening", "float", 0.01, "Fraction of the mean Hessian diagonal added to it", min=0,
              min_exclusive=True),
    )

    def check(self, params):
        super().check(params)
        nm = params["pattern"]
        if nm != "unstructured" and params["block_size"] % int(nm.split(":")[1]):
            raise AprError(f"--block-size {params['block_size']} must be a multiple of M in --pattern {nm}")
        self._block, self._damp = params["block_size"], params["dampening"]

    def new_stats(self, linear):
        import torch

        w = linear.weight
        return {"h": torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64, device=w.device),
                "n": 0}

    def accumulate(self, stats, x) -> None:
        xd = x.double()
        stats["h"] += xd.T @ xd
        stats["n"] += x.shape[0]

    def prune_linear(self, linear, stats, ratio, nm) -> None:
        h = (stats["h"] / max(stats["n"], 1)).float()
        sparsegpt_prune_(linear.weight.data, h, ratio, nm, self._block, self._damp)
