"""The C kernels for CPUs (apr_core/kernels/native.py): the same bits as their references, and a
build that falls back cleanly and leaves nothing half-written."""

import pytest
import torch

from apr_core.kernels import merge as kernels
from apr_core.kernels import native
from apr_core.kernels.merge import cpu, reference

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")


def _bits(t):
    return t.view(torch.int32)


def _delta(n, seed):
    d = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    d[::97] = float("nan")
    d[5::89] = float("inf")
    d[7::83] = -0.0
    return d


@needs_cc
@pytest.mark.parametrize("n,offset", [(1, 0), (3, 1), (4, 3), (37, 2), (1025, 3), (4099, 1 << 33), (20_000, 5),
                                      (301, 4 * ((1 << 32) - 5) + 1)])  # counters cross 2**32 in one group
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1 - 2 ** -33])
def test_native_dare_has_the_references_bits(n, offset, p):
    seed = 0x1234_5678_9ABC + n
    d = _delta(n, n)
    ref = reference.dare_(d.clone(), p, seed, offset)
    ours = cpu.dare_(d.clone(), reference.drop_threshold(p), reference.rescale(p), seed, offset)
    assert torch.equal(_bits(ours), _bits(ref))


@needs_cc
def test_native_dare_split_over_threads_has_the_same_bits(monkeypatch):
    monkeypatch.setattr(cpu, "_PART", 1000)
    d = _delta(10_007, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        split = cpu.dare_(d.clone(), reference.drop_threshold(0.4), reference.rescale(0.4), 77, 11)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(split), _bits(reference.dare_(d.clone(), 0.4, 77, 11)))


@needs_cc
def test_cpu_dare_dispatches_to_the_native_kernel_unless_told_not_to(monkeypatch):
    d = _delta(5000, 1)
    expect = reference.dare_(d.clone(), 0.3, 4, 8)

    def refuse(*args):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "dare_", refuse)
    assert torch.equal(_bits(kernels.dare_(d.clone(), 0.3, 4, 8)), _bits(expect))
    assert_reference_forced(monkeypatch, lambda: kernels.dare_(d.clone(), 0.3, 4, 8), "the reference ran")


def assert_reference_forced(monkeypatch, call, message):
    """``call`` reaches the (patched, raising) reference under APR_NATIVE=0 and APR_KERNELS=torch."""
    for name, value in (("APR_NATIVE", "0"), ("APR_KERNELS", "torch")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            m.setattr(native, "_loaded", {})
            with pytest.raises(AssertionError, match=message):
                call()


@needs_cc
def test_build_is_cached_per_source_and_a_failed_build_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("APR_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    src = tmp_path / "k.c"
    src.write_text("int apr_answer(void) { return 42; }\n")
    lib = native.library(src)
    assert lib is not None and lib.apr_answer() == 42
    assert native.library(src) is lib
    built = sorted(p.name for p in (tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].startswith("k-") and built[0].endswith(".so")

    monkeypatch.setattr(native, "_loaded", {})
    src.write_text("int apr_answer(void) { return 43; }\n")
    assert native.library(src).apr_answer() == 43  # a changed source is a new build
    assert len(list((tmp_path / "native").iterdir())) == 2

    monkeypatch.setattr(native, "_loaded", {})
    src.write_text("int apr_answer(void) { return }\n")
    assert native.library(src) is None
    assert len(list((tmp_path / "native").iterdir())) == 2  # no temporary left behind

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    src.write_text("int apr_answer(void) { return 44; }\n")
    assert native.compiler() is None and native.library(src) is None


def _reference_threshold(v, base, density):
    return reference.kth_largest_magnitude(lambda: iter([v.float() - base.float()]), v.numel(), density)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1, 5, 1000, 70_001])
@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 1.0])
def test_native_task_vector_threshold_is_the_references(dtype, n, density):
    base = _delta(n, 1).to(dtype)
    v = (base.float() + torch.randn(n, generator=torch.Generator().manual_seed(2)) * 0.1).to(dtype)
    v[3::71] = base[3::71]  # zeros of the task vector
    ours = cpu.kth_largest_task_vector(v, base, density)
    ref = _reference_threshold(v, base, density)
    assert ours == ref or (ours != ours and ref != ref)


@needs_cc
def test_native_task_vector_threshold_split_over_threads_and_declines_what_it_cannot_do(monkeypatch):
    monkeypatch.setattr(cpu, "_PART", 1000)
    base = torch.randn(20_011).bfloat16()
    v = (base.float() + torch.randn(20_011) * 0.01).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        split = cpu.kth_largest_task_vector(v, base, 0.3)
    finally:
        torch.set_num_threads(threads)
    assert split == _reference_threshold(v, base, 0.3)
    assert cpu.kth_largest_task_vector(v.half(), base.half(), 0.3) is None
    assert cpu.kth_largest_task_vector(v, base.float(), 0.3) is None
    assert cpu.kth_largest_task_vector(v[::2], base[::2], 0.3) is None
    assert kernels.task_vector_threshold(v.half(), base.half(), 0.3, "cpu", 4096) == \
        _reference_threshold(v.half(), base.half(), 0.3)


@needs_cc
def test_task_vector_threshold_takes_the_native_kernel_on_cpus_unless_told_not_to(monkeypatch):
    base = torch.randn(5000).bfloat16()
    v = (base.float() + torch.randn(5000) * 0.01).bfloat16()
    expect = _reference_threshold(v, base, 0.2)
    calls = []
    real = reference.kth_largest_magnitude
    monkeypatch.setattr(kernels, "kth_largest_magnitude", lambda *a: calls.append(1) or real(*a))
    assert kernels.task_vector_threshold(v, base, 0.2, "cpu", 1000) == expect and not calls
    monkeypatch.setenv("APR_KERNELS", "torch")
    assert kernels.task_vector_threshold(v, base, 0.2, "cpu", 1000) == expect and calls


def _ties_inputs(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(k, n, generator=g) * 0.01
    d[:, ::13] = 0.0
    d[0, 1::17] = -0.0
    d[:, 2::19] = -d[:, 2::19].roll(1, 0)  # exact cancellations in the weighted total
    return d


@needs_cc
@pytest.mark.parametrize("k,n", [(1, 7), (2, 1000), (3, 4099), (5, 257)])
@pytest.mark.parametrize("normalize", [True, False])
def test_native_ties_has_the_definitions_bits(k, n, normalize):
    d = _ties_inputs(k, n, k * n)
    thresholds = [float(reference.kth_largest_magnitude(lambda r=r: iter([r]), n, 0.3)) for r in d]
    for weights in ([1.0] * k, [0.7, 0.3, 1.5, 0.0, 2.0][:k], [-0.5, 1.0, 0.25, 3.0, 1.0][:k]):
        expect = reference._ties_block_where(d, thresholds, [torch.tensor(w) for w in weights], normalize)
        ours = cpu.ties_combine(d, thresholds, weights, normalize)
        assert torch.equal(_bits(ours), _bits(expect)), weights
        assert torch.equal(_bits(ours), _bits(reference.ties_combine(d, thresholds, weights, normalize)))


@needs_cc
def test_native_ties_with_non_finite_values_and_a_split_over_threads(monkeypatch):
    d = _ties_inputs(3, 5003, 9)
    d[0, ::31] = float("nan")
    d[1, 3::37] = float("inf")
    d[2, 3::37] = -float("inf")
    d[2, 5::41] = float("-inf")
    thresholds, weights = [0.0, torch.tensor(0.004).item(), float("inf")], [1.0, float("inf"), 0.5]
    expect = reference._ties_block_where(d, thresholds, [torch.tensor(w) for w in weights], True)
    monkeypatch.setattr(cpu, "_PART", 1000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ours = cpu.ties_combine(d, thresholds, weights, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(ours), _bits(expect))
    assert cpu.ties_combine(d, [0.1, 0.0, 0.0], weights, True) is None  # 0.1 is not a float32
    assert cpu.ties_combine(d[:, ::2], [0.0] * 3, weights, True) is None


@needs_cc
def test_ties_combine_takes_the_native_kernel_on_cpus_unless_told_not_to(monkeypatch):
    d = _ties_inputs(2, 3000, 5)
    expect = reference.ties_combine(d, [0.0, 0.0], [1.0, 1.0], True)
    monkeypatch.setattr(reference, "ties_combine", lambda *a: (_ for _ in ()).throw(AssertionError("reference")))
    assert torch.equal(_bits(kernels.ties_combine(d, [0.0, 0.0], [1.0, 1.0])), _bits(expect))
    monkeypatch.setenv("APR_KERNELS", "torch")
    with pytest.raises(AssertionError, match="reference"):
        kernels.ties_combine(d, [0.0, 0.0], [1.0, 1.0])


# -- Q8_0 (apr_core/kernels/quant/q8_0.c) ------------------------------------------------------

def _q8_blocks(blocks, seed):
    """Blocks over the whole float32 range: exact halves, zeros, -0, subnormals, near-overflow."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(blocks, 32, generator=g) * torch.logspace(-44, 37, blocks)[:, None]
    x[0] = torch.arange(32) - 15.5  # amax 16.5: id = 127 / 16.5, several products near halves
    x[1, :4] = torch.tensor([127.0, 0.5, 1.5, -2.5])  # d = 1, id = 1: halves round away from zero
    x[1, 4:] = 0
    if blocks > 3:
        x[2], x[3] = 0.0, -0.0
    if blocks > 5:
        x[4], x[5] = 1e-45, torch.finfo(torch.float32).max
    return x


@needs_cc
@pytest.mark.parametrize("blocks", [2, 15, 16, 17, 33, 4099])  # whole, partial and single groups of 16
def test_native_q8_0_has_the_references_bits(blocks):
    from apr_core.kernels.quant.cpu import q8_0_encode
    from apr_core.quant.ggml import Q8_0

    x = _q8_blocks(blocks, blocks)
    ours = q8_0_encode(x.clone())
    assert ours is not None and torch.equal(ours, Q8_0().encode_rows(x.clone()))
    assert ours[1, 2:6].view(torch.int8).tolist() == [127, 1, 2, -3]


@needs_cc
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_q8_0_blocks_with_non_finite_values_take_the_reference(bad, monkeypatch):
    from apr_core.kernels.quant.cpu import q8_0_encode
    from apr_core.quant.ggml import Q8_0

    x = _q8_blocks(40, 1)
    x[39, 5] = bad  # the last block of the last (partial) group of 16
    assert q8_0_encode(x.clone()) is None
    assert torch.equal(Q8_0().encode(x.clone()), Q8_0().encode_rows(x.clone()))
    x[39, 5] = 1.0
    for other in (x[:, ::2], x.reshape(-1)[16:], x.double()):  # not contiguous 32-blocks of float32
        assert q8_0_encode(other) is None


@needs_cc
def test_q8_0_quantize_takes_the_native_kernel_on_cpus_unless_told_not_to(monkeypatch):
    from apr_core.quant.ggml import Q8_0

    w = torch.randn(96, 256)
    expect = Q8_0().quantize(w)
    monkeypatch.setattr(Q8_0, "encode_rows", lambda self, x: (_ for _ in ()).throw(AssertionError("reference")))
    assert torch.equal(Q8_0().quantize(w), expect)
    assert_reference_forced(monkeypatch, lambda: Q8_0().quantize(w), "reference")
