"""The shared runtime: devices, one pipeline entry point, token windows, the chunked loss, the
layer sweep and atomic checkpoints."""

import json

import pytest
import torch

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.runtime import checkpoint
from apr_core.runtime.device import canonical_dtype, requested_device, resolve_device, resolve_dtype
from apr_core.technique import RunContext
from apr_core.testing import tiny_model, write_tiny
from helpers import one_error_line, run_apr

NO_CUDA = not torch.cuda.is_available()


# --------------------------------------------------------------------------- devices

def test_device_names_are_validated_and_resolved(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(AprError, match="--device"):
            requested_device(bad)
    monkeypatch.setenv("APR_DEVICE", "metal")
    with pytest.raises(AprError, match="APR_DEVICE"):
        resolve_device(None)
    monkeypatch.setenv("APR_DEVICE", "cpu")
    assert resolve_device(None) == "cpu"
    monkeypatch.delenv("APR_DEVICE")
    assert resolve_device("auto") == ("cpu" if NO_CUDA else f"cuda:{torch.cuda.current_device()}")


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line_exit_2(llama_apr, tmp_path):
    with pytest.raises(AprError, match="CUDA is not available"):
        resolve_device("cuda:0")
    for args in (["eval", llama_apr, "--dataset", "code", "--device", "cuda"],
                 ["--device", "cuda", "quantize", llama_apr, "--scheme", "int8", "-o", str(tmp_path / "q.apr")],
                 ["merge", llama_apr, llama_apr, "--strategy", "average", "--device", "cuda:1",
                  "-o", str(tmp_path / "m.apr")]):
        assert "CUDA is not available" in one_error_line(run_apr(*args))
    assert "CUDA" in one_error_line(run_apr("eval", llama_apr, env={"APR_DEVICE": "cuda"}))
    assert not list(tmp_path.iterdir())


def test_dtypes(monkeypatch):
    assert canonical_dtype("bf16") == "bfloat16" and canonical_dtype("FP32") == "float32"
    with pytest.raises(AprError, match="--dtype"):
        canonical_dtype("int3")
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    assert RunContext(dtype="bf16").compute_dtype() == "bfloat16"


def test_device_and_dtype_options_reach_the_technique(llama_apr, tmp_path):
    sample = tmp_path / "t.txt"
    sample.write_text("def f(x):\n    return x + 1\n" * 30)
    for args in (["eval", llama_apr, "--device", "cpu", "--dtype", "bfloat16"],
                 ["--device", "cpu", "--dtype", "bf16", "eval", llama_apr],
                 ["--dtype", "float32", "eval", llama_apr, "--dtype", "bfloat16", "--device", "auto"]):
        proc = run_apr(*args, "--dataset", str(sample), "--seq-len", "16", "--json", check=True)
        result = json.loads(proc.stdout)
        assert result["dtype"] == "bfloat16" and result["device"] == ("cpu" if NO_CUDA else result["device"])


# --------------------------------------------------------------------------- pipeline.run

def test_pipeline_run_drives_merge_prune_quantize_and_eval_without_click(tmp_path):
    a, b = write_tiny(tmp_path / "a.apr", seed=1), write_tiny(tmp_path / "b.apr", seed=2)
    ctx = RunContext(quiet=True)
    merged = pipeline.run("merge", "slerp", [a, b], {"weights": "0.85,0.15"}, str(tmp_path / "m.apr"), context=ctx)
    assert merged["technique"] == "slerp" and merged["format"] == "apr" and merged["params"]["weights"] == [0.85, 0.15]
    pruned = pipeline.run("prune", None, [merged["output"]], {"target_ratio": 0.5, "calibration_samples": 4,
                                                              "calibration_seq_len": 16},
                          str(tmp_path / "p.apr"), context=RunContext(quiet=True))
    assert pruned["technique"] == "wanda"  # the kind's default
    assert abs(pruned["report"]["achieved_sparsity"] - 0.5) < 1e-3
    quant = pipeline.run("quantize", "int8", [pruned["output"]], {}, str(tmp_path / "q.apr"), "apr",
                         RunContext(quiet=True))
    model = pipeline.load(quant["output"])
    assert [r["operation"] for r in model.provenance[-3:]] == ["merge", "prune", "quantize"]
    sample = tmp_path / "t.txt"
    sample.write_text("def f(x):\n    return x + 1\n" * 30)
    result = pipeline.run("evaluate", "perplexity", [quant["output"]],
                          {"dataset": str(sample), "seq_len": 16, "threshold": 1e9}, context=RunContext(quiet=True))
    assert result["metric"] == "perplexity" and result["passed"] is True
    failed = pipeline.run("evaluate", None, [quant["output"]], {"dataset": str(sample), "seq_len": 16,
                                                                "threshold": 1.0}, context=RunContext(quiet=True))
    assert failed["passed"] is False


def test_pipeline_run_validates_before_loading(tmp_path):
    a = write_tiny(tmp_path / "a.apr")
    missing = str(tmp_path / "nope.apr")
    with pytest.raises(AprError, match="takes 2 model"):
        pipeline.run("merge", "slerp", [a], {}, str(tmp_path / "o.apr"))
    with pytest.raises(AprError, match="does not apply"):
        pipeline.run("merge", "slerp", [missing, missing], {"drop_rate": 0.3}, str(tmp_path / "o.apr"))
    with pytest.raises(AprError, match="unknown merge technique"):
        pipeline.run("merge", "soup", [a, a], {}, str(tmp_path / "o.apr"))
    with pytest.raises(AprError, match="needs --strategy"):
        pipeline.run("merge", None, [a, a], {}, str(tmp_path / "o.apr"))
    with pytest.raises(AprError, match="needs -o"):
        pipeline.run("quantize", "int8", [a], {})
    with pytest.raises(AprError, match="no --analyze"):
        pipeline.action("prune", "magnitude", "analyze", [a], {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.apr"]


# --------------------------------------------------------------------------- tokens and loss

def test_windows():
    from apr_core.runtime.tokens import consecutive_windows, random_windows

    ids = list(range(10))
    assert consecutive_windows(ids, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert consecutive_windows(ids, 20).tolist() == [ids]
    a, b = random_windows(ids, 5, 3, seed=1), random_windows(ids, 5, 3, seed=1)
    assert torch.equal(a, b) and a.shape == (5, 3)
    assert all(row[1] == row[0] + 1 for row in a.tolist())
    with pytest.raises(AprError, match="only 10 tokens"):
        random_windows(ids, 2, 10, seed=0)


def test_chunked_loss_equals_the_full_cross_entropy():
    from apr_core.runtime.loss import next_token_loss

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 37, 8, generator=g)
    head = torch.nn.Linear(8, 50, bias=False)
    ids = torch.randint(0, 50, (2, 37), generator=g)
    full = torch.nn.functional.cross_entropy(head(hidden[:, :-1]).reshape(-1, 50), ids[:, 1:].reshape(-1),
                                             reduction="sum")
    for chunk in (1, 5, 36, 1000):
        total, count = next_token_loss(hidden, head, ids, chunk=chunk)
        assert count == 72
        torch.testing.assert_close(total, full.float(), rtol=1e-5, atol=1e-4)
    mask = torch.zeros(2, 37, dtype=torch.bool)
    mask[:, 20:] = True
    total, count = next_token_loss(hidden, head, ids, mask=mask, chunk=7)
    part = torch.nn.functional.cross_entropy(head(hidden[:, 19:-1]).reshape(-1, 50), ids[:, 20:].reshape(-1),
                                             reduction="sum")
    assert count == 34
    torch.testing.assert_close(total, part, rtol=1e-5, atol=1e-4)
    capped, _ = next_token_loss(hidden, head, ids, softcap=0.5, chunk=10)
    logits = torch.tanh(head(hidden[:, :-1]) / 0.5) * 0.5
    expect = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(capped, expect, rtol=1e-5, atol=1e-4)
    hidden.requires_grad_(True)
    loss, _ = next_token_loss(hidden, head, ids, chunk=9)
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0



@pytest.mark.parametrize("tied,bias,cap", [(False, False, None), (True, False, None), (True, True, None),
                                            (False, False, 2.0), (True, False, 2.0)])
def test_training_loss_gradients_are_exact(tied, bias, cap, monkeypatch):
    """A training step's loss takes the fused head (`linear_ce`: a float32 ``nn.Linear``, no
    softcapping) or, softcapped, autograd's chunks with their backward run in the forward pass.
    Either way the loss and the gradients of the hidden states, the head and a tied embedding
    must equal autograd's over the full logits, for any chunk, scaled by whatever multiplies the
    loss afterwards."""
    from apr_core.runtime import linear_ce
    from apr_core.runtime.loss import next_token_loss

    calls = []
    real = linear_ce.linear_cross_entropy
    monkeypatch.setattr(linear_ce, "linear_cross_entropy", lambda *a: calls.append(a[-1]) or real(*a))
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (2, 23), generator=g)
    mask = torch.rand(2, 23, generator=g) > 0.3

    def run(chunk):
        torch.manual_seed(0)
        emb, head = torch.nn.Embedding(40, 6), torch.nn.Linear(6, 40, bias=bias)
        if tied:
            head.weight = emb.weight
        hidden = torch.tanh(emb(ids) * 3)
        if chunk is None:
            target = torch.where(mask[:, 1:], ids[:, 1:], -100)
            logits = head(hidden[:, :-1])
            if cap:
                logits = torch.tanh(logits / cap) * cap
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), target.reshape(-1), reduction="sum")
        else:
            loss, count = next_token_loss(hidden, head, ids, mask, softcap=cap, chunk=chunk)
            assert count == int(mask[:, 1:].sum())
        hidden.retain_grad()
        (loss * 0.5).backward()
        return [loss.detach(), hidden.grad, emb.weight.grad, head.weight.grad] + ([head.bias.grad] if bias else [])

    want = run(None)
    for chunk in (1, 7, 1000):
        got = run(chunk)
        assert calls == ([chunk] if cap is None else [])
        calls.clear()
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_only_a_float32_linear_head_without_softcapping_is_fused():
    from apr_core.runtime import linear_ce

    hidden = torch.randn(1, 5, 6, requires_grad=True)
    assert linear_ce.fusable(torch.nn.Linear(6, 40), hidden, None)
    assert not linear_ce.fusable(torch.nn.Linear(6, 40), hidden, 30.0)
    assert not linear_ce.fusable(torch.nn.Linear(6, 40).bfloat16(), hidden.bfloat16(), None)
    assert not linear_ce.fusable(torch.nn.Sequential(torch.nn.Linear(6, 40)), hidden, None)
    assert not linear_ce.fusable(torch.nn.Linear(6, 40).requires_grad_(False), torch.randn(1, 5, 6), None)
    with torch.no_grad():
        assert not linear_ce.fusable(torch.nn.Linear(6, 40), hidden, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_evaluation_workspace_gives_the_same_bits(dtype):
    """Without gradients, a bias-free linear head's chunks go through buffers the caller keeps
    (perplexity's loop): the summed loss must be bit-identical to the allocating path, call
    after call, for several batch rows, chunks that do not divide the positions, and a mask."""
    from apr_core.runtime.loss import next_token_loss

    g = torch.Generator().manual_seed(4)
    head = torch.nn.Linear(16, 300, bias=False).to(dtype)
    workspace: dict = {}
    with torch.inference_mode():
        for rows, seq, chunk in ((2, 41, 24), (2, 41, 24), (1, 17, 512), (3, 9, 5)):
            hidden = torch.randn(rows, seq, 16, generator=g).to(dtype)
            ids = torch.randint(0, 300, (rows, seq), generator=g)
            mask = torch.rand(rows, seq, generator=g) > 0.2
            for m in (None, mask):
                want = next_token_loss(hidden, head, ids, m, chunk=chunk)
                got = next_token_loss(hidden, head, ids, m, chunk=chunk, workspace=workspace)
                assert got[1] == want[1] and torch.equal(got[0], want[0])
        assert set(workspace) == ({"logits", "logp"} if dtype == torch.float32 else {"logits", "float32", "logp"})


# --------------------------------------------------------------------------- the layer sweep

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sweep_reproduces_the_full_forward(arch):
    from apr_core.runtime.layerwise import Layerwise
    from apr_core.torch_bridge import to_transformers

    model = tiny_model(arch, seed=3)
    windows = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    engine = Layerwise(model, windows, batch_size=2)
    seen = []
    for step in engine.sweep():
        seen.append(step.index)
        assert step.layer.self_attn.q_proj.weight.device.type == "cpu"
    assert seen == list(range(engine.num_layers))
    module = to_transformers(model)
    with torch.inference_mode():  # the decoder's output is the last layer's output, normed
        normed = module.get_decoder().norm(torch.cat(engine.final))
        full = module.get_decoder()(input_ids=windows).last_hidden_state
    torch.testing.assert_close(normed, full, rtol=1e-4, atol=1e-5)


def test_sweep_replace_and_kept_outputs():
    from apr_core.runtime.layerwise import Layerwise

    class PassThrough(torch.nn.Module):
        def forward(self, hidden, **kwargs):
            return hidden

    model = tiny_model("llama", seed=4)
    windows = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(2))
    engine = Layerwise(model, windows, batch_size=2)
    for step in engine.sweep():
        if step.index == 0:
            kept = step.forward()
            step.replace(PassThrough())  # the layer becomes a no-op: its inputs pass through
            assert step.outputs is None
        if step.index == 1:
            assert torch.equal(torch.cat(step.inputs), torch.cat(engine.inputs))  # layer 0 was skipped
            assert not torch.equal(torch.cat(step.inputs), torch.cat(kept))
    skipped = engine.final
    dense = list(engine.sweep())  # a fresh sweep: nothing of the replacement persists
    assert len(dense) == engine.num_layers
    assert not torch.allclose(torch.cat(skipped), torch.cat(engine.final))


# --------------------------------------------------------------------------- checkpoints

def test_checkpoints_are_atomic_and_found(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    for step in (10, 20):
        with checkpoint.write(tmp_path, step, {"loss": step / 10}) as stage:
            (stage / "state.bin").write_bytes(bytes([step]))
    path, meta = checkpoint.latest(tmp_path)
    assert path.name == "step-00000020" and meta == {"step": 20, "loss": 2.0}
    with pytest.raises(RuntimeError):
        with checkpoint.write(tmp_path, 30) as stage:
            (stage / "state.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert checkpoint.latest(tmp_path)[0].name == "step-00000020"
    assert not [p for p in checkpoint.directory(tmp_path).iterdir() if p.name.startswith(".")]
    (checkpoint.directory(tmp_path) / "step-00000040").mkdir()  # no checkpoint.json: incomplete
    assert checkpoint.latest(tmp_path)[0].name == "step-00000020"
    checkpoint.keep_last(tmp_path, 1)
    assert [s for s, _ in checkpoint.complete(tmp_path)] == [20]
