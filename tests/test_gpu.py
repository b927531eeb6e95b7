"""GPU against CPU for every technique: the same inputs and seed on ``cuda`` and ``cpu`` must give
the same model (within float tolerance) and the same evaluation. Run with ``pytest -m gpu`` on a
machine with CUDA; skipped elsewhere."""

import pytest
import torch

from apr_core import pipeline
from apr_core.formats.apr import read_apr
from apr_core.plugins import manager
from apr_core.technique import RunContext, TransformTechnique
from apr_core.testing import write_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _transforms():
    return sorted((k, n) for (k, n), r in manager()[1].techniques.items()
                  if isinstance(r.technique, TransformTechnique))


def _run(kind, name, tmp_path, device):
    technique = pipeline.technique_of(kind, name)
    n = max(1, technique.input_range(pipeline.kind(kind))[0])
    paths = [write_tiny(tmp_path / f"in{i}.apr", seed=i) for i in range(n)]
    raw = technique.contract_params(tmp_path, paths)
    out = tmp_path / f"out-{device.replace(':', '')}.apr"
    pipeline.run(kind, name, paths, raw, str(out), context=RunContext(seed=7, device=device, quiet=True))
    return read_apr(out)


@pytest.mark.parametrize("kind,name", _transforms())
def test_gpu_matches_cpu(kind, name, tmp_path):
    from apr_core.quant.convert import float_tensor

    cpu, gpu = _run(kind, name, tmp_path, "cpu"), _run(kind, name, tmp_path, "cuda:0")
    assert cpu.names() == gpu.names()
    for tensor in cpu.names():
        a, b = cpu.tensors[tensor], gpu.tensors[tensor]
        assert a.spec == b.spec, tensor
        if a.spec.dt.quantized:  # k-quant scale searches sum in another order on the GPU
            same = (a.load() == b.load()).float().mean().item()
            assert same > 0.99, f"{tensor}: only {same:.3f} of the bytes agree"
            torch.testing.assert_close(float_tensor(a), float_tensor(b), rtol=2e-2, atol=2e-2)
        elif a.spec.dtype in ("F32", "F16", "BF16"):
            torch.testing.assert_close(a.load().float(), b.load().float(), rtol=1e-3, atol=1e-4, msg=tensor)
        else:
            assert torch.equal(a.load(), b.load()), tensor


def test_gpu_perplexity_matches_cpu(tmp_path):
    path = write_tiny(tmp_path / "m.apr")
    sample = tmp_path / "t.txt"
    sample.write_text("def f(x):\n    return x * 2 + 1\n" * 40)
    raw = {"dataset": str(sample), "seq_len": 32}
    cpu = pipeline.run("evaluate", "perplexity", [path], raw, context=RunContext(device="cpu", dtype="float32"))
    gpu = pipeline.run("evaluate", "perplexity", [path], raw, context=RunContext(device="cuda:0", dtype="float32"))
    assert gpu["device"].startswith("cuda")
    assert abs(gpu["value"] / cpu["value"] - 1) < 1e-4


def test_triton_kernels_are_what_runs_on_cuda(monkeypatch):
    """With CUDA tensors the production paths dispatch to Triton, not to the torch reference."""
    from apr_core.kernels import sparsity
    from apr_core.kernels.quant import triton as quant_triton
    from apr_core.kernels.sparsity import triton as sparsity_triton
    from apr_core.quant import codec

    calls = []
    for module, fn in ((quant_triton, "int4_quantize"), (sparsity_triton, "row_prune_mask")):
        original = getattr(module, fn)
        monkeypatch.setattr(module, fn, lambda *a, _o=original, _f=fn: calls.append(_f) or _o(*a))
    codec("APR_Q4").quantize(torch.randn(8, 64), device="cuda:0")
    mask = sparsity.row_prune_mask(torch.rand(4, 40, device="cuda:0"), 10)
    assert calls == ["int4_quantize", "row_prune_mask"]
    assert mask.is_cuda and int(mask.sum()) == 40


def test_fused_head_loss_runs_on_cuda_like_cpu():
    """`linear_ce` (a float32 training step's head and loss) on CUDA: the same loss and gradients
    as on the CPU, computed on the device."""
    from apr_core.runtime.loss import next_token_loss

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (2, 40), generator=g)
    mask = torch.rand(2, 40, generator=g) > 0.3
    hidden = torch.randn(2, 40, 32, generator=g)
    weight = torch.randn(300, 32, generator=g) * 0.1
    results = []
    for device in ("cpu", "cuda:0"):
        head = torch.nn.Linear(32, 300, bias=False).to(device)
        head.weight.data.copy_(weight)
        h = hidden.to(device).requires_grad_(True)
        loss, _ = next_token_loss(h, head, ids.to(device), mask.to(device), chunk=16)
        loss.backward()
        assert loss.device.type == device.split(":")[0]
        results.append((loss.detach().cpu(), h.grad.cpu(), head.weight.grad.cpu()))
    (la, ga, wa), (lb, gb, wb) = results
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(wb, wa, rtol=1e-3, atol=1e-4)
