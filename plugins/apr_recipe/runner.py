"""Running a recipe: content-addressed outputs, so finished steps are skipped and an interrupted
recipe resumes at the step that did not finish.

Every step's output is named by a key: the sha256 of its action, technique and parameters (with
each ``@step`` reference replaced by that step's key), its inputs' keys (a file's sha256 for a
path), the seed and apr's version. The output is ``<workdir>/<step>-<key12>.<ext>`` and a
record ``.<step>-<key12>.json`` is written (atomically) after it; a step whose record and output
exist is done. A training step that was killed left its checkpoints in ``<output>.run/``: the
rerun resumes from them (`apr_core.runtime.trainer`), so the final bytes equal an uninterrupted
run's. A step that fails stops the recipe with one line naming the step.

Technique steps go through `apr_core.pipeline.run`, exactly what the command line runs; ``import``
through `pipeline.import_model`; ``data`` through the ``apr data`` command of that name.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apr_core import __version__
from apr_core.errors import AprError

from .spec import REF, Recipe, Step

EXTENSIONS = {"data": ".jsonl", "import": ".apr"}


@dataclass
class Done:
    step: str
    key: str
    output: str
    seconds: float
    cached: bool
    summary: dict[str, Any]


def _file_sha(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f.relative_to(p).as_posix().encode())
            h.update(_file_sha(str(f)).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _input_key(ref: str, keys: dict[str, str]) -> str:
    if ref in keys:
        return keys[ref]
    if not Path(ref).exists():
        raise AprError(f"recipe input {ref!r} is neither a step nor an existing file")
    return "file:" + _file_sha(ref)


def step_key(step: Step, keys: dict[str, str], seed: int) -> str:
    """The content address of ``step``'s output, given the keys of the steps it reads."""
    def resolve(value):
        if isinstance(value, list):
            return [resolve(v) for v in value]
        m = REF.match(value) if isinstance(value, str) else None
        return {"step": keys[m.group(1)]} if m else value

    blob = {"action": step.action, "technique": step.technique, "seed": seed, "apr": __version__,
            "params": {k: resolve(v) for k, v in sorted(step.params.items())},
            "inputs": [_input_key(i, keys) for i in step.inputs]}
    if step.action == "import" and Path(str(step.technique)).exists():
        blob["source_sha256"] = _file_sha(str(step.technique))
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def extension(step: Step) -> str:
    fmt = step.params.get("format")
    if step.action in EXTENSIONS:
        return EXTENSIONS[step.action]
    return {"gguf": ".gguf", "safetensors": ".safetensors"}.get(str(fmt), ".apr")


def output_path(recipe: Recipe, step: Step, key: str) -> Path:
    return recipe.workdir / f"{step.name}-{key[:12]}{extension(step)}"


def record_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.json")


def run(recipe: Recipe, context, until: str | None = None) -> list[Done]:
    """Run (or skip, when cached) every step in dependency order; returns what each step did."""
    recipe.workdir.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}
    outputs: dict[str, str] = {}
    done: list[Done] = []
    for name in recipe.order:
        step = recipe.steps[name]
        key = keys[name] = step_key(step, keys, context.seed)
        out = output_path(recipe, step, key)
        outputs[name] = str(out)
        record = record_path(out)
        if record.is_file() and out.exists():
            saved = json.loads(record.read_text())
            done.append(Done(name, key, str(out), saved.get("seconds", 0.0), True, saved.get("summary", {})))
            context.log(f"recipe {recipe.name}: {name}: cached ({out.name})")
        else:
            context.log(f"recipe {recipe.name}: {name}: {step.action} {step.technique or ''}".rstrip())
            start = time.perf_counter()
            try:
                summary = execute(step, outputs, str(out), context)
            except AprError as exc:
                raise AprError(f"recipe {recipe.name}: step {name!r} failed: {exc}") from None
            seconds = round(time.perf_counter() - start, 3)
            from apr_core.atomic import write_bytes

            write_bytes(record, json.dumps({"step": name, "key": key, "output": str(out), "seconds": seconds,
                                            "summary": _brief(summary)}, indent=2, default=str).encode())
            done.append(Done(name, key, str(out), seconds, False, _brief(summary)))
        if name == until:
            break
    return done


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """What a step record keeps of a summary (its report, without long lists)."""
    report = summary.get("report", summary)
    return {k: v for k, v in report.items() if not isinstance(v, (list, dict)) or len(json.dumps(v)) < 400}


def resolved(step: Step, outputs: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    """The step's inputs and parameters with every step reference replaced by its output path."""
    def sub(value):
        if isinstance(value, list):
            return [sub(v) for v in value]
        m = REF.match(value) if isinstance(value, str) else None
        return outputs.get(m.group(1), value) if m else value

    inputs = [outputs.get(i, i) for i in step.inputs]
    params = {k: sub(v) for k, v in step.params.items() if k != "format"}
    return inputs, params


def execute(step: Step, outputs: dict[str, str], out: str, context) -> dict[str, Any]:
    from apr_core import pipeline

    inputs, params = resolved(step, outputs)
    if step.action == "import":
        return pipeline.import_model(str(step.technique), out, str(params.get("dtype", "auto")),
                                     context=context.quieter() if context.quiet else context)
    if step.action == "data":
        return _data(str(step.technique), params, out)
    if step.action == "tune":
        return _tune(str(step.technique or "classify"), inputs, params, out, _fresh(context))
    kind = pipeline.kind(step.action)
    technique = pipeline.technique_of(kind.name, pipeline.chosen(kind, step.technique))
    if any(p.name == "resume" for p in technique.params + kind.options):
        from apr_core.runtime import checkpoint

        params["resume"] = checkpoint.latest(Path(out + ".run")) is not None
    run_context = _fresh(context)
    return pipeline.run(kind.name, technique.name, inputs, params, out, step.params.get("format"), run_context)


def _fresh(context):
    """A new RunContext with the recipe's settings (reports and records are per step)."""
    from apr_core.technique import RunContext

    return RunContext(seed=context.seed, device=context.device, dtype=context.dtype, quiet=context.quiet,
                      verbose=context.verbose)


def _tune(task: str, inputs: list[str], params: dict[str, Any], out: str, context) -> dict[str, Any]:
    """An ``apr tune TASK`` study whose best model is the step's output; the study (an optuna
    journal) lives in ``<output>.tune/``, so a killed step resumes it without losing a trial."""
    from apr_tune import runner as tune

    options = dict(params)
    fixed, eval_params = options.pop("set", None) or {}, options.pop("eval_set", None) or {}
    settings = tune.Settings(models=list(inputs), task=task, output=out, output_dir=out + ".tune",
                             fixed={str(k).replace("-", "_"): v for k, v in fixed.items()},
                             eval_params={str(k).replace("-", "_"): v for k, v in eval_params.items()}, **options)
    return tune.run(settings, context)


def _data(builder: str, params: dict[str, Any], out: str) -> dict[str, Any]:
    """An ``apr data BUILDER`` run, in-process, with the step's parameters as its options."""
    import contextlib
    import io

    from apr_core.cli import cli

    args = ["data", builder, "-o", out, "--json", "-q"]
    for k, v in params.items():
        flag = "--" + k.replace("_", "-")
        for item in v if isinstance(v, list) else [v]:
            if item is True:
                args.append(flag)
            elif item not in (False, None):
                args += [flag, str(item)]
    import click

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        try:
            cli.main(args=args, prog_name="apr", standalone_mode=False)
        except click.UsageError as exc:
            raise AprError(f"apr data {builder}: {exc.format_message()}") from None
    text = stdout.getvalue().strip()
    return json.loads(text) if text.startswith("{") else {}
