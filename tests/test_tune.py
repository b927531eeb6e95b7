"""apr tune on a tiny model: declared and file search spaces (and their errors), the trainer's
on_eval hook and pruning, scout -> from-scout as the playbook writes it, --plan with --vram,
time limits, kill -9 and resume on the journal, and two workers on PostgreSQL (with
APR_TEST_POSTGRES_URL; scripts/start-postgres.sh)."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.params import Param, Search
from apr_core.technique import RunContext
from apr_core.testing import write_tiny
from helpers import one_error_line, run_apr, run_without_heavy_imports

optuna = pytest.importorskip("optuna")

from apr_tune import runner  # noqa: E402
from apr_tune import space as S  # noqa: E402
from apr_tune import study as ST  # noqa: E402

# every trial is a few optimizer steps on a tiny model
SMALL = {"eval_split": "0.25", "batch_size": "4", "max_seq_len": "64"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    write_tiny(d / "qwen-7b.apr", "qwen2", seed=0)
    rows = [{"instruction": f"Write a function that adds {i} to x.", "output": f"def f(x):\n    return x + {i}\n"}
            for i in range(16)]
    (d / "code-instruct-50k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def settings(work, tmp_path, **kw):
    kw.setdefault("fixed", dict(SMALL))
    kw.setdefault("output_dir", str(tmp_path / "results"))
    kw.setdefault("data", str(work / "code-instruct-50k.jsonl"))
    if kw["data"] is None:
        del kw["data"]
    return runner.Settings(models=[str(work / "qwen-7b.apr")], **kw)


def ctx():
    return RunContext(quiet=True, seed=0)


def trials(directory):
    return [json.loads(line) for line in (Path(directory) / "trials.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ spaces

def test_finetune_declares_its_search_space_next_to_its_parameters():
    lora = pipeline.technique_of("finetune", "lora")
    space = S.declared(lora.params)
    assert space["learning_rate"] == Search(1e-5, 1e-3, log=True)
    assert space["rank"].choices == (4, 8, 16, 32, 64)
    assert {"alpha", "dropout"} <= set(space)
    assert S.declared(pipeline.technique_of("finetune", "full").params)["learning_rate"].high == 1e-4
    assert "target_ratio" in S.declared(pipeline.technique_of("prune", "wanda").params)
    assert {"density", "weights"} <= set(S.declared(pipeline.technique_of("merge", "ties").params))
    with pytest.raises(ValueError, match="empty search range"):
        Search(2.0, 1.0)


def test_space_file_overrides_names_and_checks_them(tmp_path):
    lora = pipeline.technique_of("finetune", "lora")
    f = tmp_path / "space.yaml"
    f.write_text("learning_rate: {low: 1e-4, high: 1e-3, log: true}\nrank: [8, 16]\nalpha: null\n")
    loaded = S.load_file(f, lora.params, "finetune lora")
    space = S.resolve(lora.params, loaded, {"dropout": "0.1"}, "finetune lora")
    assert space == {"rank": Search(choices=(8, 16)), "learning_rate": Search(1e-4, 1e-3, log=True)}
    bad = {"unknown parameter 'learning_rat'": "learning_rat: {low: 1, high: 2}\n",
           "empty range": "learning_rate: {low: 1e-3, high: 1e-4}\n",
           "empty list of choices": "rank: []\n",
           "must be in": "dropout: {low: 0.0, high: 1.5}\n",
           "log-scale range needs low > 0": "dropout: {low: 0.0, high: 0.5, log: true}\n",
           "whole number": "rank: [4.5]\n"}
    for message, text in bad.items():
        f.write_text(text)
        with pytest.raises(AprError, match=message):
            S.load_file(f, lora.params, "finetune lora")


@pytest.mark.parametrize("text,message", [("learning_rat: {low: 1.0e-5, high: 1.0e-3}\n", "unknown parameter"),
                                          ("rank: {low: 64, high: 8}\n", "empty range")])
def test_bad_space_file_is_one_line_and_exit_2(work, tmp_path, text, message):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    proc = run_apr("tune", str(work / "qwen-7b.apr"), "--data", str(work / "code-instruct-50k.jsonl"),
                   "--space", str(f), "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert message in one_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_help_loads_no_heavy_module():
    run_without_heavy_imports(["tune", "--help"])


@pytest.mark.parametrize("kw,message", [({"budget": 0}, "--budget"), ({"strategy": "bayes"}, "--strategy"),
                                        ({"scheduler": "sha"}, "--scheduler"), ({"time_limit": "soon"}, "--time-limit"),
                                        ({"task": "classfy"}, "--task"), ({"method": "lorra"}, "lorra"),
                                        ({"fixed": {"rnk": "8"}}, "--rnk does not apply"),
                                        ({"fixed": {"batch_size": "0"}}, "--batch-size must be"),
                                        ({"scout": True, "from_scout": "x"}, "two phases"),
                                        ({"from_scout": "nowhere"}, "no space.yaml"),
                                        ({"data": None}, "needs --data")])
def test_bad_settings_fail_before_anything_runs(work, tmp_path, kw, message):
    with pytest.raises(AprError, match=message):
        runner.run(settings(work, tmp_path, **kw), ctx())
    assert not (tmp_path / "results").exists()


def test_output_that_would_replace_the_input_is_refused_before_any_trial(work, tmp_path):
    with pytest.raises(AprError, match="replace the input"):
        runner.run(settings(work, tmp_path, output=str(work / "qwen-7b.apr")), ctx())
    assert not (tmp_path / "results").exists()


def test_grid_and_narrowing():
    params = (Param("lr", "float", 1e-3, search=Search(1e-4, 1e-2, log=True)),
              Param("r", "int", 8, search=Search(choices=(4, 8, 16))),
              Param("w", "floats", None, search=Search(0.0, 1.0)))
    space = S.declared(params)
    grid = S.grid(space, params, {"w": 2})
    assert grid["lr"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert grid["r"] == [4, 8, 16] and grid["w[0]"] == grid["w[1]"] == [0.0, 0.5, 1.0]
    narrowed = S.narrow(space, [{"lr": 2e-3, "r": 8, "w": (0.5, 0.6)}, {"lr": 3e-3, "r": 16, "w": (0.4, 0.5)}], params)
    assert narrowed["r"].choices == (8, 16)
    assert narrowed["lr"].low == pytest.approx(2e-3 / 1.5) and narrowed["lr"].high == pytest.approx(4.5e-3)
    assert narrowed["w"].low == pytest.approx(0.3) and narrowed["w"].high == pytest.approx(0.7)


def test_durations():
    assert ST.parse_duration("8h") == 8 * 3600
    assert ST.parse_duration("1h30m") == 5400 and ST.parse_duration("90") == 90
    with pytest.raises(AprError, match="--time-limit"):
        ST.parse_duration("8 hours")


# ------------------------------------------------------------------------------ trainer hook

def test_trainer_reports_each_eval_and_a_raising_callback_stops_it(work, tmp_path):
    calls = []

    class Stop(Exception):
        pass

    def on_eval(step, loss, epoch):
        calls.append((step, loss, epoch))
        if len(calls) == 3:
            raise Stop

    context = RunContext(quiet=True, on_eval=on_eval)
    raw = {"data": str(work / "code-instruct-50k.jsonl"), "epochs": 3, "eval_split": 0.25, "batch_size": 4,
           "eval_steps": 2}
    with pytest.raises(Stop):
        pipeline.run("finetune", "lora", [str(work / "qwen-7b.apr")], raw, str(tmp_path / "a/"), context=context)
    # 12 training rows / 4 = 3 steps per epoch; evaluations every 2 steps and at each epoch end
    assert [c[0] for c in calls] == [2, 3, 4]
    assert [c[2] for c in calls] == pytest.approx([2 / 3, 1.0, 4 / 3])
    assert all(c[1] > 0 for c in calls)
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------ studies

def test_asha_prunes_trials_early_and_results_are_written(work, tmp_path):
    s = settings(work, tmp_path, budget=6, max_epochs=4, scheduler="asha", strategy="random")
    summary = runner.run(s, ctx())
    rows = trials(s.output_dir)
    assert len(rows) == 6 and summary["trials"].get("complete", 0) + summary["trials"].get("pruned", 0) == 6
    assert summary["steps_per_epoch"] == 3 and summary["eval_steps"] == 3
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, "ASHA pruned nothing in six random trials"
    for r in pruned:  # stopped at its rung, not trained to the end; its files are gone
        assert r["steps"] < 12 and r["intermediate"]
        assert not (Path(s.output_dir) / "trials" / f"{r['number']:04d}").exists()
    assert summary["trial_epochs"] < 6 * 4
    best = json.loads((Path(s.output_dir) / "best_params.json").read_text())
    done = [r for r in rows if r["state"] == "complete"]
    assert best["value"] == min(r["value"] for r in done)
    assert set(best["params"]) == {"rank", "alpha", "dropout", "learning_rate"}
    for name in ("history.png", "space.yaml", "best_configs.json", "importances.json", "summary.json"):
        assert (Path(s.output_dir) / name).is_file(), name


def test_grid_strategy_covers_a_small_grid_and_writes_the_best_model(work, tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("rank: [4, 8]\nlearning_rate: [1.0e-4, 1.0e-3]\nalpha: null\ndropout: null\n")
    s = settings(work, tmp_path, budget=10, max_epochs=1, strategy="grid", scheduler="none", space_file=str(f),
                 output=str(tmp_path / "best.apr"))
    summary = runner.run(s, ctx())
    assert summary["stopped"] == "grid-exhausted"
    seen = {(r["params"]["rank"], r["params"]["learning_rate"]) for r in trials(s.output_dir)}
    assert seen == {(4, 1e-4), (4, 1e-3), (8, 1e-4), (8, 1e-3)}
    best = pipeline.load(summary["best_model"])
    assert best.provenance[-1]["params"]["merge"] is True
    assert best.tensors.keys() == pipeline.load(str(work / "qwen-7b.apr")).tensors.keys()


def test_time_limit_starts_no_trial_after_it(work, tmp_path):
    s = settings(work, tmp_path, budget=5, max_epochs=1, time_limit="0.001s")
    time.sleep(0.01)
    summary = runner.run(s, ctx())
    assert summary["stopped"] == "time-limit" and not summary["trials"]


def test_plan_shows_the_largest_rank_that_fits(work, tmp_path, monkeypatch):
    s = settings(work, tmp_path, method="qlora", vram=16.0)
    report = runner.plan(s, ctx())
    assert report["largest_rank"] == 64 and report["fits_vram"] is True
    assert report["steps_per_trial"] == 3 * 3 and report["seconds_total_at_most"] >= report["seconds_per_trial"]
    real = pipeline.plan

    def tight(kind, name, sources, raw, context=None):  # pretend only ranks up to 16 fit
        out = real(kind, name, sources, raw, context)
        out["fits_vram"] = raw["rank"] <= 16
        return out

    monkeypatch.setattr(pipeline, "plan", tight)
    report = runner.plan(s, ctx())
    assert report["largest_rank"] == 16
    assert dict((r["parameter"], r["space"]) for r in report["space"])["rank"] == "{4, 8, 16}"


@pytest.mark.slow  # thirty trials of a tiny model, about two minutes on two shared cores
def test_playbook_commands_run_as_written(work, tmp_path):
    (tmp_path / "qwen-7b.apr").symlink_to(work / "qwen-7b.apr")
    rows = (work / "code-instruct-50k.jsonl").read_text().splitlines()[:8]  # 7 train, 1 held out: 2 steps/epoch
    (tmp_path / "code-instruct-50k.jsonl").write_text("\n".join(rows) + "\n")
    scout = run_apr("tune", "qwen-7b.apr", "--task", "classify", "--data", "code-instruct-50k.jsonl", "--budget", "20",
                    "--strategy", "tpe", "--scheduler", "asha", "--scout", "--json", cwd=tmp_path, check=True)
    summary = json.loads(scout.stdout)
    assert summary["directory"] == "scout-results" and summary["epochs_per_trial"] == 1
    assert sum(summary["trials"].values()) == 20
    configs = json.loads((tmp_path / "scout-results" / "best_configs.json").read_text())["configs"]
    assert len(configs) == 3
    full = run_apr("tune", "qwen-7b.apr", "--task", "classify", "--data", "code-instruct-50k.jsonl", "--budget", "10",
                   "--from-scout", "scout-results/", "--max-epochs", "20", "--time-limit", "8h", cwd=tmp_path,
                   check=True)
    assert "stopped by budget" in full.stdout
    rows = trials(tmp_path / "tune-results")
    assert [r["from_scout_trial"] for r in rows[:3]] == [c["trial"] for c in configs]
    assert rows[0]["params"] == configs[0]["params"]
    plan = run_apr("tune", "qwen-7b.apr", "--method", "qlora", "--vram", "16", "--plan", cwd=tmp_path, check=True)
    assert "largest_rank: 64" in plan.stdout and "fits_vram: True" in plan.stdout


# ------------------------------------------------------------------------------ kill and resume

def _cli(work, out, *extra):
    return [sys.executable, "-m", "apr_core.cli", "tune", str(work / "qwen-7b.apr"), "--data",
            str(work / "code-instruct-50k.jsonl"), "--scheduler", "none", "--max-epochs", "3",
            *[a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")], "--output-dir", str(out), "-q", *extra]


def _journal_trials(out):
    study = optuna.load_study(study_name="classify-lora", storage=ST.storage(None, Path(out)))
    return study.get_trials()


def test_kill_9_then_rerun_loses_no_completed_trial(work, tmp_path):
    out = tmp_path / "study"
    proc = subprocess.Popen(_cli(work, out, "--budget", "4"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    done = []
    while time.time() < deadline and proc.poll() is None:
        if (out / ST.JOURNAL).exists():
            ts = _journal_trials(out)
            done = [t for t in ts if t.state.name == "COMPLETE"]
            if done and any(t.state.name == "RUNNING" for t in ts):
                break
        time.sleep(0.3)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in _journal_trials(out) if t.state.name == "COMPLETE"}
    assert before
    rerun = subprocess.run(_cli(work, out, "--budget", "4"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    after = _journal_trials(out)
    assert {t.number: t.value for t in after if t.number in before} == before
    states = [t.state.name for t in after]
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states
    killed = [t for t in after if t.state.name == "FAIL"]
    assert len(killed) == 1
    retry = [t for t in after if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].params == killed[0].params and retry[0].state.name == "COMPLETE"


POSTGRES = os.environ.get("APR_TEST_POSTGRES_URL")


@pytest.mark.skipif(not POSTGRES, reason="APR_TEST_POSTGRES_URL not set (scripts/start-postgres.sh)")
def test_two_workers_on_postgres_one_killed_mid_trial(work, tmp_path):
    name = f"t-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "APR_TUNE_HEARTBEAT": "1", "APR_TUNE_GRACE": "4"}
    budget = 5
    args = ("--budget", str(budget), "--storage", POSTGRES, "--study-name", name)
    workers = [subprocess.Popen(_cli(work, tmp_path / f"w{i}", *args), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for i in range(2)]
    victim = workers[1]
    storage = optuna.storages.RDBStorage(POSTGRES)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            ts = optuna.load_study(study_name=name, storage=storage).get_trials()
        except KeyError:  # not created yet
            ts = []
        mine = [t for t in ts if t.state.name == "RUNNING" and len(t.params) == 4  # sampled: now training
                and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        if mine and any(t.state.name == "COMPLETE" for t in ts):
            break
        time.sleep(0.3)
    assert victim.poll() is None, victim.stderr.read().decode()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_number = mine[0].number
    survivor = workers[0]
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err.decode()
    ts = optuna.load_study(study_name=name, storage=storage).get_trials()
    states = [t.state.name for t in ts]
    assert states.count("COMPLETE") == budget, states
    assert "RUNNING" not in states and "WAITING" not in states
    killed = next(t for t in ts if t.number == killed_number)
    assert killed.state.name == "FAIL"
    retried = [t for t in ts if t.system_attrs.get("failed_trial") == killed_number]
    assert retried and retried[0].state.name == "COMPLETE" and retried[0].params == killed.params


def test_prune_and_merge_objectives_score_with_an_evaluate_technique(work, tmp_path):
    base = str(work / "qwen-7b.apr")
    others = [write_tiny(tmp_path / f"m{i}.apr", "qwen2", seed=i) for i in (1, 2)]
    pruned = runner.run(runner.Settings(models=[base], task="prune", method="magnitude", budget=2,
                                        output_dir=str(tmp_path / "p"), eval_params={"max_tokens": "128"}), ctx())
    assert pruned["objective"] == "perplexity" and pruned["trials"] == {"complete": 2}
    rows = trials(tmp_path / "p")
    ratio = rows[0]["params"]["target_ratio"]
    assert 0.1 <= ratio <= 0.7
    model = pipeline.load(rows[0]["model"])
    assert model.provenance[-1]["params"]["target_ratio"] == ratio
    assert rows[0]["value"] == pytest.approx(
        pipeline.run("evaluate", "perplexity", [rows[0]["model"]], {"max_tokens": "128"})["value"])
    merged = runner.run(runner.Settings(models=others, task="merge", method="ties", budget=2,
                                        fixed={"base_model": base}, output_dir=str(tmp_path / "m"),
                                        eval_params={"max_tokens": "128"}), ctx())
    assert merged["trials"] == {"complete": 2}
    weights = trials(tmp_path / "m")[0]["technique_params"]["weights"]
    assert len(weights) == 2 and all(0 <= w <= 1 for w in weights)


def test_time_limit_stops_a_running_trial_and_the_next_run_continues_it(work, tmp_path, monkeypatch):
    calls = {"n": 0}

    def passed(self):  # the loop's check before the trial, then one per evaluation: time is up at the second
        if self.end is None:
            return False
        calls["n"] += 1
        return calls["n"] >= 3

    monkeypatch.setattr(ST.Deadline, "passed", passed)
    s = settings(work, tmp_path, budget=1, max_epochs=4, scheduler="none", time_limit="8h")
    first = runner.run(s, ctx())
    assert first["stopped"] == "time-limit" and first["trials"] == {"fail": 1}
    stopped = trials(s.output_dir)[0]
    assert stopped["stopped"] == "time-limit" and stopped["steps"] == 6  # evaluations at steps 3 and 6
    s.time_limit = None
    second = runner.run(s, ctx())
    assert second["trials"] == {"fail": 1, "complete": 1}
    retry = trials(s.output_dir)[1]
    assert retry["retry_of"] == 0 and retry["params"] == stopped["params"]
    # resumed from the checkpoint of step 3 (written at every evaluation), not from scratch
    assert list(retry["intermediate"]) == ["6", "9", "12"]


def test_samplers_and_schedulers():
    assert isinstance(ST.pruner("asha", 3, 12), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(ST.pruner("hyperband", 3, 12), optuna.pruners.HyperbandPruner)
    assert isinstance(ST.pruner("median", 3, 12), optuna.pruners.MedianPruner)
    assert isinstance(ST.pruner("none", 3, 12), optuna.pruners.NopPruner)
    shared = ST.sampler("tpe", 0, 20, shared=True)
    assert shared._constant_liar and shared._multivariate
    assert not ST.sampler("tpe", 0, 20, shared=False)._constant_liar
    assert ST.sampler_seed(0, False) == 0 and ST.sampler_seed(0, True) != ST.sampler_seed(1, True)
    assert isinstance(ST.sampler("random", 0, 20, False), optuna.samplers.RandomSampler)


def test_a_configuration_that_runs_out_of_memory_fails_alone(work, tmp_path, monkeypatch):
    import torch

    from apr_tune import objectives

    real, calls = objectives.Finetune.run, []

    def run(self, sources, params, trial_dir, context):
        calls.append(params["rank"])
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, sources, params, trial_dir, context)

    monkeypatch.setattr(objectives.Finetune, "run", run)
    s = settings(work, tmp_path, budget=1, max_epochs=1, scheduler="none")
    summary = runner.run(s, ctx())
    assert summary["trials"] == {"fail": 1, "complete": 1}
    first = trials(s.output_dir)[0]
    assert first["state"] == "fail" and first["error"].startswith("out of memory")
    assert not (Path(s.output_dir) / "trials" / "0000").exists()
