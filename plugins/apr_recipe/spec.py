"""Recipe files: what a recipe says, checked whole before anything runs.

A recipe is YAML (or JSON)::

    name: merge-tournament
    workdir: runs/merge-tournament        # optional; default runs/<name>
    steps:
      base:           {import: smollm2-135m}
      python-data:    {data: code-instruct, with: {language: python, max_examples: 400}}
      python-expert:  {finetune: lora, input: base, with: {data: "@python-data", max_steps: 30}}
      round1:         {merge: dare, inputs: [python-expert, rust-expert], with: {base_model: "@base"}}
    report:
      models: [base, python-expert, round1]
      metrics:
        - {name: python ppl, eval: perplexity, with: {dataset: stdlib-code, max_tokens: 2048}}
        - {name: humaneval, eval: humaneval, models: [base, round1], with: {limit: 4}}  # a subset

Each step names one action: ``import: SOURCE``, ``data: BUILDER`` (``apr data`` builders) or
``<kind>: <technique>`` for any installed technique kind (finetune, merge, prune, quantize,
distill ...). ``input``/``inputs`` are the models it reads (step names or files), ``with`` its
parameters exactly as the command line spells them (underscores or dashes), where ``"@step"``
stands for that step's output. Steps run in dependency order, not file order.

`load` refuses, with one line naming the step: an unknown action or technique, a parameter the
technique does not declare or a value it rejects (validated with the technique's own `Param`s,
before anything runs), a reference to a missing step, and a cycle.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apr_core.errors import AprError

REF = re.compile(r"^@([A-Za-z0-9_.-]+)$")
BUILTIN_ACTIONS = ("import", "data", "tune")
#: what a ``tune`` step may set: apr tune's options (``set``/``eval_set`` are its --set/--eval-set)
TUNE_OPTIONS = ("method", "data", "budget", "strategy", "scheduler", "time_limit", "max_epochs", "scout",
                "from_scout", "space_file", "set", "eval_task", "eval_set", "direction", "storage", "study_name",
                "data_fraction", "top_k", "vram")


@dataclass
class Step:
    name: str
    action: str  # "import", "data", or a technique kind
    technique: str | None  # the technique, the builder, or the import source
    inputs: list[str] = field(default_factory=list)  # step names or paths
    params: dict[str, Any] = field(default_factory=dict)

    def references(self) -> list[str]:
        """Step names this step reads (inputs and ``@step`` parameter values)."""
        refs = [i for i in self.inputs if not _is_path(i)]
        for value in self.params.values():
            for item in value if isinstance(value, list) else [value]:
                m = REF.match(item) if isinstance(item, str) else None
                if m:
                    refs.append(m.group(1))
        return refs


@dataclass
class Metric:
    name: str
    technique: str
    params: dict[str, Any]
    models: list[str] | None = None  # only these report models (None: all of them)


@dataclass
class Recipe:
    name: str
    path: Path
    workdir: Path
    steps: dict[str, Step]
    order: list[str]
    report_models: list[str]
    metrics: list[Metric]


def _is_path(value: str) -> bool:
    return "/" in value or value.endswith((".apr", ".gguf", ".safetensors", ".jsonl")) or Path(value).exists()


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AprError(f"no such recipe file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AprError(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        raise AprError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                       f"{str(exc).splitlines()[0][:160]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), dict) or not data["steps"]:
        raise AprError(f"{path}: a recipe is a mapping with a non-empty 'steps' mapping")
    return data


def _step(name: str, body: Any, where: str) -> Step:
    if not isinstance(body, dict):
        raise AprError(f"{where}: step {name!r} must be a mapping")
    from apr_core.plugins import manager

    registry = manager()[1]
    actions = [k for k in body if k in BUILTIN_ACTIONS or k in registry.kinds]
    unknown = [k for k in body if k not in actions and k not in ("input", "inputs", "with")]
    if unknown:
        raise AprError(f"{where}: step {name!r} has unknown key {unknown[0]!r} (actions: "
                       f"{', '.join([*BUILTIN_ACTIONS, *sorted(registry.commands())])}; and input, inputs, with)")
    if len(actions) != 1:
        raise AprError(f"{where}: step {name!r} needs exactly one action (import, data, or a technique kind "
                       f"such as finetune or merge), found {len(actions)}")
    action = actions[0]
    value = body[action]
    technique = None if value is None else str(value)
    inputs = body.get("inputs", [body["input"]] if "input" in body else [])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise AprError(f"{where}: step {name!r}: inputs must be step names or paths")
    params = body.get("with") or {}
    if not isinstance(params, dict):
        raise AprError(f"{where}: step {name!r}: 'with' must be a mapping of parameters")
    params = {str(k).replace("-", "_"): v for k, v in params.items()}
    return Step(name, action, technique, list(inputs), params)


def _order(steps: dict[str, Step], where: str) -> list[str]:
    """Topological order (file order among independent steps); a cycle is refused."""
    state: dict[str, int] = {}
    order: list[str] = []

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = chain[chain.index(name):] + [name]
            raise AprError(f"{where}: steps form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for ref in steps[name].references():
            if ref not in steps:
                raise AprError(f"{where}: step {name!r} refers to {ref!r}, which is not a step of this recipe")
            visit(ref, chain + [name])
        state[name] = 2
        order.append(name)

    for name in steps:
        visit(name, [])
    return order


def check_params(step: Step, where: str) -> None:
    """Validate a technique step's parameters with the technique's own declarations, references
    standing in as paths (so a typo in a parameter stops the recipe before anything runs)."""
    from apr_core import pipeline

    kind = pipeline.kind(step.action)
    technique = pipeline.technique_of(kind.name, pipeline.chosen(kind, step.technique))
    probe = {k: (f"/nonexistent/{v[1:]}" if isinstance(v, str) and REF.match(v) else v)
             for k, v in step.params.items()}
    try:
        pipeline.check_input_count(kind, technique, step.inputs)
        declared = {p.name for p in technique.params + kind.options}
        extra = [k for k in probe if k not in declared and k != "format"]
        if extra:
            raise AprError(f"--{extra[0].replace('_', '-')} does not apply to {kind.name} {technique.name}")
        missing = [p for p in technique.params + kind.options if p.required and p.name not in probe]
        if missing:
            raise AprError(f"{kind.name} {technique.name} needs {missing[0].cli_flag}")
        for p in technique.params + kind.options:
            if p.name in probe and p.type != "path":
                p.parse(probe[p.name])
    except AprError as exc:
        raise AprError(f"{where}: step {step.name!r}: {exc}") from None


def check_tune(step: Step, where: str) -> None:
    """A ``tune: TASK`` step: apr tune's options only, and at least one input model."""
    unknown = sorted(k for k in step.params if k not in TUNE_OPTIONS)
    if unknown:
        raise AprError(f"{where}: step {step.name!r}: --{unknown[0].replace('_', '-')} is not an apr tune option "
                       f"({', '.join(TUNE_OPTIONS)})")
    if not step.inputs:
        raise AprError(f"{where}: step {step.name!r}: tune needs an input model")
    for key in ("set", "eval_set"):
        if not isinstance(step.params.get(key, {}), dict):
            raise AprError(f"{where}: step {step.name!r}: {key} must be a mapping of parameters")


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str) -> None:
    """``--set STEP.KEY=VALUE``: KEY is the step's action (its technique or source), ``input`` /
    ``inputs``, or a parameter; VALUE is read as YAML (numbers, booleans, lists)."""
    import yaml

    for item in overrides:
        target, eq, raw = item.partition("=")
        step, dot, key = target.partition(".")
        if not eq or not dot or not key:
            raise AprError(f"--set {item!r}: use STEP.KEY=VALUE")
        body = data["steps"].get(step)
        if not isinstance(body, dict):
            raise AprError(f"--set {item!r}: {where} has no step {step!r}")
        value = yaml.safe_load(raw) if raw else ""
        if key in body or key in ("input", "inputs") or key in BUILTIN_ACTIONS:
            body[key] = value
        else:
            body.setdefault("with", {})[key] = value


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    data = _read(path)
    where = str(path)
    apply_overrides(data, list(overrides), where)
    steps = {}
    for name, body in data["steps"].items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise AprError(f"{where}: step name {name!r} may use letters, digits, '.', '_' and '-' only")
        steps[str(name)] = _step(str(name), body, where)
    order = _order(steps, where)
    for step in steps.values():
        if step.action not in BUILTIN_ACTIONS:
            check_params(step, where)
        elif step.action == "tune":
            check_tune(step, where)
        elif step.action == "import" and not step.technique:
            raise AprError(f"{where}: step {step.name!r}: import needs a source (a file, hf://org/name or a short name)")
    report = data.get("report") or {}
    models = [str(m) for m in report.get("models", [])]
    for m in models:
        if m not in steps:
            raise AprError(f"{where}: report lists {m!r}, which is not a step of this recipe")
    metrics = []
    for i, item in enumerate(report.get("metrics", [])):
        if not isinstance(item, dict) or "eval" not in item:
            raise AprError(f"{where}: report metric {i + 1} needs 'eval' (an evaluate technique) and a 'name'")
        only = item.get("models")
        if only is not None:
            only = [str(m) for m in (only if isinstance(only, list) else [only])]
            for m in only:
                if m not in models:
                    raise AprError(f"{where}: report metric {item.get('name') or item['eval']!r} lists {m!r}, "
                                   f"which is not one of the report's models")
        metrics.append(Metric(str(item.get("name") or item["eval"]), str(item["eval"]),
                              {str(k).replace("-", "_"): v for k, v in (item.get("with") or {}).items()}, only))
    _check_metrics(metrics, where)
    name = str(data.get("name") or path.stem)
    workdir = Path(data.get("workdir") or Path("runs") / name)
    return Recipe(name, path, workdir, steps, order, models, metrics)


def _check_metrics(metrics: list[Metric], where: str) -> None:
    from apr_core import pipeline

    for m in metrics:
        try:
            technique = pipeline.technique_of("evaluate", m.technique)
            technique.resolve_params(dict(m.params), pipeline.kind("evaluate").options)
        except AprError as exc:
            raise AprError(f"{where}: report metric {m.name!r}: {exc}") from None
