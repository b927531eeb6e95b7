"""What a trial runs and how it is scored: one `Objective` per ``--task``.

A trial is one `apr_core.pipeline.run` of a technique with the sampled parameters, then a
score: the fine-tune's own held-out loss (what the trainer measures at each eval step, which is
also what the pruner sees), or an evaluate technique (``--eval-task perplexity``, ``humaneval``,
an ``apr eval --task classify`` plugin ...) run through `pipeline.run` on the trial's model.
Adding a task is adding an `Objective` to `OBJECTIVES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from apr_core.errors import AprError

#: evaluations where lower is better; any other --eval-task is maximised unless --direction says
LOWER_IS_BETTER = ("perplexity", "loss")


@dataclass
class Trial:
    """What one trial produced: its score and where its result lives."""

    value: float
    steps: int | None = None
    model: str | None = None
    adapter: str | None = None
    extra: dict[str, Any] | None = None


class Objective:
    """A task: the technique kind it tunes, its default technique, and how a trial is scored."""

    task = ""
    kind = ""
    default_method = ""
    trains = False  # reports intermediate values while it runs (pruners apply)
    default_eval = "perplexity"

    def __init__(self, method: str | None, eval_task: str | None, eval_params: dict[str, Any]) -> None:
        self.method = method or self.default_method
        self.eval_task = eval_task or self.default_eval
        self.eval_params = eval_params

    def direction(self, given: str | None) -> str:
        if given:
            return given
        return "minimize" if self.eval_task in LOWER_IS_BETTER else "maximize"

    def run(self, sources: list[str], params: dict[str, Any], trial_dir: Path, context) -> Trial:
        raise NotImplementedError

    def score(self, model_path: str, context) -> float:
        """The evaluate technique's value for the model the trial wrote."""
        from apr_core import pipeline

        result = pipeline.run("evaluate", self.eval_task, [model_path], self.eval_params, context=context)
        return float(result["value"])

    def best_model(self, sources: list[str], trial: dict[str, Any], output: str, context) -> dict[str, Any]:
        """Write the best trial's model to ``output``: copy what the trial wrote."""
        from apr_core import pipeline

        model = trial.get("model")
        if not model or not Path(model).exists():
            raise AprError(f"the best trial ({trial['number']}) kept no model to write to {output}")
        return {"output": pipeline.save(pipeline.load(model), output)}


class Finetune(Objective):
    """``classify`` / ``finetune``: LoRA / QLoRA / full fine-tuning scored on held-out loss (the
    run's eval loss; each eval step is an intermediate value) or on ``--eval-task``."""

    task = "finetune"
    kind = "finetune"
    default_method = "lora"
    trains = True
    default_eval = "loss"

    def run(self, sources, params, trial_dir, context):
        from apr_core import pipeline

        adapter_dir = trial_dir / "adapter"
        context.workdir = trial_dir / "run"
        out = str(adapter_dir) + "/" if self.method != "full" else str(trial_dir / "model.apr")
        summary = pipeline.run("finetune", self.method, sources, params, output=out, context=context)
        report = summary["report"]
        if self.eval_task == "loss":
            if report.get("eval_loss") is None:
                raise AprError("held-out loss needs held-out data: give --set eval_split=0.1 or --set eval_data=FILE")
            return Trial(float(report["eval_loss"]), steps=report.get("steps"),
                         adapter=str(adapter_dir) if self.method != "full" else None,
                         model=None if self.method != "full" else out)
        model = out if self.method == "full" else self._merged(sources, str(adapter_dir), trial_dir, context)
        return Trial(self.score(model, context), steps=report.get("steps"), model=model,
                     adapter=str(adapter_dir) if self.method != "full" else None,
                     extra={"eval_loss": report.get("eval_loss")})

    def _merged(self, sources, adapter, trial_dir, context) -> str:
        from apr_core import pipeline

        path = str(trial_dir / "model.apr")
        pipeline.run("finetune", self.method, sources, {"adapter": adapter, "merge": True}, output=path,
                     context=context.quieter())
        return path

    def best_model(self, sources, trial, output, context):
        from apr_core import pipeline

        if trial.get("adapter") and Path(trial["adapter"]).is_dir():
            return pipeline.run("finetune", self.method, sources, {"adapter": trial["adapter"], "merge": True},
                                output=output, context=context)
        return super().best_model(sources, trial, output, context)


class Classify(Finetune):
    """The playbook's ``--task classify``: fine-tune on the instruction data, score held-out loss
    (or ``--eval-task classify`` once an evaluate plugin provides it)."""

    task = "classify"


class Transform(Objective):
    """``prune`` / ``merge``: write the trial's model, score it with ``--eval-task`` (perplexity)."""

    def run(self, sources, params, trial_dir, context):
        from apr_core import pipeline

        path = str(trial_dir / "model.apr")
        pipeline.run(self.kind, self.method, sources, params, output=path, context=context)
        return Trial(self.score(path, context), model=path)


class Prune(Transform):
    task = "prune"
    kind = "prune"
    default_method = "wanda"


class Merge(Transform):
    task = "merge"
    kind = "merge"
    default_method = "ties"


OBJECTIVES: dict[str, Callable[..., Objective]] = {o.task: o for o in (Classify, Finetune, Prune, Merge)}


def objective(task: str, method: str | None, eval_task: str | None, eval_params: dict[str, Any]) -> Objective:
    if task not in OBJECTIVES:
        raise AprError(f"--task {task!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[task](method, eval_task, eval_params)
