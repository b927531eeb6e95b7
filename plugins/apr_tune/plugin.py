"""``apr tune``: a hyperparameter search over a technique, added through ``apr_register_commands``.

A study is not a transform of one model but many runs of one, so it is a command of its own
rather than a technique of a kind; each trial calls `apr_core.pipeline.run` exactly as the
technique's command would. Only click is imported here (``apr --help`` stays fast); optuna and
torch load when the command runs.
"""

from __future__ import annotations

import json

import click

from apr_core.errors import AprError
from apr_core.plugins import hookimpl

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AprError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


@click.command("tune", context_settings=CONTEXT, no_args_is_help=True)
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--task", default="classify", show_default=True,
              help="What a trial runs: classify or finetune (fine-tune, score held-out loss), prune, merge.")
@click.option("--method", default=None, metavar="NAME",
              help="The technique of the task's kind: lora (default), qlora or full; a prune method (wanda); "
                   "a merge strategy (ties).")
@click.option("--data", default=None, metavar="FILE.jsonl", help="Training data for fine-tuning trials.")
@click.option("--budget", type=int, default=20, show_default=True, help="Number of trials (finished or pruned).")
@click.option("--strategy", default="tpe", show_default=True,
              help="Sampler: tpe (multivariate; constant liar on shared storage), random or grid.")
@click.option("--scheduler", default="asha", show_default=True,
              help="Early stopping on the held-out loss: asha (successive halving), hyperband, median or none.")
@click.option("--time-limit", default=None, metavar="DURATION",
              help="Start no trial after this (8h, 30m, 1h30m, 90s); a running trial stops at its next "
                   "evaluation and is queued again for the next run.")
@click.option("--max-epochs", type=int, default=None, metavar="N", help="Epochs of each training trial.")
@click.option("--scout", is_flag=True, help="Short trials (one epoch; --data-fraction) writing scout-results/: "
                                             "study, trials, best configurations, importances, narrowed space.")
@click.option("--data-fraction", type=float, default=None, metavar="F", help="Scout on this fraction of --data.")
@click.option("--from-scout", default=None, metavar="DIR",
              help="Queue the scout's best configurations, then search its narrowed space.")
@click.option("--top-k", type=int, default=3, show_default=True, help="Configurations a scout hands on.")
@click.option("--space", "space_file", default=None, metavar="FILE.yaml",
              help="Search space overriding the technique's declared one (docs/tune.md).")
@click.option("--set", "fixed", multiple=True, metavar="KEY=VALUE",
              help="Fix a technique parameter for every trial (batch_size=8); repeatable.")
@click.option("--eval-task", default=None, metavar="NAME",
              help="Score each trial with this evaluate technique (perplexity, humaneval, ...) instead of the "
                   "fine-tune's held-out loss.")
@click.option("--eval-set", "eval_fixed", multiple=True, metavar="KEY=VALUE",
              help="A parameter of --eval-task; repeatable.")
@click.option("--direction", default=None, help="minimize or maximize (default: from the objective).")
@click.option("--storage", default=None, metavar="URL",
              help="Shared study: postgresql://user:pass@host/db (workers anywhere, heartbeats) or FILE.journal "
                   "(default: the journal in the results directory).")
@click.option("--study-name", default=None, help="Study name in --storage (default: from the task and method).")
@click.option("--output-dir", "output_dir", default=None, metavar="DIR",
              help="Results directory (default scout-results/ with --scout, else tune-results/).")
@click.option("-o", "--output", default=None, help="Write the best trial's model here (e.g. best.apr).")
@click.option("--vram", type=float, default=None, metavar="GB",
              help="GPU memory budget: ranks that do not fit are left out; with --plan, the plan of the "
                   "largest configuration that fits.")
@click.option("--plan", is_flag=True, help="Print the space, the cost per trial and in total, and exit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler and every trial.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: apr --device, APR_DEVICE).")
@click.option("--dtype", "compute_dtype", default=None, help="Compute precision: auto, float32, bfloat16, float16.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def tune(models, task, method, data, budget, strategy, scheduler, time_limit, max_epochs, scout, data_fraction,
         from_scout, top_k, space_file, fixed, eval_task, eval_fixed, direction, storage, study_name, output_dir,
         output, vram, plan, as_json, seed, device, compute_dtype, quiet):
    """Search MODEL's hyperparameters for a task: each trial runs the technique (through the same
    pipeline as its command) and is scored; see docs/tune.md."""
    import warnings

    from apr_core.cli import _context, _emit_json, _print_plan

    from . import runner

    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    settings = runner.Settings(
        models=list(models), task=task, method=method, data=data, budget=budget, strategy=strategy,
        scheduler=scheduler, time_limit=time_limit, max_epochs=max_epochs, scout=scout, from_scout=from_scout,
        space_file=space_file, fixed=_pairs(fixed, "--set"), eval_task=eval_task,
        eval_params=_pairs(eval_fixed, "--eval-set"), direction=direction, storage=storage, study_name=study_name,
        output_dir=output_dir, output=output, data_fraction=data_fraction, top_k=top_k, vram=vram)
    if max_epochs is not None and max_epochs < 1:
        raise AprError(f"--max-epochs must be at least 1, got {max_epochs}")
    ctx = _context(quiet, seed, device, compute_dtype)
    if plan:
        report = runner.plan(settings, ctx)
        return _emit_json(report) if as_json else _print_plan(report)
    summary = runner.run(settings, ctx)
    if as_json:
        return _emit_json(summary)
    best = summary.get("best")
    click.echo(f"tune {summary['technique']}: {sum(summary['trials'].values())} trials "
               f"({', '.join(f'{v} {k}' for k, v in summary['trials'].items())}), {summary['trial_epochs']} "
               f"trial-epochs, stopped by {summary['stopped']}, in {summary['seconds']:.0f}s")
    if best:
        click.echo(f"  best: trial {best['trial']}, {summary['objective']} {best['value']:.6g}, "
                   f"{json.dumps(best['params'])}")
    for key, path in summary["files"].items():
        click.echo(f"  {key}: {path}")
    if summary.get("best_model"):
        click.echo(f"  best model: {summary['best_model']}")


@hookimpl
def apr_register_commands(cli):
    cli.add_command(tune)
