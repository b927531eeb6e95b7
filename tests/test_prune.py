"""Pruning methods: exact sparsity, the papers' formulas checked independently, loadable shrunk models."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from apr_core import pipeline
from apr_core.testing import tiny_model
from apr_core.technique import RunContext
from apr_core.torch_bridge import to_transformers
from helpers import one_error_line, run_apr

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _prune(model, method, calib=None, **raw):
    if calib is not None:
        raw.setdefault("calibration", calib)
        raw.setdefault("calibration_samples", 6)
        raw.setdefault("calibration_seq_len", 16)
    ctx = RunContext(quiet=True)
    return pipeline.transform("prune", method, [model], raw, ctx), ctx.report


def _linears(model):
    return [n for n in model.names() if n.endswith(".weight") and any(p in n for p in LINEAR)]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern,ratio", [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", None),
                                           ("4:8", None)])
def test_sparsity_is_exact_and_only_linears_are_touched(method, pattern, ratio, calib):
    model = tiny_model("llama", seed=1)
    raw = {"pattern": pattern} if ratio is None else {"pattern": pattern, "target_ratio": ratio}
    out, report = _prune(model, method, None if method == "magnitude" else calib, **raw)
    target = 0.5 if ratio is None else ratio
    zeros = total = 0
    for name in _linears(model):
        w = out.tensor(name)
        zeros += int((w == 0).sum())
        total += w.numel()
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            assert ((w.reshape(-1, m) != 0).sum(1) <= n).all(), name
        elif method == "wanda":  # compared within each output row
            per_row = (w == 0).float().mean(1)
            assert (per_row - target).abs().max() <= 1 / w.shape[1] + 1e-9, name
    assert abs(zeros / total - target) <= 0.005
    assert abs(report["achieved_sparsity"] - target) <= 0.005
    if pattern != "unstructured":
        assert report["nm_verified"] is True
    for name in model.names():
        if name not in _linears(model):
            assert torch.equal(out.tensor(name), model.tensor(name)), f"{name} must not be pruned"


def test_wanda_layer0_matches_an_independent_computation(calib):
    from apr_core.runtime.tokens import calibration_windows

    model = tiny_model("qwen2", seed=4)
    out, _ = _prune(model, "wanda", calib, target_ratio=0.4)
    windows = calibration_windows(model, calib, 6, 16, seed=0)
    module = to_transformers(model)
    sq = torch.zeros(model.config["hidden_size"], dtype=torch.float64)

    def collect(_module, args):
        sq.add_(args[0].reshape(-1, args[0].shape[-1]).double().pow(2).sum(0))

    hook = module.model.layers[0].mlp.up_proj.register_forward_pre_hook(collect)
    with torch.inference_mode():
        module(windows)
    hook.remove()
    w = model.tensor("model.layers.0.mlp.up_proj.weight")
    scores = w.abs().double() * sq.sqrt()
    k = int(w.shape[1] * 0.4)
    expected = torch.zeros_like(w, dtype=torch.bool)
    expected.scatter_(1, torch.argsort(scores, dim=1)[:, :k], True)
    assert torch.equal(out.tensor("model.layers.0.mlp.up_proj.weight") == 0, expected)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_update_reconstructs_better_than_the_mask_alone(nm):
    from apr_prune.common import prune_mask
    from apr_prune.sparsegpt import sparsegpt_prune_

    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 96, generator=g)
    x = torch.randn(2000, 24, generator=g) @ torch.randn(24, 96, generator=g) + 0.1 * torch.randn(2000, 96, generator=g)
    h = x.T @ x / x.shape[0]
    pruned = w.clone()
    sparsegpt_prune_(pruned, h, 0.5, nm, block=32, damp=0.01)
    mask_only = w.clone()
    mask_only[prune_mask(w.abs() * x.pow(2).sum(0).sqrt(), 0.5, nm, per_row=True)] = 0
    err = lambda v: ((v - w) @ x.T).pow(2).sum().item()
    assert (pruned == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)
    assert err(pruned) < 0.6 * err(mask_only)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_structured_pruning_shrinks_and_loads_in_transformers(arch, calib, tmp_path):
    model = tiny_model(arch, seed=2)
    out, report = _prune(model, "structured", calib, target_ratio=0.5)
    cfg = out.config
    assert cfg["num_attention_heads"] == model.config["num_attention_heads"] // 2
    assert cfg["intermediate_size"] == model.config["intermediate_size"] // 2
    assert out.param_count < model.param_count
    path = pipeline.save(out, str(tmp_path / "hf"), "hf")
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert sum(p.numel() for p in loaded.parameters() if p.requires_grad) <= out.param_count
    with torch.inference_mode():
        assert torch.isfinite(loaded(torch.arange(1, 12)[None]).logits).all()


def test_depth_by_index_renumbers_and_matches_dropping_the_layer(tmp_path):
    model = tiny_model("llama", seed=3, num_hidden_layers=3)
    out, report = _prune(model, "depth", remove_layers="1")
    assert report["removed_layers"] == [1] and out.config["num_hidden_layers"] == 2
    for suffix in ("self_attn.q_proj.weight", "mlp.down_proj.weight"):
        assert torch.equal(out.tensor(f"model.layers.1.{suffix}"), model.tensor(f"model.layers.2.{suffix}"))
    full = to_transformers(model)
    del full.model.layers[1]
    for i, layer in enumerate(full.model.layers):
        layer.self_attn.layer_idx = i
    ids = torch.arange(2, 14)[None]
    with torch.inference_mode():
        assert torch.allclose(full(ids).logits, to_transformers(out)(ids).logits, atol=1e-5)


def test_depth_by_block_influence_drops_the_layer_that_does_nothing(calib):
    model = tiny_model("llama", seed=5, num_hidden_layers=3)
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        model.tensors[name] = type(model.tensors[name]).of(name, torch.zeros(model.spec(name).shape))
    out, report = _prune(model, "depth", calib, target_ratio=0.34)
    assert report["removed_layers"] == [1]
    assert report["block_influence"][1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spec,expected", [("20-24", [20, 21, 22, 23, 24]), ("3,7-8", [3, 7, 8]),
                                           ("5", [5])])
def test_remove_layers_spec(spec, expected):
    from apr_prune.depth import parse_layers

    assert parse_layers(spec, 30) == expected


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_width_rotation_at_full_width_preserves_the_function(arch):
    from apr_prune.width import rotate, select_channels

    model = tiny_model(arch, seed=6)
    d = model.config["hidden_size"]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1)))
    ids = torch.arange(1, 20)[None]
    with torch.inference_mode():
        ref = to_transformers(model)(ids).logits
        rotated = to_transformers(rotate(model, q.contiguous()))(ids).logits
        sliced = to_transformers(select_channels(model, torch.arange(d)))(ids).logits
    assert torch.allclose(ref, rotated, atol=1e-4)
    assert torch.allclose(ref, sliced, atol=1e-6)


@pytest.mark.parametrize("criterion", ["rotation", "activation"])
def test_width_shrinks_hidden_size_and_loads(criterion, calib, tmp_path):
    model = tiny_model("qwen2", seed=7)
    out, report = _prune(model, "width", calib, target_ratio=0.25, criterion=criterion)
    assert out.config["hidden_size"] == 48 and out.config["head_dim"] == 16
    assert out.config["tie_word_embeddings"] == (criterion == "activation")
    path = pipeline.save(out, str(tmp_path / "hf"), "hf")
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.inference_mode():
        assert torch.isfinite(loaded(torch.arange(1, 12)[None]).logits).all()


def test_playbook_wanda_recipe_and_analyze_through_the_cli(tmp_path, calib, llama_apr):
    pruned = tmp_path / "pruned-30.apr"
    summary = json.loads(run_apr("prune", llama_apr, "--method", "wanda", "--target-ratio", "0.3", "--calibration",
                                 calib, "--calibration-seq-len", "16", "-o", str(pruned), "--json", check=True).stdout)
    assert summary["report"]["achieved_sparsity"] == pytest.approx(0.3, abs=0.005)
    sample = tmp_path / "heldout.txt"
    sample.write_text("def g(a):\n    return a * 2\n" * 20)
    run_apr("eval", str(pruned), "--dataset", str(sample), "--seq-len", "32", "--threshold", "1e9", check=True)
    report = json.loads(run_apr("prune", llama_apr, "--analyze", "--verbose", "--calibration", calib,
                                "--calibration-seq-len", "16", "--json", check=True).stdout)
    assert report["method"] == "wanda" and len(report["layers"]) == 2 and len(report["curve"]) == 5
    assert report["recommended_ratio"] is None or 0 < report["recommended_ratio"] < 1
    plan = run_apr("prune", llama_apr, "--method", "wanda", "--plan", check=True).stdout
    assert "peak_memory_bytes" in plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heldout.txt", "pruned-30.apr"]


@pytest.mark.parametrize("args,needle", [
    (["--target-ratio", "1.5"], "--target-ratio must be in (0, 1), got 1.5"),
    (["--target-ratio", "0"], "--target-ratio must be in (0, 1)"),
    (["--calibration", "missing.jsonl"], "no such file"),
    (["--calibration", "{empty}"], "empty"),
    (["--calibration", "{bad}"], ":2: not valid JSON"),
    (["--pattern", "3:3"], "0 < N < M"),
    (["--pattern", "2:4", "--target-ratio", "0.3"], "conflicts with --pattern 2:4"),
    (["--method", "structured", "--analyze"], "has no --analyze"),
    (["--method", "depth", "--remove-layers", "1-9"], "layers run 0..1"),
    (["--method", "magnitude", "--calibration", "x.jsonl"], "--calibration does not apply to prune magnitude"),
    (["--method", "nope"], "unknown prune technique"),
])
def test_bad_prune_input_is_one_line_and_writes_nothing(tmp_path, llama_apr, args, needle):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    subs = {"{empty}": str(empty), "{bad}": str(bad)}
    proc = run_apr("prune", llama_apr, *[subs.get(a, a) for a in args], "-o", str(tmp_path / "out.apr"),
                   cwd=tmp_path)
    assert needle in one_error_line(proc)
    assert not (tmp_path / "out.apr").exists()


def test_width_refuses_gemma(tmp_path, calib):
    from apr_core.errors import AprError

    with pytest.raises(AprError, match="does not support gemma3_text"):
        _prune(tiny_model("gemma3"), "width", calib)
