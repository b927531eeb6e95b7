"""apr merge: the invariants of every strategy, the papers' formulas checked independently,
mismatched inputs, streaming, determinism and the playbook's merge tournament."""

import json
import math

import pytest
import torch

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.formats.apr import read_apr, write_apr
from apr_core.model import LazyTensor
from apr_core.technique import RunContext
from apr_core.testing import tiny_model
from helpers import one_error_line, run_apr

STRATEGIES = ["average", "weighted", "slerp", "task_arithmetic", "ties", "dare", "dare_ties"]
TASK_FAMILY = ["task_arithmetic", "ties", "dare", "dare_ties"]


def finetuned(base, seed, scale=0.02, source=None):
    """``base`` plus seeded noise: a stand-in for a model fine-tuned from it."""
    out = base.derive(source=source or f"ft{seed}")
    g = torch.Generator().manual_seed(seed)
    for name, lt in base.tensors.items():
        t = lt.load()
        out.tensors[name] = LazyTensor.of(name, (t + scale * torch.randn(t.shape, generator=g)).to(t.dtype))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    base = tiny_model("llama", seed=0)
    paths = {"base": d / "base.apr", "a": d / "a.apr", "b": d / "b.apr", "c": d / "c.apr"}
    write_apr(base, paths["base"])
    for i, key in enumerate("abc"):
        write_apr(finetuned(base, i + 1, source=key), paths[key])
    return {k: str(v) for k, v in paths.items()}


def merge(strategy, inputs, seed=0, **raw):
    ctx = RunContext(seed=seed, quiet=True)
    loaded = [read_apr(p) if isinstance(p, str) else p for p in inputs]
    return pipeline.transform("merge", strategy, loaded, raw, ctx), ctx.report


def materialize(model):
    return {n: model.tensor(n).clone() for n in model.names()}


def raw_for(strategy, base_path):
    if strategy in TASK_FAMILY:
        return {"base_model": base_path}
    if strategy == "weighted":
        return {"weights": "0.7,0.3"}
    return {}


# --------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("strategy", STRATEGIES)
def test_merging_a_model_with_itself_returns_it(strategy, models):
    out, _ = merge(strategy, [models["a"], models["a"]], **raw_for(strategy, models["a"]))
    a = read_apr(models["a"])
    for name in a.names():
        assert torch.equal(out.tensor(name), a.tensor(name)), f"{strategy}: {name} changed"


@pytest.mark.parametrize("strategy", ["task_arithmetic", "ties", "dare_ties"])
def test_self_merge_over_a_different_base_returns_the_model_up_to_rounding(strategy, models):
    raw = {"base_model": models["base"], "normalize": True}  # the mean of a and a is a
    if strategy in ("dare", "dare_ties"):
        raw["drop_rate"] = 0.0
    if strategy == "ties":
        raw["density"] = 1.0
    out, _ = merge(strategy, [models["a"], models["a"]], **raw)
    a = read_apr(models["a"])
    for name in a.names():
        torch.testing.assert_close(out.tensor(name), a.tensor(name), rtol=0, atol=1e-6)


def test_slerp_endpoints_are_exact(models):
    a, b = read_apr(models["a"]), read_apr(models["b"])
    first, _ = merge("slerp", [a, b], weights="1,0")
    second, _ = merge("slerp", [a, b], weights="0,1")
    for name in a.names():
        assert torch.equal(first.tensor(name), a.tensor(name))
        assert torch.equal(second.tensor(name), b.tensor(name))


def test_slerp_matches_the_formula_and_the_playbook_share(models):
    a, b = read_apr(models["a"]), read_apr(models["b"])
    out, report = merge("slerp", [a, b], weights="0.85,0.15")
    assert report["t"].startswith("0.15 ")
    name = "model.layers.0.mlp.up_proj.weight"
    x0, x1 = a.tensor(name).double().reshape(-1), b.tensor(name).double().reshape(-1)
    omega = math.acos(float(x0 @ x1 / (x0.norm() * x1.norm())))
    expect = (math.sin(0.85 * omega) * x0 + math.sin(0.15 * omega) * x1) / math.sin(omega)
    torch.testing.assert_close(out.tensor(name).double().reshape(-1), expect, rtol=1e-5, atol=1e-6)
    # closer to the first model: 85% of it
    got = out.tensor(name).reshape(-1)
    assert (got - x0.float()).norm() < (got - x1.float()).norm()


def test_slerp_keeps_the_norm_of_orthogonal_equal_norm_tensors():
    base = tiny_model("llama", seed=0)
    a = base.derive(source="a")
    b = base.derive(source="b")
    v0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    v1 = torch.tensor([[0.0, 3.0], [-4.0, 0.0]])  # orthogonal to v0, same norm
    for m, v in ((a, v0), (b, v1)):
        m.tensors = {"w": LazyTensor.of("w", v)}
    out, _ = merge("slerp", [a, b], weights="0.5,0.5")
    mid = out.tensor("w")
    assert abs(float(mid.norm()) - 5.0) < 1e-5  # linear interpolation would give 5/sqrt(2)
    torch.testing.assert_close(mid, (v0 + v1) / math.sqrt(2))


def test_weighted_one_zero_returns_the_first_and_weights_are_normalised(models):
    a, b = read_apr(models["a"]), read_apr(models["b"])
    first, _ = merge("weighted", [a, b], weights="1,0")
    mixed, _ = merge("weighted", [a, b], weights="7,3")
    avg, _ = merge("average", [a, b])
    for name in a.names():
        assert torch.equal(first.tensor(name), a.tensor(name))
        torch.testing.assert_close(mixed.tensor(name), 0.7 * a.tensor(name) + 0.3 * b.tensor(name))
        torch.testing.assert_close(avg.tensor(name), (a.tensor(name) + b.tensor(name)) / 2)


def test_task_arithmetic_is_base_plus_scaled_task_vectors(models):
    base, a, b = (read_apr(models[k]) for k in ("base", "a", "b"))
    summed, _ = merge("task_arithmetic", [a, b], base_model=models["base"])  # Ilharco et al.: a sum
    mean, _ = merge("task_arithmetic", [a, b], base_model=models["base"], normalize=True)
    scaled, _ = merge("task_arithmetic", [a, b], base_model=models["base"], scaling=0.5, weights="1,2")
    for name in base.names():
        x, y, z = base.tensor(name), a.tensor(name), b.tensor(name)
        torch.testing.assert_close(summed.tensor(name), x + (y - x) + (z - x))
        torch.testing.assert_close(mean.tensor(name), x + ((y - x) + (z - x)) / 2)
        torch.testing.assert_close(scaled.tensor(name), x + 0.5 * ((y - x) + 2 * (z - x)))


@pytest.mark.parametrize("inputs", [["a"], ["a", "scaled"]])
def test_ties_at_density_one_and_dare_at_drop_zero_reduce_to_task_arithmetic(inputs, models, tmp_path):
    base = read_apr(models["base"])
    paths = dict(models)
    if "scaled" in inputs:  # a second task vector with the same signs as a's everywhere
        a = read_apr(models["a"])
        scaled = base.derive(source="scaled")
        for n in base.names():
            scaled.tensors[n] = LazyTensor.of(n, base.tensor(n) + 0.5 * (a.tensor(n) - base.tensor(n)))
        paths["scaled"] = str(tmp_path / "scaled.apr")
        write_apr(scaled, paths["scaled"])
    ins = [paths[k] for k in inputs]
    ta_sum = materialize(merge("task_arithmetic", ins, base_model=models["base"])[0])
    ta_mean = materialize(merge("task_arithmetic", ins, base_model=models["base"], normalize=True)[0])
    ties = materialize(merge("ties", ins, base_model=models["base"], density=1.0)[0])
    dare = materialize(merge("dare", ins, seed=5, base_model=models["base"], drop_rate=0.0)[0])
    dare_ties = materialize(merge("dare_ties", ins, seed=5, base_model=models["base"], drop_rate=0.0)[0])
    for name in ta_sum:
        assert torch.equal(ties[name], ta_mean[name]), name  # TIES' disjoint mean, all signs agreeing
        assert torch.equal(dare[name], ta_sum[name]), name  # DARE sums, as task arithmetic does
        assert torch.equal(dare_ties[name], ties[name]), name


def _ties_reference(base, inputs, density, normalize=True):
    """TIES written independently, element by element in float64 (Yadav et al. 2023, with mergekit's
    count k = int(density * n) and exact top-k by argsort): trim, elect sign, disjoint mean."""
    import numpy as np

    x = base.astype(np.float64)
    taus = [m.astype(np.float64) - x for m in inputs]
    trimmed = []
    for tau in taus:
        k = max(1, int(density * tau.size))
        keep = np.argsort(-np.abs(tau), kind="stable")[:k]
        t = np.zeros_like(tau)
        t[keep] = tau[keep]
        trimmed.append(t)
    stack = np.stack(trimmed)
    sign = np.sign(stack.sum(0))
    agree = (np.sign(stack) == sign) & (stack != 0)
    total = (stack * agree).sum(0)
    count = agree.sum(0)
    merged = np.where(count > 0, total / np.maximum(count, 1), 0.0) if normalize else total
    return x + merged


def test_ties_matches_an_independent_reference(models):
    base, a, b, c = (read_apr(models[k]) for k in ("base", "a", "b", "c"))
    for density in (0.3, 0.05):
        out, _ = merge("ties", [a, b, c], base_model=models["base"], density=density)
        for name in base.names():
            expect = _ties_reference(base.tensor(name).reshape(-1).numpy(),
                                     [m.tensor(name).reshape(-1).numpy() for m in (a, b, c)], density)
            got = out.tensor(name).reshape(-1)
            torch.testing.assert_close(got, torch.from_numpy(expect).to(got.dtype), rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name: f"{n} at density {density}: {m}")


def test_ties_keeps_floor_density_times_n_entries(models):
    """One task vector: the merge changes exactly mergekit's k = floor(density * n) entries of each
    tensor whose task vector has distinct magnitudes (round() would keep one more on some)."""
    base, a = read_apr(models["base"]), read_apr(models["a"])
    out, _ = merge("ties", [a], base_model=models["base"], density=0.3)
    checked = 0
    for name in base.names():
        tau = (a.tensor(name) - base.tensor(name)).reshape(-1)
        if tau.abs().unique().numel() != tau.numel():
            continue  # tied magnitudes (e.g. norms initialised alike) keep every tied entry
        changed = int((out.tensor(name) != base.tensor(name)).sum())
        assert changed == max(1, math.floor(0.3 * tau.numel())), name
        checked += 1
    assert checked >= 10


def test_dare_drops_at_the_rate_and_rescales_survivors(models):
    base, a = read_apr(models["base"]), read_apr(models["a"])
    out, _ = merge("dare", [a], seed=3, base_model=models["base"], drop_rate=0.3)
    total = dropped = 0
    for name in base.names():
        x, y, z = base.tensor(name), a.tensor(name), out.tensor(name)
        tau, got = y - x, z - x
        kept = got != 0
        dropped += int((~kept & (tau != 0)).sum())
        total += int((tau != 0).sum())
        torch.testing.assert_close(got[kept], tau[kept] / 0.7, rtol=1e-4, atol=1e-6)
    assert abs(dropped / total - 0.3) < 0.01


# --------------------------------------------------------------------------- determinism and streaming

@pytest.mark.parametrize("strategy", ["dare", "dare_ties"])
def test_same_seed_same_bytes_and_seeds_differ(strategy, models, tmp_path):
    outs = {}
    for tag, seed in (("one", 7), ("two", 7), ("other", 8)):
        out, _ = merge(strategy, [models["a"], models["b"]], seed=seed, base_model=models["base"])
        outs[tag] = tmp_path / f"{tag}.apr"
        write_apr(out, outs[tag])
    assert outs["one"].read_bytes() == outs["two"].read_bytes()
    assert outs["one"].read_bytes() != outs["other"].read_bytes()


def test_transform_reads_nothing_and_the_writer_pulls_one_tensor_at_a_time(models, tmp_path):
    log = []
    inputs = [read_apr(models["a"]), read_apr(models["b"])]
    for i, m in enumerate(inputs):
        for name, lt in list(m.tensors.items()):
            m.tensors[name] = LazyTensor(lt.spec, lambda lt=lt, i=i, name=name: (log.append((name, i)), lt.load())[1])
    out, _ = merge("average", inputs)
    assert log == [], "transform must not read tensor data"
    write_apr(out, tmp_path / "avg.apr")
    order = [name for name, _ in log]
    runs = [n for j, n in enumerate(order) if j == 0 or order[j - 1] != n]
    assert runs == out.names(), "each tensor's inputs are read together, in the writer's order"
    assert all(order.count(n) == 2 for n in runs)


def test_provenance_records_strategy_params_seed_and_input_hashes(models, tmp_path, capsys):
    out_path = tmp_path / "dare.apr"
    proc = cli_in_process(capsys, "merge", models["a"], models["b"], "--strategy", "dare", "--drop-rate", "0.3",
                          "--base-model", models["base"], "--seed", "11", "-o", str(out_path))
    assert proc.returncode == 0, proc.stderr
    out = read_apr(out_path)
    rec = out.provenance[-1]
    assert rec["operation"] == "merge" and rec["technique"] == "dare"
    assert rec["params"]["drop_rate"] == 0.3 and rec["params"]["seed"] == 11
    hashes = [i["sha256"] for i in rec["inputs"]]
    assert hashes == [read_apr(models[k]).fingerprint() for k in ("a", "b", "base")]
    base = read_apr(models["base"])
    assert out.tokenizer == base.tokenizer and out.chat_template == base.chat_template


# --------------------------------------------------------------------------- mismatches

def cli_in_process(capsys, *args):
    """Run the CLI's entry point in this process (faster than a subprocess); exit code and output."""
    from types import SimpleNamespace

    from apr_core.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=exit_info.value.code, stdout=captured.out, stderr=captured.err)


def test_vocabulary_size_mismatch_merges_shared_rows_and_keeps_the_base_rows(tmp_path):
    small = tiny_model("llama", seed=0)
    big = tiny_model("llama", seed=1, vocab_size=small.config["vocab_size"] + 16)
    rows = small.config["vocab_size"]
    for ref, other in ((big, small), (small, big)):
        out, report = merge("average", [ref, other])
        assert out.config["vocab_size"] == ref.config["vocab_size"]
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            got, r, o = out.tensor(name), ref.tensor(name), other.tensor(name)
            assert got.shape == r.shape
            torch.testing.assert_close(got[:rows], (r[:rows] + o[:rows]) / 2)
            assert torch.equal(got[rows:], r[rows:])
        assert any("vocabularies differ" in n for n in report["notes"])
    base_path = str(tmp_path / "big.apr")
    write_apr(big, base_path)
    out, report = merge("ties", [small], base_model=base_path, density=1.0)
    emb = out.tensor("model.embed_tokens.weight")
    torch.testing.assert_close(emb[:rows], small.tensor("model.embed_tokens.weight"), rtol=0, atol=1e-6)
    assert torch.equal(emb[rows:], big.tensor("model.embed_tokens.weight")[rows:])
    assert any("kept the other 16 rows" in n for n in report["notes"])


def test_tied_and_untied_embeddings_follow_the_reference():
    tied = tiny_model("llama", seed=0, tie_word_embeddings=True)
    untied = tiny_model("llama", seed=1)
    assert "lm_head.weight" not in tied.tensors
    out, report = merge("average", [untied, tied])
    emb = tied.tensor("model.embed_tokens.weight")
    torch.testing.assert_close(out.tensor("lm_head.weight"), (untied.tensor("lm_head.weight") + emb) / 2)
    assert any("ties its embeddings" in n for n in report["notes"])
    out, report = merge("average", [tied, untied])
    assert "lm_head.weight" not in out.tensors and out.config["tie_word_embeddings"] is True
    assert any("is not used" in n for n in report["notes"])


@pytest.mark.parametrize("case", ["architecture", "shape", "layers", "weights", "slerp3", "flag", "base"])
def test_mismatches_are_refused_with_one_line_and_nothing_written(case, models, tmp_path, capsys):
    other = tmp_path / "other.apr"
    if case == "architecture":
        write_apr(tiny_model("qwen2", seed=1), other)
    elif case == "shape":
        write_apr(tiny_model("llama", seed=1, intermediate_size=96), other)
    elif case == "layers":
        write_apr(tiny_model("llama", seed=1, num_hidden_layers=3), other)
    out = tmp_path / "out.apr"
    args = {
        "architecture": [models["a"], str(other), "--strategy", "average"],
        "shape": [models["a"], str(other), "--strategy", "ties", "--base-model", models["base"]],
        "layers": [models["a"], str(other), "--strategy", "slerp"],
        "weights": [models["a"], models["b"], "--strategy", "weighted", "--weights", "0.5,0.3,0.2"],
        "slerp3": [models["a"], models["b"], models["c"], "--strategy", "slerp"],
        "flag": [models["a"], models["b"], "--strategy", "slerp", "--drop-rate", "0.3"],
        "base": [models["a"], models["b"], "--strategy", "dare", "--base-model", str(tmp_path / "missing.apr")],
    }[case]
    line = one_error_line(cli_in_process(capsys, "merge", *args, "-o", str(out)))
    expected = {"architecture": "different architectures", "shape": "shape of", "layers": "has tensor",
                "weights": "one per model", "slerp3": "takes 2", "flag": "does not apply", "base": "no such file"}
    assert expected[case] in line
    assert not out.exists() and list(tmp_path.glob("out*")) == []


def test_missing_base_model_and_quantized_inputs_are_user_errors(models):
    with pytest.raises(AprError, match="--base-model"):
        merge("ties", [models["a"], models["b"]])
    a = read_apr(models["a"])
    q = a.derive()
    name = a.names()[0]
    q.tensors[name] = LazyTensor(type(a.spec(name))(name, "Q8_0", (32,)), lambda: torch.zeros(34, dtype=torch.uint8))
    with pytest.raises(AprError, match="block-quantized"):
        merge("average", [q, a])


# --------------------------------------------------------------------------- CLI

def test_plan_prints_and_writes_nothing(models, tmp_path):
    out = tmp_path / "planned.apr"
    proc = run_apr("merge", models["a"], models["b"], "--strategy", "ties", "--base-model", models["base"],
                   "--density", "0.2", "--plan", "--json", "-o", str(out), check=True)
    plan = json.loads(proc.stdout)
    assert plan["technique"] == "merge ties" and plan["params"]["density"] == 0.2
    assert plan["output_bytes"] == read_apr(models["base"]).nbytes
    assert 0 < plan["peak_memory_bytes"] < 4 * plan["output_bytes"]
    assert [r["role"] for r in plan["inputs"]] == ["input 1", "input 2", "base"]
    assert not out.exists()


def test_the_playbook_merge_tournament_runs_as_written(tmp_path, capsys, monkeypatch):
    base = tiny_model("qwen2", seed=0)
    write_apr(base, tmp_path / "base.apr")
    for i, name in enumerate(("python-expert", "rust-expert", "ts-expert")):
        write_apr(finetuned(base, i + 10, source=name), tmp_path / f"{name}.apr")
    monkeypatch.chdir(tmp_path)

    def run(*args):
        proc = cli_in_process(capsys, *args)
        assert proc.returncode == 0, proc.stderr
        return proc
    run("merge", "python-expert.apr", "rust-expert.apr", "--strategy", "dare", "--drop-rate", "0.3",
        "--base-model", "base.apr", "-o", "round1.apr")
    run("merge", "round1.apr", "ts-expert.apr", "--strategy", "ties", "--base-model", "base.apr",
        "--density", "0.2", "-o", "semifinal.apr")
    proc = run("merge", "semifinal.apr", "base.apr", "--strategy", "slerp", "--weights", "0.85,0.15",
               "-o", "merged-final.apr", "--json")
    summary = json.loads(proc.stdout)
    assert summary["params"]["weights"] == [0.85, 0.15]
    final = read_apr(tmp_path / "merged-final.apr")
    semi = read_apr(tmp_path / "semifinal.apr")
    assert final.tokenizer == base.tokenizer and final.chat_template == base.chat_template
    assert final.provenance[-1]["technique"] == "slerp"
    for name in base.names():  # 85% of the semifinal, 15% of the base
        f, s, b = (m.tensor(name).double() for m in (final, semi, base))
        assert (f - s).norm() <= (f - b).norm() + 1e-12
    round1 = read_apr(tmp_path / "round1.apr")
    assert round1.provenance[-1]["params"]["seed"] == 0 and round1.provenance[-1]["technique"] == "dare"


def test_a_different_tokenizer_is_reported_and_the_reference_one_kept():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    b.tokenizer["tokenizer.json"] = b.tokenizer["tokenizer.json"].replace(b"<|im_end|>", b"<|im_stop|>")
    out, report = merge("average", [a, b])
    assert out.tokenizer == a.tokenizer
    assert any("tokenizer of input 2" in n for n in report["notes"])
