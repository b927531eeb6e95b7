"""Sparsity kernels: the Triton code (run by the interpreter on CPU) against the torch reference."""

import os

import pytest
import torch

from apr_core.errors import AprError
from apr_core.kernels import sparsity
from apr_core.kernels.sparsity import reference

triton_impl = pytest.importorskip("apr_core.kernels.sparsity.triton")
assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()

SHAPES = [(1, 8), (7, 24), (13, 40), (33, 96), (5, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nm_mask_matches_reference(shape, nm, dtype):
    n, m = nm
    if shape[1] % m:
        pytest.skip("shape not divisible")
    g = torch.Generator().manual_seed(shape[0] * 31 + n)
    scores = torch.randn(shape, generator=g).to(dtype)
    scores[0, : m] = 0.5  # ties within a group go to the lower index
    ref = reference.nm_mask(scores, n, m)
    tri = triton_impl.nm_mask(scores, n, m)
    assert torch.equal(ref, tri)
    assert (ref.reshape(-1, m).sum(1) == n).all()
    assert ref[0, :n].all() and not ref[0, n:m].any()


@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (3, 1100)])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_row_prune_mask_matches_reference(shape, ratio):
    g = torch.Generator().manual_seed(shape[1])
    scores = torch.randn(shape, generator=g).abs()
    scores[0, ::3] = 0.25  # a run of ties
    scores[-1, :5] = 0.0
    k = int(shape[1] * ratio)
    ref = reference.row_prune_mask(scores, k)
    tri = triton_impl.row_prune_mask(scores, k)
    assert torch.equal(ref, tri)
    assert (ref.sum(1) == k).all()
    kept_min = torch.where(ref, torch.inf, scores).min(1).values
    pruned_max = torch.where(ref, scores, -torch.inf).max(1).values
    assert (pruned_max <= kept_min).all()


def test_reference_definitions_are_independent_of_the_kernels():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0, 5.0, 5.0, 1.0, 2.0]])
    assert reference.nm_mask(scores, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    ties = torch.tensor([[2.0, 1.0, 1.0, 3.0, 1.0]])
    assert reference.row_prune_mask(ties, 2).tolist() == [[False, True, True, False, False]]


def test_dispatch_uses_triton_when_forced(monkeypatch):
    monkeypatch.setenv("APR_KERNELS", "triton")
    scores = torch.randn(4, 16)
    assert torch.equal(sparsity.nm_mask(scores, 2, 4), reference.nm_mask(scores, 2, 4))
    monkeypatch.setenv("APR_KERNELS", "torch")
    assert torch.equal(sparsity.nm_mask(scores, 2, 4), reference.nm_mask(scores, 2, 4))


def test_bad_patterns_are_user_errors():
    with pytest.raises(AprError, match="divisible"):
        sparsity.nm_mask(torch.randn(2, 10), 2, 4)
    with pytest.raises(AprError, match="0 < N < M"):
        sparsity.nm_mask(torch.randn(2, 8), 4, 4)
