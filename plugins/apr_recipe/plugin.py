"""``apr recipe run|plan RECIPE.yaml``: a whole playbook as one command, cached step by step.

Added through ``apr_register_commands``: a recipe is not a transform of one model but a graph of
them. Only click is imported here; steps import what they need when they run.
"""

from __future__ import annotations

import json

import click

from apr_core.plugins import hookimpl

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _context(quiet: bool, seed: int, device: str | None, dtype: str | None):
    from apr_core.runtime.device import canonical_dtype, resolve_device
    from apr_core.technique import RunContext

    return RunContext(seed=seed, device=resolve_device(device), dtype=canonical_dtype(dtype or "auto"),
                      quiet=quiet)


@click.group("recipe", context_settings=CONTEXT)
def recipe() -> None:
    """Run a recipe of apr steps (import, data, finetune, merge, prune, quantize, distill ...),
    each output content-addressed so finished steps are skipped."""


@recipe.command("run", context_settings=CONTEXT)
@click.argument("path")
@click.option("--workdir", default=None, help="Where outputs go (default: the recipe's workdir, runs/<name>).")
@click.option("--until", default=None, metavar="STEP", help="Stop after this step.")
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE",
              help="Override a step's parameter, inputs or source (e.g. base.import=hf://org/name); repeatable.")
@click.option("--no-report", is_flag=True, help="Skip the leaderboard evaluations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every step.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: APR_DEVICE or auto).")
@click.option("--dtype", default=None, help="Compute precision: auto, float32, bfloat16, float16.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def run_cmd(path, workdir, until, overrides, no_report, seed, device, dtype, as_json, quiet) -> None:
    """Run RECIPE (YAML or JSON): steps in dependency order, cached ones skipped, then the report."""
    from pathlib import Path

    from . import report, runner, spec

    recipe_ = spec.load(path, overrides)
    if workdir:
        recipe_.workdir = Path(workdir)
    if until and until not in recipe_.steps:
        raise click.UsageError(f"--until {until!r} is not a step of {path}")
    ctx = _context(quiet, seed, device, dtype)
    done = runner.run(recipe_, ctx, until)
    board = report.leaderboard(recipe_, done, ctx) if recipe_.metrics and not no_report and not until else None
    summary = {"recipe": recipe_.name, "workdir": str(recipe_.workdir),
               "steps": [{"step": d.step, "output": d.output, "cached": d.cached, "seconds": d.seconds}
                         for d in done]}
    if board:
        summary.update({"leaderboard": board["rows"], "leaderboard_json": board["json"], "chart": board["chart"]})
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    ran = [d for d in done if not d.cached]
    click.echo(f"recipe {recipe_.name}: {len(done)} steps, {len(done) - len(ran)} cached, "
               f"{sum(d.seconds for d in ran):.0f}s run; outputs in {recipe_.workdir}")
    if board:
        click.echo("\n" + board["table"])
        click.echo(f"\nchart: {board['chart']}")


@recipe.command("plan", context_settings=CONTEXT)
@click.argument("path")
@click.option("--workdir", default=None, help="Where outputs would go (default: the recipe's workdir).")
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE",
              help="Override a step's parameter, inputs or source; repeatable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every step.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: APR_DEVICE or auto).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan on stdout.")
def plan_cmd(path, workdir, overrides, seed, device, as_json) -> None:
    """Print every step of RECIPE with sizes, memory and time estimates; runs nothing."""
    from pathlib import Path

    from . import plan, spec

    recipe_ = spec.load(path, overrides)
    if workdir:
        recipe_.workdir = Path(workdir)
    report = plan.plan(recipe_, _context(True, seed, device, None))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"recipe {report['recipe']} ({len(report['steps'])} steps, outputs in {report['workdir']})")
    for row in report["steps"]:
        size = f"{row['output_bytes'] / 1e6:.0f} MB" if "output_bytes" in row else "-"
        peak = f"peak {row['peak_memory_bytes'] / 1e9:.2f} GB" if "peak_memory_bytes" in row else ""
        secs = f"~{row['seconds']:.0f}s" if "seconds" in row else ""
        state = "done" if row["done"] else "to run"
        click.echo(f"  {row['step']:<18} {row['action']:<22} from {row['inputs']:<28} {state:<7} {size:>8} "
                   f"{peak} {secs} {row.get('estimate', '')}".rstrip())
    for w in report["warnings"]:
        click.echo(f"warning: {w}")


@hookimpl
def apr_register_commands(cli):
    cli.add_command(recipe)
