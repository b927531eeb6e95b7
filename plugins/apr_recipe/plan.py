"""``apr recipe plan``: every step with its output size, peak memory and time estimates, whether it
is already done, and the order mistakes that matter, without running anything.

A step whose inputs do not exist yet is planned on a stand-in: the nearest model upstream that
does exist, or the import step's source (a fine-tuned or merged model has its base's shapes).
Estimates come from each technique's own ``plan`` (the fine-tuning memory model, the merge and
quantize streaming estimates ...).
"""

from __future__ import annotations

from typing import Any

from apr_core.errors import AprError

from .runner import output_path, record_path, resolved, step_key
from .spec import REF, Recipe, Step

BEFORE_QUANTIZE = ("prune", "merge", "finetune", "distill")


def _upstream(recipe: Recipe, name: str) -> set[str]:
    """Every step ``name`` depends on, transitively."""
    seen: set[str] = set()
    todo = list(recipe.steps[name].references())
    while todo:
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            todo.extend(recipe.steps[ref].references())
    return seen


def _root(recipe: Recipe, ref: str) -> str:
    """The import source (or file) a model input ultimately comes from, following first inputs."""
    while ref in recipe.steps:
        step = recipe.steps[ref]
        if step.action == "import":
            return str(step.technique)
        if not step.inputs:
            return ref
        ref = step.inputs[0]
    return ref


def warnings(recipe: Recipe) -> list[str]:
    out = []
    for name in recipe.order:
        step = recipe.steps[name]
        if step.action in BEFORE_QUANTIZE:
            quantized = sorted(u for u in _upstream(recipe, name) if recipe.steps[u].action == "quantize")
            if quantized:
                out.append(f"step {name!r} ({step.action}) reads the output of quantize step {quantized[0]!r}: "
                           f"{step.action} before quantizing (quantized weights lose precision, and pruning "
                           f"refuses them)")
        if step.action == "merge":
            roots = {_root(recipe, i) for i in step.inputs}
            if len(roots) > 1:
                out.append(f"step {name!r} merges models of different bases ({', '.join(sorted(roots))}); "
                           f"merging needs models fine-tuned from one base")
    return out


def plan(recipe: Recipe, context) -> dict[str, Any]:
    from apr_core import pipeline

    with pipeline.reuse_loads():
        return _plan(recipe, context, pipeline)


def _plan(recipe: Recipe, context, pipeline) -> dict[str, Any]:
    keys: dict[str, str] = {}
    outputs: dict[str, str] = {}
    stand_in: dict[str, str | None] = {}
    rows = []
    for name in recipe.order:
        step = recipe.steps[name]
        key = keys[name] = step_key(step, keys, context.seed)
        out = output_path(recipe, step, key)
        done = record_path(out).is_file() and out.exists()
        outputs[name] = str(out)
        row: dict[str, Any] = {"step": name, "action": f"{step.action} {step.technique or ''}".strip(),
                               "inputs": ",".join(step.inputs) or "-", "done": done}
        if step.action == "import":
            stand_in[name] = str(out) if done else str(step.technique)
        elif step.action == "data":
            stand_in[name] = str(out) if done else None
        elif step.action == "tune":
            stand_in[name] = str(out) if done else next((stand_in.get(i) for i in step.inputs if stand_in.get(i)), None)
            row["estimate"] = f"{step.params.get('budget', 20)} trials (apr tune --plan gives their cost)"
        else:
            stand_in[name] = str(out) if done else next((stand_in.get(i) for i in step.inputs if stand_in.get(i)), None)
            row.update(_estimate(step, outputs, stand_in, context, pipeline))
        rows.append(row)
    return {"recipe": recipe.name, "workdir": str(recipe.workdir), "steps": rows, "warnings": warnings(recipe)}


def _estimate(step: Step, outputs, stand_in, context, pipeline) -> dict[str, Any]:
    """Output size, peak memory and time of one technique step, from the technique's plan."""
    existing = {n: (o if _exists(o) else stand_in.get(n)) for n, o in outputs.items()}
    inputs, params = resolved(step, {n: o for n, o in existing.items() if o})
    params = {k: v for k, v in params.items() if not (isinstance(v, str) and REF.match(v))}
    try:
        report = pipeline.plan(step.action, step.technique, [i for i in inputs if i], params, context.quieter())
    except AprError as exc:
        return {"estimate": f"not planned: {str(exc)[:120]}"}
    est: dict[str, Any] = {}
    for key in ("output_bytes", "peak_memory_bytes"):
        if isinstance(report.get(key), (int, float)):
            est[key] = int(report[key])
    seconds = report.get("seconds_per_step")
    steps = params.get("max_steps")
    if seconds and steps:
        est["seconds"] = round(float(seconds) * int(steps), 1)
    return est


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()
