"""``apr tune`` end to end: settings -> space -> study -> trials -> results directory.

Every name, parameter, range and file is checked before the first trial (and before a model is
loaded where possible). A trial is `Objective.run` (one `pipeline.run` of the technique, then its
score) with a `RunContext` whose ``on_eval`` reports each held-out loss to optuna, so the pruner
sees the learning curve. Results are rewritten atomically after every trial, so a kill leaves
a consistent directory and the journal holds every finished trial.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apr_core.errors import AprError

from . import space as S
from . import study as ST
from .objectives import Objective, objective

SCOUT_DIR = "scout-results"
TUNE_DIR = "tune-results"


@dataclass
class Settings:
    models: list[str]
    task: str = "classify"
    method: str | None = None
    data: str | None = None
    budget: int = 20
    strategy: str = "tpe"
    scheduler: str = "asha"
    time_limit: str | None = None
    max_epochs: int | None = None
    scout: bool = False
    from_scout: str | None = None
    space_file: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    eval_task: str | None = None
    eval_params: dict[str, Any] = field(default_factory=dict)
    direction: str | None = None
    storage: str | None = None
    study_name: str | None = None
    output_dir: str | None = None
    output: str | None = None
    data_fraction: float | None = None
    top_k: int = 3
    vram: float | None = None
    keep_trials: bool = True


@dataclass
class Prepared:
    """Everything checked and resolved before a trial runs."""

    settings: Settings
    objective: Objective
    params: tuple
    fixed: dict[str, Any]
    space: dict[str, S.Search]
    counts: dict[str, int]
    directory: Path
    epochs: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    eval_steps: int | None = None
    notes: list[str] = field(default_factory=list)


def prepare(s: Settings, context, load_data: bool = True) -> Prepared:
    from apr_core import pipeline

    if s.budget < 1:
        raise AprError(f"--budget must be at least 1, got {s.budget}")
    if s.scout and s.from_scout:
        raise AprError("--scout and --from-scout are two phases: run the scout first, then --from-scout DIR")
    if s.strategy not in ST.SAMPLERS:
        raise AprError(f"--strategy {s.strategy!r} is not one of {', '.join(ST.SAMPLERS)}")
    if s.scheduler not in ST.SCHEDULERS:
        raise AprError(f"--scheduler {s.scheduler!r} is not one of {', '.join(ST.SCHEDULERS)}")
    if s.direction not in (None, "minimize", "maximize"):
        raise AprError(f"--direction {s.direction!r} is not minimize or maximize")
    if s.data_fraction is not None and not 0 < s.data_fraction <= 1:
        raise AprError(f"--data-fraction must be in (0, 1], got {s.data_fraction}")
    ST.parse_duration(s.time_limit)
    obj = objective(s.task, s.method, s.eval_task, s.eval_params)
    kind_ = pipeline.kind(obj.kind)
    technique = pipeline.technique_of(kind_.name, obj.method)
    pipeline.check_input_count(kind_, technique, s.models)
    params = technique.params + kind_.options
    owner = f"{kind_.name} {technique.name}"
    fixed = dict(s.fixed)
    if s.data:
        fixed["data"] = s.data
    if s.vram is not None and "vram" in {p.name for p in params}:
        fixed["vram"] = s.vram
    directory = Path(s.output_dir or (SCOUT_DIR if s.scout else TUNE_DIR))
    if directory.resolve() == Path.cwd().resolve() or directory.resolve() in Path.cwd().resolve().parents:
        raise AprError(f"--output-dir {directory} is the current directory or above it; name a new one")
    if s.output:
        from apr_core.atomic import check_destination

        check_destination(s.output, s.models, None)  # before hours of trials, not after
    overrides: dict[str, S.Search | None] = {}
    if s.from_scout:
        scout = Path(s.from_scout)
        if not (scout / "space.yaml").is_file():
            raise AprError(f"--from-scout {scout}: no space.yaml there (run apr tune ... --scout first)")
        overrides.update(S.load_file(scout / "space.yaml", params, owner))
    if s.space_file:
        overrides.update(S.load_file(s.space_file, params, owner))
    space = S.resolve(params, overrides, fixed, owner)
    counts = {p.name: len(s.models) for p in params if p.type in S.VECTOR_TYPES}
    prepared = Prepared(s, obj, params, fixed, space, counts, directory)
    if obj.trains:
        prepared.epochs = s.max_epochs or (1 if s.scout else None)
        if prepared.epochs:
            fixed["epochs"] = prepared.epochs
    technique.resolve_params({k: v for k, v in fixed.items() if v is not None}, kind_.options)  # fail early
    if s.vram is not None and "rank" in space and space["rank"].choices:
        _fit_ranks(prepared, context)
    if obj.trains and load_data and fixed.get("data"):
        _schedule(prepared, technique, kind_, context)
    return prepared


def _fit_ranks(p: Prepared, context) -> None:
    """With --vram, keep only the ranks whose memory plan fits it (90%)."""
    from apr_core import pipeline

    fits = [r for r in p.space["rank"].choices
            if pipeline.plan(p.objective.kind, p.objective.method, p.settings.models,
                             {**_plan_raw(p), "rank": r, "vram": p.settings.vram}, context).get("fits_vram")]
    if not fits:
        raise AprError(f"no rank of {p.space['rank'].describe()} fits --vram {p.settings.vram:g} with 10% headroom; "
                       f"lower --set batch_size/max_seq_len or add --set gradient_checkpointing=true")
    if len(fits) < len(p.space["rank"].choices):
        p.notes.append(f"--vram {p.settings.vram:g}: ranks {', '.join(map(str, fits))} fit")
    p.space["rank"] = S.Search(choices=tuple(fits))


def _plan_raw(p: Prepared) -> dict[str, Any]:
    return {k: v for k, v in p.fixed.items() if k not in ("data", "eval_data", "epochs")}


def _schedule(p: Prepared, technique, kind_, context) -> None:
    """Steps per epoch from the (tokenized) data, and how often a trial reports its loss: about
    four times per trial at least (every quarter epoch in a one-epoch scout), every epoch in
    long runs."""
    from apr_core import pipeline
    from apr_finetune.technique import prepare_data

    if p.settings.scout and p.settings.data_fraction and p.settings.data_fraction < 1:
        p.fixed["data"] = _subset(p.fixed["data"], p.settings.data_fraction, p.directory, context.seed)
    resolved = technique.resolve_params({k: v for k, v in p.fixed.items() if v is not None}, kind_.options)
    data = prepare_data(pipeline.load(p.settings.models[0]), resolved, context.seed)
    per_step = resolved["batch_size"] * resolved["grad_accum"]
    p.steps_per_epoch = math.ceil(len(data["train"]) / per_step)
    p.epochs = resolved["epochs"]
    p.total_steps = p.steps_per_epoch * p.epochs
    if resolved.get("max_steps"):
        p.total_steps = min(p.total_steps, resolved["max_steps"])
    if not data["held_out"] and p.objective.eval_task == "loss":
        raise AprError("the held-out loss needs held-out examples: --set eval_split=0.1 or --set eval_data=FILE")
    if resolved.get("eval_steps"):
        p.eval_steps = resolved["eval_steps"]
    else:
        per_epoch_reports = max(1, math.ceil(4 / p.epochs))
        p.eval_steps = max(1, p.steps_per_epoch // per_epoch_reports)
        p.fixed["eval_steps"] = p.eval_steps
    if p.objective.method != "full" and "save_steps" not in p.settings.fixed:
        p.fixed["save_steps"] = p.eval_steps  # adapters are small: a stopped trial loses at most one eval


def _subset(path: str, fraction: float, directory: Path, seed: int) -> str:
    """A seeded ``fraction`` of the data's lines, written once into the results directory."""
    from apr_core.atomic import write_bytes

    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = max(2, round(fraction * len(lines)))
    chosen = sorted(random.Random(seed).sample(range(len(lines)), min(keep, len(lines))))
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"data-{fraction:g}.jsonl"
    write_bytes(out, ("\n".join(lines[i] for i in chosen) + "\n").encode())
    return str(out)


# ---------------------------------------------------------------------------------- run

def run(s: Settings, context) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = ST.Deadline(ST.parse_duration(s.time_limit))  # counted from the command's start
    began = time.time()
    p = prepare(s, context)
    obj = p.objective
    if obj.trains and not p.fixed.get("data"):
        raise AprError(f"apr tune --task {obj.task} needs --data FILE.jsonl (or --plan)")
    direction = obj.direction(s.direction)
    storage_ = ST.storage(s.storage, p.directory)
    p.directory.mkdir(parents=True, exist_ok=True)
    name = s.study_name or ("scout" if s.scout else f"{obj.task}-{obj.method}")
    sampler_ = ST.sampler(s.strategy, ST.sampler_seed(context.seed, bool(s.storage)), s.budget, shared=bool(s.storage),
                          grid_space=lambda: S.grid(p.space, p.params, p.counts))
    pruner_ = ST.pruner(s.scheduler if obj.trains and obj.eval_task == "loss" else "none",
                        p.eval_steps or 1, p.total_steps or 1)
    study = ST.open_study(storage_, name, direction, sampler_, pruner_)
    # the journal has no heartbeats: trials of dead local processes are found by their pid (a
    # database storage's heartbeat fails and retries them, on any host)
    recover = None if isinstance(storage_, optuna.storages.RDBStorage) else \
        (lambda: ST.recover_orphans(study, context.log, lambda n: str(_trial_dir(p, n))))
    if recover is not None:
        recover()
    ST.requeue_stopped(study, context.log, lambda n: str(_trial_dir(p, n)))
    if s.from_scout:
        _enqueue_scout(study, Path(s.from_scout), s.top_k, p, context)

    def trial_fn(trial):
        return _trial(trial, p, deadline, context)

    def after(study_, _trial_):
        write_results(study_, p, partial=True)

    stopped = ST.loop(study, trial_fn, s.budget, deadline, context.log, callbacks=[after], recover=recover)
    summary = write_results(study, p)
    summary.update({"stopped": stopped, "seconds": round(time.time() - began, 2), "study": name,
                    "storage": ST._redact(s.storage) if s.storage else str(p.directory / ST.JOURNAL),
                    "direction": direction, "strategy": s.strategy, "scheduler": s.scheduler,
                    "notes": p.notes})
    if s.output:
        best = summary.get("best")
        if not best:
            raise AprError(f"no trial completed, so there is no best model to write to {s.output}")
        trial = next(t for t in _rows(study) if t["number"] == best["trial"])
        summary["best_model"] = obj.best_model(s.models, trial, s.output, context.quieter())["output"]
    _write_json(p.directory / "summary.json", summary)
    return summary


def _trial(trial, p: Prepared, deadline, context) -> float:
    import optuna

    from apr_core.technique import RunContext

    trial.set_user_attr("worker", ST.worker_id())
    sampled = S.suggest(trial, p.space, p.params, p.counts)
    raw = {**p.fixed, **sampled}
    trial_dir = _trial_dir(p, trial.number)
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    if _take_checkpoint(trial.user_attrs.get("resume_from"), trial_dir):
        raw["resume"] = True
        context.log(f"trial {trial.number}: continues trial {trial.user_attrs.get('retry_of')} from its checkpoint")
    progress = {"step": 0}
    ctx = RunContext(seed=context.seed, device=context.device, dtype=context.dtype, quiet=True)
    reports = p.objective.trains and p.objective.eval_task == "loss"

    def on_eval(step: int, loss: float, epoch: float) -> None:
        progress["step"] = step
        if reports:
            trial.report(loss, step)
        if deadline.passed():
            trial.set_user_attr("stopped", "time-limit")
            raise ST.TimeUp(f"time limit reached at step {step}")
        if reports and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (held-out loss {loss:.4f})")

    ctx.on_eval = on_eval
    start = time.perf_counter()
    trial.set_user_attr("technique_params", _jsonable(sampled))
    try:
        result = p.objective.run(p.settings.models, raw, trial_dir, ctx)
    except optuna.TrialPruned:
        _account(trial, p, progress["step"], start)
        context.log(f"trial {trial.number}: pruned at step {progress['step']}")
        shutil.rmtree(trial_dir, ignore_errors=True)
        raise
    except ST.TimeUp:
        _account(trial, p, progress["step"], start)
        context.log(f"trial {trial.number}: stopped by --time-limit at step {progress['step']}")
        raise
    except Exception as exc:  # noqa: BLE001 - only running out of memory is a property of the configuration
        if not _out_of_memory(exc):
            raise
        _account(trial, p, progress["step"], start)
        trial.set_user_attr("error", f"out of memory: {str(exc).splitlines()[0][:160]}")
        context.log(f"trial {trial.number}: out of memory; the study continues with other configurations")
        shutil.rmtree(trial_dir, ignore_errors=True)
        raise ST.TrialFailed(str(exc)) from None
    steps = result.steps or p.total_steps
    _account(trial, p, steps, start)
    if reports and steps and steps != progress["step"]:
        trial.report(result.value, steps)
    for key, value in (("adapter", result.adapter), ("model", result.model)):
        if value:
            trial.set_user_attr(key, value)
    for key, value in (result.extra or {}).items():
        trial.set_user_attr(key, value)
    if not p.settings.keep_trials:
        shutil.rmtree(trial_dir / "run", ignore_errors=True)
    else:  # a completed trial needs no checkpoint to resume: keep its log and chart, free the disk
        from apr_core.runtime import checkpoint

        shutil.rmtree(checkpoint.directory(trial_dir / "run"), ignore_errors=True)
    context.log(f"trial {trial.number}: {p.objective.eval_task} {result.value:.6g} "
                f"({', '.join(f'{k}={_short(v)}' for k, v in sampled.items())})")
    return result.value


def _trial_dir(p: Prepared, number: int) -> Path:
    return p.directory / "trials" / f"{number:04d}"


def _take_checkpoint(previous: str | None, trial_dir: Path) -> bool:
    """Move a stopped or killed trial's run directory (its checkpoints) into the trial that
    retries it; True when there is a complete checkpoint to resume from."""
    from apr_core.runtime import checkpoint

    if not previous or not (Path(previous) / "run").is_dir():
        return False
    if checkpoint.latest(Path(previous) / "run") is None:
        return False
    shutil.move(str(Path(previous) / "run"), str(trial_dir / "run"))
    return True


def _out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _account(trial, p: Prepared, steps: int | None, start: float) -> None:
    """Compute spent: optimizer steps and trial-epochs (steps / steps per epoch)."""
    trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    if steps is not None:
        trial.set_user_attr("steps", int(steps))
        if p.steps_per_epoch:
            trial.set_user_attr("epochs_run", round(steps / p.steps_per_epoch, 4))


def _enqueue_scout(study, scout: Path, top_k: int, p: Prepared, context) -> None:
    """Queue the scout's best configurations first (once; a rerun finds them already there)."""
    path = scout / "best_configs.json"
    if not path.is_file():
        raise AprError(f"--from-scout {scout}: no best_configs.json there (did the scout complete a trial?)")
    configs = json.loads(path.read_text())["configs"][:top_k]
    for config in configs:
        params = {k: v for k, v in config["params"].items() if k.split("[")[0] in p.space}
        study.enqueue_trial(params, user_attrs={"from_scout_trial": config["trial"]}, skip_if_exists=True)
    context.log(f"queued the scout's best {len(configs)} configuration(s) from {scout}")


# ------------------------------------------------------------------------------ results

def _rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "params": t.params, "technique_params": t.user_attrs.get("technique_params"),
                     "steps": t.user_attrs.get("steps"), "epochs_run": t.user_attrs.get("epochs_run"),
                     "seconds": t.user_attrs.get("seconds"), "adapter": t.user_attrs.get("adapter"),
                     "model": t.user_attrs.get("model"), "worker": t.user_attrs.get("worker"),
                     "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                     **({"stopped": t.user_attrs["stopped"]} if "stopped" in t.user_attrs else {}),
                     **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
                     **({"from_scout_trial": t.user_attrs["from_scout_trial"]}
                        if "from_scout_trial" in t.user_attrs else {}),
                     **({"retry_of": t.user_attrs["retry_of"]} if "retry_of" in t.user_attrs else {})})
    return rows


def write_results(study, p: Prepared, partial: bool = False) -> dict[str, Any]:
    """trials.jsonl, best_params.json, best_configs.json, space.yaml (narrowed), importances and
    charts in the results directory; returns the summary."""
    from apr_core.atomic import write_bytes

    d = p.directory
    rows = _rows(study)
    write_bytes(d / "trials.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())
    ranked = ST.ranked(study)
    counts = ST.counts(study)
    summary: dict[str, Any] = {"task": p.objective.task, "technique": f"{p.objective.kind} {p.objective.method}",
                               "objective": p.objective.eval_task, "budget": p.settings.budget,
                               "trials": {k: v for k, v in counts.items() if v}, "directory": str(d),
                               "space": S.describe(p.space),
                               "trial_epochs": round(sum(r["epochs_run"] or 0 for r in rows
                                                         if r["state"] in ("complete", "pruned")), 4)}
    if p.steps_per_epoch:
        summary.update({"steps_per_epoch": p.steps_per_epoch, "epochs_per_trial": p.epochs,
                        "eval_steps": p.eval_steps})
    files = {"trials": str(d / "trials.jsonl")}
    if ranked:
        best = ranked[0]
        summary["best"] = {"trial": best.number, "value": best.value,
                           "params": best.user_attrs.get("technique_params", best.params)}
        _write_json(d / "best_params.json", {**summary["best"], "objective": p.objective.eval_task,
                                             "technique": summary["technique"],
                                             "fixed": _jsonable({k: v for k, v in p.fixed.items()})})
        candidates = ST.promising(study)
        top = candidates[:max(p.settings.top_k, 1)]
        _write_json(d / "best_configs.json", {"configs": [
            {"trial": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
             "technique_params": t.user_attrs.get("technique_params")} for t in top]})
        files.update({"best_params": str(d / "best_params.json"), "best_configs": str(d / "best_configs.json")})
        quarter = candidates[:max(p.settings.top_k, math.ceil(len(candidates) / 4))]
        narrowed = S.narrow(p.space, [t.user_attrs.get("technique_params") or {} for t in quarter], p.params)
        import yaml

        write_bytes(d / "space.yaml", yaml.safe_dump(S.as_yaml(narrowed), sort_keys=False).encode())
        files["space"] = str(d / "space.yaml")
        summary["narrowed_space"] = S.describe(narrowed)
    if not partial:
        imp = ST.importances(study)
        summary["importances"] = imp
        _write_json(d / "importances.json", imp)
        files["importances"] = str(d / "importances.json")
        from .charts import history, importance

        for key, fn in (("history_chart", lambda: history(rows, study.direction.name.lower(), d / "history.png")),
                        ("importance_chart", lambda: importance(imp, d / "importance.png"))):
            written = fn()
            if written:
                files[key] = written
    summary["files"] = files
    return summary


def _write_json(path: Path, data: Any) -> None:
    from apr_core.atomic import write_bytes

    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_short(x) for x in v)
    return str(v)


# ---------------------------------------------------------------------------------- plan

def plan(s: Settings, context) -> dict[str, Any]:
    """The space, the cost of one trial and of the budget, and (training, with --vram) the memory
    plan of the largest configuration that fits: the highest rank."""
    from apr_core import pipeline

    p = prepare(s, context, load_data=False)
    obj = p.objective
    report: dict[str, Any] = {"task": obj.task, "technique": f"{obj.kind} {obj.method}", "objective": obj.eval_task,
                              "budget": s.budget, "strategy": s.strategy, "scheduler": s.scheduler,
                              "space": S.describe(p.space)}
    if p.notes:
        report["notes"] = p.notes
    if s.strategy == "grid":
        sizes = [len(v) for v in S.grid(p.space, p.params, p.counts).values()]
        report["grid_points"] = math.prod(sizes)
    if obj.kind != "finetune":
        return report
    raw = _plan_raw(p)
    if "rank" in p.space and p.space["rank"].choices:
        raw["rank"] = max(p.space["rank"].choices)
    largest = pipeline.plan(obj.kind, obj.method, s.models, raw, context)
    if "rank" in raw:
        report["largest_rank"] = raw["rank"]
    report.update({k: largest[k] for k in ("device", "compute_dtype", "trainable_params", "peak_memory_bytes",
                                           "seconds_per_step", "fits_vram") if k in largest})
    report["memory"] = largest.get("memory", [])
    steps = _planned_steps(p, s)
    if steps and largest.get("seconds_per_step"):
        per_trial = steps * largest["seconds_per_step"]
        report.update({"steps_per_trial": steps, "seconds_per_trial": round(per_trial, 1),
                       "seconds_total_at_most": round(per_trial * s.budget, 1)})
    elif largest.get("seconds_per_step"):
        report["cost_note"] = "give --data to estimate steps per trial"
    return report


def _planned_steps(p: Prepared, s: Settings) -> int | None:
    """Optimizer steps of one full trial, from the record count (no tokenizing)."""
    from apr_core.runtime.examples import read_records

    data = p.fixed.get("data")
    if not data:
        return None
    n = len(read_records(data))
    split = float(p.fixed.get("eval_split", 0.05) or 0)
    batch = int(p.fixed.get("batch_size", 4)) * int(p.fixed.get("grad_accum", 1))
    epochs = int(p.fixed.get("epochs") or s.max_epochs or 3)
    steps = math.ceil(max(1, round(n * (1 - split))) / batch) * epochs
    if p.fixed.get("max_steps"):
        steps = min(steps, int(p.fixed["max_steps"]))
    return steps
