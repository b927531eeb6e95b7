"""The speed work on quantize/GGUF export changes no byte: pinned outputs, parallel = serial, memo.

The sha256 values were produced by main before the tensor-parallel writer, the int32 rounding,
the memo and the malloc setting (same torch 2.13.0); a change in any output byte fails here.
"""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.quant import codec
from apr_core.quant.codec import one_thread, round_half_away, round_half_away_int
from apr_core.quant.parallel import ordered_map
from apr_core.technique import RunContext
from apr_core.testing import tiny_model

# tiny llama, hidden 256, 4 layers: GGUF files written by main (commit 526189f)
GGUF_SHA256 = {
    "q8_0": "a40a10ee6011fab4d4818b86971694311c9b9332c2b9aa6fb5a5ae04ebbbb912",
    "int4": "6edf9547ac41ac6df5535d5af3d36bd9a4d3c7249db7628957f5d4047e51ec69",
    "q4k_m": "546a8d7cc77489fad9054b23dec41339e051561820a185e3447464c4310f1b3c",
    "q6k": "447ae0df6f53c38fbe9525dfe1a01b2c6d3b05a851596e233bcf95b2ac11f930",
}
# codec bytes of a tensor with exact halves, 0.49999997, zero and one-signed blocks (main)
CODEC_SHA256_16 = {"Q8_0": "98bc6bb25a8936c5", "APR_Q4": "7cc3da2ee03c89b1", "APR_Q8": "f25d3a0bf51edd09",
                   "APR_Q8_ROW": "59fa5b1ee2ed8880"}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", 0, hidden_size=256, intermediate_size=512, num_hidden_layers=4)


def _gguf_sha(model, scheme, path) -> str:
    ctx = RunContext(quiet=True)
    ctx.output_format = "gguf"
    q = pipeline.transform("quantize", scheme, [model], {"allow_requantize": False}, ctx)
    pipeline.save(q, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("scheme", sorted(GGUF_SHA256))
@pytest.mark.parametrize("threads", ["1", "3"])
def test_gguf_bytes_equal_main(model, tmp_path, monkeypatch, scheme, threads):
    monkeypatch.setenv("APR_THREADS", threads)
    assert _gguf_sha(model, scheme, tmp_path / f"{scheme}.gguf") == GGUF_SHA256[scheme]


def test_codec_bytes_equal_main():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(48, 256, generator=g) * torch.logspace(-6, 2, 48)[:, None]
    x[0] = 0.0
    x[1, :64] = torch.arange(64) / 2 - 16
    x[2, :32] = 0.49999997
    x[3, :32] = -x[3, :32].abs()
    got = {dt: hashlib.sha256(codec(dt).quantize(x).numpy().tobytes()).hexdigest()[:16] for dt in CODEC_SHA256_16}
    assert got == CODEC_SHA256_16


def test_round_half_away_int_is_roundf():
    v = torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 127.5, -127.5, 0.0, -0.0,
                      1e-40, 126.49999, 7.5, -8.5, 1e8, -3e6 - 0.5])
    v = torch.cat([v, torch.arange(-600, 600, dtype=torch.float32) / 4, torch.randn(10000) * 100])
    want = round_half_away(v.clone()).to(torch.int32)
    assert torch.equal(round_half_away_int(v.clone()), want)
    assert round_half_away_int(torch.tensor([0.49999997, 2.5, -2.5])).tolist() == [0, 3, -3]


def test_ordered_map_keeps_order_and_raises_in_turn():
    def slow_square(i):
        if i == 7:
            raise AprError("seven")
        return i * i

    assert list(ordered_map(lambda i: i * i, range(20), workers=3)) == [i * i for i in range(20)]
    assert list(ordered_map(lambda i: i * i, range(5), workers=1)) == [0, 1, 4, 9, 16]
    seen = []
    with pytest.raises(AprError, match="seven"):
        for r in ordered_map(slow_square, range(20), workers=3):
            seen.append(r)
    assert seen == [i * i for i in range(7)]


def test_one_thread_restores_the_count_across_threads():
    before = torch.get_num_threads()
    barrier = threading.Barrier(3)
    inside = []

    def work():
        with one_thread():
            with one_thread():  # nested: the outer one restores
                barrier.wait()  # all three inside at once
                inside.append(torch.get_num_threads())

    with one_thread():
        assert torch.get_num_threads() == 1
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert torch.get_num_threads() == 1  # the workers leaving did not restore under this caller
    assert inside == [1, 1, 1]
    assert torch.get_num_threads() == before
    assert list(ordered_map(lambda i: torch.get_num_threads(), range(6), workers=2)) == [1] * 6
    assert torch.get_num_threads() == before


def test_tokenizer_checks_are_remembered_for_the_same_bytes_only(tmp_path, monkeypatch):
    """A tokenizer that passed is not parsed again; changed bytes are, and a failure is never
    remembered (each load of bad bytes gets its error)."""
    from apr_core import validate

    monkeypatch.setenv("APR_CACHE", str(tmp_path / "cache"))
    files = dict(tiny_model("llama", 0).tokenizer)
    assert "tokenizer.json" in files
    validate.check_tokenizer(files, "good")  # checked and remembered
    checked = []
    real = validate._check_tokenizer_files
    monkeypatch.setattr(validate, "_check_tokenizer_files", lambda f, w: checked.append(w) or real(f, w))
    validate.check_tokenizer(dict(files), "again")
    assert checked == []
    bad = dict(files, **{"tokenizer.json": b"{garbage"})
    for attempt in range(2):
        with pytest.raises(AprError, match="tokenizer.json is not valid JSON"):
            validate.check_tokenizer(bad, "bad")
    assert checked == ["bad", "bad"]
    monkeypatch.setattr(validate, "TOKENIZER_CHECKS", validate.TOKENIZER_CHECKS + 1)  # new checks: parsed again
    validate.check_tokenizer(files, "new checks")
    assert checked[-1] == "new checks"


def test_memo_stores_class_tensors_not_verdicts(tmp_path, monkeypatch):
    """A warm memo still refuses a model whose tensors do not fit its config, and a damaged
    entry is recomputed."""
    from apr_core import memo
    from apr_core.model import LazyTensor
    from apr_core.validate import check_tensors

    monkeypatch.setenv("APR_CACHE", str(tmp_path / "cache"))
    good = tiny_model("llama", 0)
    check_tensors(good, "good")  # fills the memo
    entries = list((tmp_path / "cache" / "memo" / "class-tensors").glob("*.json"))
    assert len(entries) == 1
    bad = good.derive()
    bad.tensors["model.norm.weight"] = LazyTensor.of("model.norm.weight", torch.ones(3))
    with pytest.raises(AprError, match="model.norm.weight has shape"):
        check_tensors(bad, "bad")
    entries[0].write_text('{"value": {"class": 1}}')  # damaged: recomputed, not trusted
    with pytest.raises(AprError, match="model.norm.weight has shape"):
        check_tensors(bad, "bad")
    check_tensors(good, "good")
    monkeypatch.setenv("APR_MEMO", "0")
    assert not memo.enabled()
