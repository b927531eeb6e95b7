"""The merge speed-ups change no bit: kernels against the definitions they replaced, and whole
merges against digests of the outputs the earlier (slower) implementation wrote.

``DIGESTS`` were computed with the implementation on main before the speed-ups (commit 526189f:
where-based TIES, 64-bit-masked Philox and where-based DARE) for the small bf16 model below,
with the working chunk, the TIES block and the Philox step shrunk so that every tensor spans
several of each. Slerp is left out: its angle is a float64 dot product whose summation order
belongs to the BLAS, not to apr.
"""

import hashlib
import math

import pytest
import torch

from apr_core import pipeline
from apr_core.formats.apr import write_apr
from apr_core.kernels.merge import reference
from apr_core.model import LazyTensor
from apr_core.technique import RunContext
from apr_core.testing import tiny_model

DIGESTS = {
    "average": "00ccce7d9daca5103c676432183b28a1259574c0e894634713fcddc21427c98a",
    "weighted": "2c94f0c1051d472a6b206a9fb142983e3767a36182d9f29f9701fe6560915a5e",
    "task_arithmetic": "35689777d336348c46485dd919112ddae57120e8295dfed748a6ffc6fd7aa6c7",
    "ties": "0c28da5df7464912123ef0195519d1a9bb17b0a78ce9868805e07eb06f42956e",
    "dare": "8de3cd55cb3ecaf095907846a6b1e438ff2908626504255c5e8f47da5df3f464",
    "dare_ties": "a3457759427f4356fe194584c13ed4537f78735a9c121b1af1beabc4d265a91e",
}


def _inputs():
    """A base and two fine-tunes in bf16 from torch's own seeded generator (no model init involved)."""
    shapes = {n: tuple(lt.spec.shape) for n, lt in tiny_model("llama", seed=0).tensors.items()}
    models = []
    for which in (None, 1, 2):
        m = tiny_model("llama", seed=0).derive(source=f"m{which}")
        for i, (name, shape) in enumerate(sorted(shapes.items())):
            g = torch.Generator().manual_seed(1000 + i)
            t = torch.randn(shape, generator=g) * 0.02
            if which is not None:
                t += torch.randn(shape, generator=torch.Generator().manual_seed(7919 * which + i)) * 0.002
            m.tensors[name] = LazyTensor.of(name, t.to(torch.bfloat16))
        models.append(m)
    return models


RAW = {"average": {}, "weighted": {"weights": "0.7,0.3"}, "task_arithmetic": {"scaling": "0.8"},
       "ties": {"density": "0.2"}, "dare": {"drop_rate": "0.3"}, "dare_ties": {"drop_rate": "0.4"}}


def merged_digest(strategy, monkeypatch, tmp_path, seed=3):
    """sha256 over every merged tensor's bytes, in name order."""
    import apr_merge.common as common

    monkeypatch.setattr(common, "CHUNK", 1000)
    monkeypatch.setattr(reference, "_BLOCK", 300, raising=False)
    monkeypatch.setattr(reference, "_CHUNK", 64)
    base, a, b = _inputs()
    raw = dict(RAW[strategy])
    if strategy in ("task_arithmetic", "ties", "dare", "dare_ties"):
        raw["base_model"] = str(tmp_path / "base.apr")
        write_apr(base, raw["base_model"])
    ctx = RunContext(seed=seed, quiet=True)
    out = pipeline.transform("merge", strategy, [a, b], raw, ctx)
    h = hashlib.sha256()
    for name in sorted(out.names()):
        t = out.tensor(name).contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("strategy", sorted(DIGESTS))
def test_merged_bytes_are_those_of_the_earlier_implementation(strategy, monkeypatch, tmp_path):
    assert merged_digest(strategy, monkeypatch, tmp_path) == DIGESTS[strategy]


# -- the kernels against the definitions they replaced (main's code, kept here verbatim in spirit) --------

def _ties_definition(deltas, thresholds, weights, normalize):
    k = deltas.shape[0]
    trimmed = [torch.where(deltas[i].abs() >= float(thresholds[i]), deltas[i], torch.zeros_like(deltas[i]))
               for i in range(k)]
    w = [torch.tensor(float(weights[i]), dtype=deltas.dtype) for i in range(k)]
    total = torch.zeros_like(deltas[0])
    for i in range(k):
        total = total + w[i] * trimmed[i]
    sign = torch.sign(total)
    num = torch.zeros_like(total)
    den = torch.zeros_like(total)
    for i in range(k):
        agree = (trimmed[i] * sign) > 0
        num = num + torch.where(agree, w[i] * trimmed[i], torch.zeros_like(num))
        den = den + torch.where(agree, w[i], torch.zeros_like(den))
    if not normalize:
        return num
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _dare_definition(delta, p, seed, offset):
    words = reference.random_words(seed, offset, delta.numel())
    keep = words >= reference.drop_threshold(p)
    return torch.where(keep, delta * torch.tensor(reference.rescale(p), dtype=delta.dtype), torch.zeros_like(delta))


def _bits(t):
    return t.contiguous().view(torch.int32)


def _awkward(shape, seed):
    """Random values with exact zeros of both signs, subnormals, and (optionally added) inf/NaN."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(shape, generator=g)
    d[..., ::13] = 0.0
    d[..., 1::17] = -0.0
    d[..., 2::23] = 1e-41
    return d


@pytest.mark.parametrize("k,n", [(1, 1), (2, 5), (2, 40_000), (3, 1037)])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights", ["ones", "mixed", "tiny"])
@pytest.mark.parametrize("nonfinite", [False, True])
def test_ties_reference_has_the_definitions_bits(k, n, normalize, weights, nonfinite, monkeypatch):
    monkeypatch.setattr(reference, "_BLOCK", 4096)
    d = _awkward((k, n), k * n)
    if nonfinite and n > 30:
        d[0, 3::29] = float("inf")
        d[-1, 4::31] = float("nan")
    thresholds = [float(torch.quantile(d[i].abs().nan_to_num(0, 0, 0), 0.5)) if n > 1 else 0.0 for i in range(k)]
    w = {"ones": [1.0] * k, "mixed": [0.7, 0.0, 2.5][:k], "tiny": [1e-45, 0.3, 1.0][:k]}[weights]
    ours = reference.ties_combine(d, thresholds, w, normalize)
    assert torch.equal(_bits(ours), _bits(_ties_definition(d, thresholds, w, normalize)))


def test_ties_reference_takes_the_definition_for_weights_and_thresholds_it_cannot_vouch_for():
    d = _awkward((2, 5000), 9)
    for thresholds, w in (([0.1, 0.2], [-1.0, 2.0]), ([0.1 + 1e-12, 0.0], [1.0, 1.0]), ([math.inf, 0.3], [1.0, 1.0])):
        ours = reference.ties_combine(d, thresholds, w, True)
        assert torch.equal(_bits(ours), _bits(_ties_definition(d, thresholds, w, True)))


@pytest.mark.parametrize("n,offset", [(1, 0), (5, 3), (40_000, 7), (30_001, (1 << 33) + 1)])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 1 - 1e-12])
def test_dare_reference_has_the_definitions_bits(n, offset, p, monkeypatch):
    monkeypatch.setattr(reference, "_CHUNK", 1000)
    d = _awkward(n, n)
    if n > 30:
        d[3::29] = float("inf")
        d[4::31] = float("nan")
    ours = reference.dare_(d.clone(), p, 1234 + n, offset)
    assert torch.equal(_bits(ours), _bits(_dare_definition(d.clone(), p, 1234 + n, offset)))
