"""Merge kernels: the Triton code (run by the interpreter on CPU) against the torch reference,
and the reference's Philox stream against published test vectors."""

import math
import os

import pytest
import torch

from apr_core.errors import AprError
from apr_core.kernels import merge as kernels
from apr_core.kernels.merge import reference

triton_impl = pytest.importorskip("apr_core.kernels.merge.triton")
assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_reference_philox_matches_the_random123_known_answers():
    # Philox4x32-10 known-answer tests from Random123 (kat_vectors): counter, key -> output
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ]
    for counter, key, expect in cases:
        words = _philox_full(counter, key)
        assert tuple(words) == expect


def _philox_full(counter, key):
    """Philox4x32-10 with all four counter words, written out independently of reference.py."""
    mask = 0xFFFFFFFF
    c = list(counter)
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & mask, (p0 >> 32) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return c


def test_reference_stream_is_philox_of_the_counter_and_seed():
    seed = (0xDEADBEEF << 32) | 0x12345678
    words = reference.random_words(seed, 0, 12).tolist()
    for g in range(12):
        counter = g // 4
        full = _philox_full((counter & 0xFFFFFFFF, counter >> 32, 0, 0), (0x12345678, 0xDEADBEEF))
        assert words[g] == full[g % 4]


@pytest.mark.parametrize("n,offset", [(1, 0), (3, 1), (37, 2), (1000, 3), (4099, 1 << 33)])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dare_kernel_matches_reference_bit_for_bit(n, offset, p):
    seed = 0x1234_5678_9ABC + n
    d = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    ref = reference.dare_(d.clone().cpu(), p, seed, offset)
    tri = triton_impl.dare_(d.clone(), reference.drop_threshold(p), reference.rescale(p), seed, offset)
    assert torch.equal(ref, tri.cpu())
    if p == 0:
        assert torch.equal(ref, d.cpu())


def test_dare_stream_does_not_depend_on_chunking():
    d = torch.randn(10_001)
    whole = reference.dare_(d.clone(), 0.5, 99, 0)
    parts = torch.cat([reference.dare_(d[s:s + 1234].clone(), 0.5, 99, s) for s in range(0, d.numel(), 1234)])
    assert torch.equal(whole, parts)


def test_dare_drop_rate_and_rescale_are_as_specified():
    d = torch.ones(200_000)
    out = reference.dare_(d.clone(), 0.3, 5, 0)
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.005
    assert torch.all(out[kept] == torch.tensor(1 / 0.7, dtype=torch.float32))
    assert abs(out.mean().item() - 1.0) < 0.01  # unbiased


@pytest.mark.parametrize("k,n", [(1, 1), (2, 37), (3, 1037), (4, 5000)])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_kernel_matches_reference(k, n, normalize):
    g = torch.Generator().manual_seed(k * n)
    d = torch.randn(k, n, generator=g)
    d[:, ::7] = 0.0  # untouched entries
    thresholds = [_threshold(d[i], 0.4) for i in range(k)]
    weights = [1.0 + 0.5 * i for i in range(k)]
    ref = reference.ties_combine(d, thresholds, weights, normalize)
    tri = triton_impl.ties_combine(d.to(DEVICE), thresholds, weights, normalize).cpu()
    if DEVICE == "cpu":
        assert torch.equal(ref, tri)
    else:  # the GPU may fuse multiply-adds
        torch.testing.assert_close(ref, tri, rtol=1e-6, atol=1e-7)


def test_ties_reference_on_a_worked_example():
    d = torch.tensor([[0.5, -0.2, 0.1, 0.0],
                      [-0.1, -0.5, 0.3, 0.0],
                      [-0.3, 0.6, 0.2, 0.0]])
    # column 0 sums to +0.1: only 0.5 agrees; column 1 to -0.1: -0.2 and -0.5 agree
    out = reference.ties_combine(d, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], True)
    torch.testing.assert_close(out, torch.tensor([0.5, -0.35, 0.2, 0.0]))
    summed = reference.ties_combine(d, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], False)
    torch.testing.assert_close(summed, torch.tensor([0.5, -0.7, 0.6, 0.0]))
    # trimming |d| < 0.3 flips column 1: -0.5 + 0.6 > 0
    trimmed = reference.ties_combine(d, [0.3, 0.3, 0.3], [1.0, 1.0, 1.0], True)
    torch.testing.assert_close(trimmed, torch.tensor([0.5, 0.6, 0.3, 0.0]))


def _threshold(d, density):
    return reference.kth_largest_magnitude(lambda: iter((d,)), d.numel(), density)


def test_trim_threshold_keeps_floor_of_density_times_n():
    d = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    for density, kept in ((0.05, 50), (0.2, 200), (0.5, 500), (0.0001, 1), (1.0, 1001)):
        t = _threshold(d, density)
        assert int((d.abs() >= t).sum()) == kept  # mergekit's k = int(density * n), at least 1


def test_chunked_radix_select_matches_kthvalue():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30_011, generator=g)
    x[::5] = 0.25  # many ties
    x[1::7] = -0.0
    x[2::11] = 1e-40  # subnormals
    chunks = lambda: (x[s:s + 4096] for s in range(0, x.numel(), 4096))  # noqa: E731
    for density in (0.001, 0.1, 0.3, 0.77, 0.9999):
        k = max(1, math.floor(density * x.numel()))
        expect = float(x.abs().kthvalue(x.numel() - k + 1).values)
        assert reference.kth_largest_magnitude(chunks, x.numel(), density) == expect


def test_dispatch_and_argument_checks(monkeypatch):
    d = torch.randn(50)
    monkeypatch.setenv("APR_KERNELS", "triton")
    via_triton = kernels.dare_(d.clone(), 0.3, 4, 8)
    monkeypatch.setenv("APR_KERNELS", "torch")
    assert torch.equal(via_triton, kernels.dare_(d.clone(), 0.3, 4, 8))
    with pytest.raises(AprError):
        kernels.dare_(d.clone().double(), 0.3, 4)
    with pytest.raises(AprError):
        kernels.dare_(d.clone(), 1.0, 4)
    with pytest.raises(AprError):
        kernels.ties_combine(torch.randn(2, 5), [0.0], [1.0, 1.0])
