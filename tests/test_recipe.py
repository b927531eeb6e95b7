"""apr recipe on tiny models: dependency order, content-addressed caching, kill-and-resume with the
same final bytes, the plan and its warnings, and recipes that are refused before anything runs."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from apr_core.testing import write_tiny
from helpers import one_error_line, run_apr, run_apr_signalled_at_checkpoint


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    write_tiny(d / "base.apr", "llama", seed=0)
    write_tiny(d / "other.apr", "qwen2", seed=1)
    rows = [{"instruction": f"Write f{i}.", "output": f"def f{i}(x):\n    return x + {i}\n"} for i in range(32)]
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "text.txt").write_text("def add(a, b):\n    return a + b\n" * 40)
    return d


def recipe(inputs, tmp_path, steps=None, report=True, name="tiny", **extra_steps):
    train = {"data": str(inputs / "a.jsonl"), "batch_size": 4, "dropout": 0, "eval_split": 0}
    body = {
        "name": name,
        "workdir": str(tmp_path / "work"),
        "steps": steps or {
            "base": {"import": str(inputs / "base.apr")},
            "a": {"finetune": "lora", "input": "base", "with": {**train, "max_steps": 2}},
            "b": {"finetune": "lora", "input": "base", "with": {**train, "max_steps": 3, "rank": 8}},
            "m": {"merge": "ties", "inputs": ["a", "b"], "with": {"base_model": "@base", "density": 0.5}},
            "q": {"quantize": "int8", "input": "m"},
            **extra_steps,
        },
    }
    if report:
        body["report"] = {"models": ["base", "a", "m", "q"],
                          "metrics": [{"name": "ppl", "eval": "perplexity",
                                       "with": {"dataset": str(inputs / "text.txt"), "seq_len": 32}},
                                      {"name": "ppl64", "eval": "perplexity", "models": ["base", "q"],
                                       "with": {"dataset": str(inputs / "text.txt"), "seq_len": 64}}]}
    path = tmp_path / f"{name}.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_run_then_everything_is_cached(inputs, tmp_path):
    path = recipe(inputs, tmp_path)
    first = json.loads(run_apr("recipe", "run", str(path), "--json", "-q", check=True).stdout)
    assert [s["step"] for s in first["steps"]] == ["base", "a", "b", "m", "q"]
    assert not any(s["cached"] for s in first["steps"])
    rows = {r["step"]: r for r in first["leaderboard"]}
    assert set(rows) == {"base", "a", "m", "q"} and all(r["ppl"] > 1 for r in rows.values())
    # a metric restricted to some models is evaluated on those only (a dash in the table)
    assert rows["a"]["ppl64"] is None and rows["m"]["ppl64"] is None and rows["q"]["ppl64"] > 1
    assert rows["base"]["ppl64"] != rows["base"]["ppl"]
    assert "| - |" in (Path(first["leaderboard_json"]).parent / "leaderboard.md").read_text()
    assert rows["q"]["bytes"] < rows["m"]["bytes"]
    assert Path(first["chart"]).is_file() and Path(first["leaderboard_json"]).is_file()
    outputs = {s["step"]: Path(s["output"]) for s in first["steps"]}
    q = outputs["q"].read_bytes()
    again = json.loads(run_apr("recipe", "run", str(path), "--json", "-q", check=True).stdout)
    assert all(s["cached"] for s in again["steps"]) and again["leaderboard"] == first["leaderboard"]
    assert outputs["q"].read_bytes() == q
    # a changed parameter re-runs that step and everything downstream of it, nothing else
    changed = recipe(inputs, tmp_path, name="tiny")
    body = yaml.safe_load(changed.read_text())
    body["steps"]["b"]["with"]["max_steps"] = 4
    changed.write_text(yaml.safe_dump(body, sort_keys=False))
    third = json.loads(run_apr("recipe", "run", str(changed), "--json", "-q", "--no-report", check=True).stdout)
    assert {s["step"]: s["cached"] for s in third["steps"]} == {"base": True, "a": True, "b": False, "m": False,
                                                                 "q": False}
    model = run_apr("inspect", str(Path(third["steps"][-1]["output"])), "--json", check=True)
    provenance = json.loads(model.stdout)["provenance"]
    assert [r["operation"] for r in provenance[-2:]] == ["merge", "quantize"]
    assert len(provenance[-2]["inputs"]) == 3  # the two fine-tuned specialists and the base, by hash


def test_killed_recipe_resumes_at_its_step_with_the_same_bytes(inputs, tmp_path):
    train = {"data": str(inputs / "a.jsonl"), "batch_size": 2, "dropout": 0.1, "eval_split": 0,
             "max_steps": 24, "save_steps": 4}
    steps = {"base": {"import": str(inputs / "base.apr")},
             "a": {"finetune": "lora", "input": "base", "with": train},
             "q": {"quantize": "int8", "input": "a"}}
    path = recipe(inputs, tmp_path, steps=steps, report=False)  # one workdir: paths are in the metadata
    done = json.loads(run_apr("recipe", "run", str(path), "--json", "-q", check=True).stdout)
    expected = Path(done["steps"][-1]["output"]).read_bytes()
    work = tmp_path / "work"
    shutil.rmtree(work)
    killed = run_apr_signalled_at_checkpoint(["recipe", "run", str(path), "-q"], 8, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(work.glob("a-*.apr.run/checkpoints/step-00000008"))
    assert not list(work.glob("q-*.apr"))
    resumed = json.loads(run_apr("recipe", "run", str(path), "--json", "-q", check=True).stdout)
    assert [s["cached"] for s in resumed["steps"]] == [True, False, False]
    assert Path(resumed["steps"][-1]["output"]).read_bytes() == expected


def test_bad_recipes_are_one_line_and_run_nothing(inputs, tmp_path):
    base = {"import": str(inputs / "base.apr")}
    cases = {
        "typo": ({"base": base, "p": {"prune": "magnitude", "input": "base", "with": {"target_ration": 0.5}}},
                 "--target-ration does not apply"),
        "range": ({"base": base, "p": {"prune": "magnitude", "input": "base", "with": {"target_ratio": 1.5}}},
                  "step 'p': --target-ratio must be in"),
        "missing": ({"base": base, "m": {"merge": "average", "inputs": ["base", "nowhere"]}},
                    "refers to 'nowhere'"),
        "cycle": ({"a": {"merge": "average", "inputs": ["b", "b"]}, "b": {"merge": "average", "inputs": ["a", "a"]}},
                  "cycle"),
        "technique": ({"base": base, "q": {"quantize": "int3", "input": "base"}}, "unknown quantize technique"),
        "action": ({"base": base, "x": {"frobnicate": "x", "input": "base"}}, "unknown key 'frobnicate'"),
        "required": ({"base": base, "t": {"merge": "ties", "inputs": ["base"]}}, "needs --base-model"),
    }
    for name, (steps, message) in cases.items():
        path = recipe(inputs, tmp_path / name, steps=steps, report=False, name=name)
        assert message in one_error_line(run_apr("recipe", "run", str(path))), name
        assert not (tmp_path / name / "work").exists(), name
    assert "no such recipe" in one_error_line(run_apr("recipe", "run", str(tmp_path / "nope.yaml")))
    (tmp_path / "broken.yaml").write_text("steps: [\n")
    assert "not valid YAML" in one_error_line(run_apr("recipe", "plan", str(tmp_path / "broken.yaml")))


def test_plan_estimates_and_order_warnings(inputs, tmp_path):
    steps = {"base": {"import": str(inputs / "base.apr")},
             "other": {"import": str(inputs / "other.apr")},
             "q": {"quantize": "int8", "input": "base"},
             "p": {"prune": "magnitude", "input": "q", "with": {"target_ratio": 0.5}},
             "m": {"merge": "average", "inputs": ["base", "other"]}}
    path = recipe(inputs, tmp_path, steps=steps, report=False)
    report = json.loads(run_apr("recipe", "plan", str(path), "--json", check=True).stdout)
    rows = {r["step"]: r for r in report["steps"]}
    assert rows["q"]["output_bytes"] < rows["q"].get("peak_memory_bytes", 10 ** 12) or rows["q"]["output_bytes"] > 0
    assert not any(r["done"] for r in rows.values())
    assert any("'p' (prune) reads the output of quantize step 'q'" in w for w in report["warnings"])
    assert any("'m' merges models of different bases" in w for w in report["warnings"])
    assert not (tmp_path / "work").exists()  # planning writes nothing


def test_set_overrides_a_step(inputs, tmp_path):
    path = recipe(inputs, tmp_path, report=False)
    out = json.loads(run_apr("recipe", "run", str(path), "--until", "a", "--set", "a.max_steps=1", "--json", "-q",
                             check=True).stdout)
    assert [s["step"] for s in out["steps"]] == ["base", "a"]
    report = json.loads(run_apr("inspect", out["steps"][-1]["output"], "--json", check=True).stdout)
    assert report["provenance"][-1]["result"]["steps"] == 1
    assert "no step 'zz'" in one_error_line(run_apr("recipe", "run", str(path), "--set", "zz.x=1"))


def test_a_metric_restricted_to_an_unreported_model_is_refused(inputs, tmp_path):
    path = recipe(inputs, tmp_path)
    body = yaml.safe_load(path.read_text())
    body["report"]["metrics"][1]["models"] = ["base", "b"]
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    assert "lists 'b', which is not one of the report's models" in one_error_line(run_apr("recipe", "plan", str(path)))


def test_a_tune_step_writes_the_best_model_and_is_cached(inputs, tmp_path):
    steps = {"base": {"import": str(inputs / "base.apr")},
             "best": {"tune": "classify", "input": "base",
                      "with": {"method": "lora", "data": str(inputs / "a.jsonl"), "budget": 2, "max_epochs": 1,
                               "strategy": "random", "scheduler": "none",
                               "set": {"batch_size": 4, "eval_split": 0.25, "dropout": 0}}},
             "q": {"quantize": "int8", "input": "best"}}
    path = recipe(inputs, tmp_path, steps=steps, report=False, name="tuned")
    first = json.loads(run_apr("recipe", "run", str(path), "--json", "-q", check=True).stdout)
    best = Path(first["steps"][1]["output"])
    assert best.is_file() and Path(first["steps"][2]["output"]).is_file()
    trials = [json.loads(line) for line in (Path(str(best) + ".tune") / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2
    provenance = json.loads(run_apr("inspect", str(best), "--json", check=True).stdout)["provenance"]
    assert provenance[-1]["operation"] == "finetune"
    again = json.loads(run_apr("recipe", "run", str(path), "--json", "-q", check=True).stdout)
    assert all(s["cached"] for s in again["steps"])
    body = yaml.safe_load(path.read_text())
    body["steps"]["best"]["with"]["budgit"] = 3
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    assert "--budgit is not an apr tune option" in one_error_line(run_apr("recipe", "plan", str(path)))


@pytest.mark.parametrize("shipped", sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml")), ids=str)
def test_shipped_recipes_are_valid(shipped):
    from apr_recipe import spec

    loaded = spec.load(shipped)
    assert loaded.order and set(loaded.report_models) <= set(loaded.steps)
    assert all(step.action in ("import", "data", "tune") or step.technique for step in loaded.steps.values())
