"""The ``apr`` command line: core commands plus one command per technique kind.

Technique commands (``apr merge``, ``apr prune`` ...) are generated from the
registry: each registered technique's declared `Param`s become options, so
installing a plugin adds its strategy and flags with no edit here. Nothing in
this module imports torch; ``apr --help`` and ``apr plugins`` stay fast.

Errors a user can fix print one line and exit 2; ``--threshold`` failures exit 1.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from . import __version__
from .errors import AprError, PluginError
from .kinds import CORE_KINDS
from .params import Param
from .technique import Kind, RunContext

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _context(quiet: bool, seed: int = 0, device: str | None = None) -> RunContext:
    if device is None:
        device = "cpu"
        if "torch" in sys.modules:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
    return RunContext(seed=seed, device=device, quiet=quiet)


def _option_for(param: Param, users: list[str], helps: dict[str, list[str]] | None = None) -> click.Option:
    """A click option for a declared parameter; values stay raw and are validated by the Param.

    ``helps`` maps each distinct help text to the techniques declaring it, so an option two
    techniques give different meanings (``--max-tokens``) explains both."""
    help_text = param.describe()
    if helps and len(helps) > 1:
        help_text = " ".join(f"[{', '.join(names)}] {text}" for text, names in helps.items())
    elif users:
        help_text = f"[{', '.join(users)}] {help_text}"
    if param.type == "bool":
        flag = param.cli_flag[2:]
        return click.Option([f"--{flag}/--no-{flag}"], default=None, help=help_text)
    return click.Option([param.cli_flag], type=str, default=None, metavar=param.metavar, help=help_text)


def _collect_options(techniques: dict[str, Any], extra: tuple[Param, ...] = ()) -> tuple[list[click.Option], dict[str, Param]]:
    users: dict[str, list[str]] = {}
    first: dict[str, Param] = {}
    helps: dict[str, dict[str, list[str]]] = {}
    for name, reg in techniques.items():
        for p in reg.technique.params:
            first.setdefault(p.name, p)
            users.setdefault(p.name, []).append(name)
            helps.setdefault(p.name, {}).setdefault(p.describe(), []).append(name)
    for p in extra:
        first.setdefault(p.name, p)
    options = [_option_for(first[n], users.get(n, []), helps.get(n)) for n in first]
    return options, first


# --------------------------------------------------------------------------- technique kinds

def _kind_command(kind: Kind, techniques: dict[str, Any]) -> click.Command:
    options, _declared = _collect_options(techniques, kind.options)
    names = list(techniques)
    selector_help = "; ".join(f"{n}: {techniques[n].technique.summary}" for n in names)

    def callback(models, output, fmt, plan, as_json, seed, quiet, verbose, **raw):
        chosen = raw.pop(kind.selector)
        name = chosen or kind.default
        actions = [a for a in kind.actions if raw.pop(a, False)]
        batch_list = raw.pop("batch", None)
        batch_raw = {p.name: raw.pop(p.name, None) for p in kind.batch_options}
        if batch_list is not None:
            if chosen or plan or actions:
                raise AprError(f"--batch replaces --{kind.selector}, --plan and report actions")
            return _run_batch(kind, batch_list, models, output, fmt, as_json, seed, quiet, verbose,
                              {k: v for k, v in raw.items() if v is not None}, batch_raw)
        if not name:
            raise AprError(f"apr {kind.name} needs --{kind.selector} ({', '.join(names)})")
        from . import pipeline

        technique = pipeline.transform_technique(kind.name, name)
        lo = getattr(technique, "min_inputs", kind.min_inputs)
        hi = getattr(technique, "max_inputs", kind.max_inputs)
        if len(models) < lo or (hi is not None and len(models) > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise AprError(f"{kind.name} {name} takes {want} model(s), got {len(models)}")
        given = {k: v for k, v in raw.items() if v is not None}
        params = technique.resolve_params(given, kind.options)
        ctx = _context(quiet, seed=seed)
        ctx.verbose = verbose
        if actions and not hasattr(technique, actions[0]):
            with_action = [n for n, r in techniques.items() if hasattr(r.technique, actions[0])]
            raise AprError(f"{kind.name} {name} has no --{actions[0]}; use --{kind.selector} "
                           f"{' or '.join(with_action) or '(none installed)'}")
        if plan or actions:
            inputs = [pipeline.load(m, verify=not plan) for m in models]
            report = (getattr(technique, actions[0])(inputs, params, ctx) if actions
                      else technique.plan(inputs, params, ctx))
            _emit_json(report) if as_json else _print_plan(report)
            return
        if not output:
            raise AprError(f"apr {kind.name} needs -o/--output (or --plan)")
        fmt_name = pipeline.output_format(output, fmt)
        start = time.perf_counter()
        inputs = [pipeline.load(m) for m in models]
        result = pipeline.transform(kind.name, name, inputs, given, ctx)
        written = pipeline.save(result, output, fmt_name, progress=ctx.progress)
        summary = {
            "command": kind.name, "technique": name, "output": written, "format": fmt_name,
            "params": result.provenance[-1]["params"], "seconds": round(time.perf_counter() - start, 3),
            "report": ctx.report,
        }
        if as_json:
            _emit_json(summary)
        else:
            click.echo(f"{kind.name} {name}: wrote {written} ({fmt_name}) in {summary['seconds']:.1f}s")
            for k, v in ctx.report.items():
                click.echo(f"  {k}: {v}")

    params: list[click.Parameter] = [
        click.Argument(["models"], nargs=-1),
        click.Option([f"--{kind.selector}"], type=str, default=None, metavar="NAME",
                     help=f"Technique to apply{f' (default {kind.default})' if kind.default else ''}: "
                          f"{selector_help}."),
        click.Option(["-o", "--output"], default=None, help="Output path (.apr, .safetensors, .gguf or a directory)."),
        click.Option(["--format", "fmt"], default=None, help="Output format (default: from the extension)."),
        click.Option(["--plan"], is_flag=True, help="Print what would happen (sizes, memory) and exit."),
        *[click.Option([f"--{a}"], is_flag=True, help=f"Run the technique's {a} report; writes nothing.")
          for a in kind.actions],
        click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable summary on stdout."),
        click.Option(["--seed"], type=int, default=0, show_default=True, help="Seed for random techniques."),
        click.Option(["-v", "--verbose"], is_flag=True, help="More detail in reports."),
        click.Option(["-q", "--quiet"], is_flag=True, help="No progress output on stderr."),
    ]
    if kind.batch:
        params.append(click.Option(["--batch"], default=None, metavar="A,B,...",
                                   help=f"Apply several {kind.selector}s to the input, one output each in "
                                        f"-o DIR (default: <input>-{kind.name}/ beside it), and compare them."))
        params.extend(_option_for(p, ["--batch"]) for p in kind.batch_options)
    params.extend(o for o in options if o.name != kind.selector)
    return click.Command(kind.name, callback=callback, params=params, help=kind.help,
                         context_settings=CONTEXT, no_args_is_help=True)


def _run_batch(kind: Kind, batch_list: str, models, output, fmt, as_json, seed, quiet, verbose,
               given: dict[str, Any], batch_raw: dict[str, Any]) -> None:
    """``--batch A,B,C``: one output per technique, then the comparison table (and ``compare``)."""
    from . import pipeline
    from .params import resolve

    if len(models) != 1:
        raise AprError(f"{kind.name} --batch takes one model, got {len(models)}")
    names = [n.strip() for n in batch_list.split(",") if n.strip()]
    options = resolve(kind.batch_options, batch_raw, f"{kind.name} --batch")
    ctx = _context(quiet, seed=seed)
    ctx.verbose = verbose
    directory = pipeline.batch_directory(models[0], kind.name, output)
    rows = pipeline.batch(kind.name, names, models[0], given, directory, fmt or "apr", ctx)
    first = pipeline.transform_technique(kind.name, names[0])
    report: dict[str, Any] = {"command": kind.name, "input": models[0], "directory": str(directory)}
    compare = getattr(first, "compare", None)
    if compare is not None:
        report.update(compare(models[0], rows, options, ctx))
    report["rows"] = rows
    if as_json:
        _emit_json(report)
    else:
        _print_plan(report)


def _print_plan(report: dict[str, Any]) -> None:
    """Human-readable report: scalars as ``key: value``, lists of records as aligned tables."""
    tables = []
    for key, value in report.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
            continue
        if isinstance(value, int) and key.endswith("bytes"):
            value = f"{_human_bytes(value)} ({value} bytes)"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        click.echo(f"{key}: {value}")
    for key, rows in tables:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[str(r.get(c, "")) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(cols)]
        click.echo(f"\n{key}:")
        click.echo("  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for row in cells:
            click.echo("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))


# --------------------------------------------------------------------------- group

class AprGroup(click.Group):
    """Core commands are static; technique-kind commands come from the registry on demand."""

    def _kinds(self) -> dict[str, Kind]:
        from .plugins import manager

        _, registry = manager()
        from . import pipeline

        names = {k for k, _ in registry.techniques if k in CORE_KINDS or k in registry.kinds}
        return {n: pipeline.kind(n) for n in names}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._kinds()) | {"eval"})

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        if name == "eval":
            return _eval_command()
        kinds = self._kinds()
        if name in kinds:
            from .plugins import manager

            return _kind_command(kinds[name], manager()[1].of_kind(name))
        return None


@click.group(cls=AprGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="apr")
def cli():
    """apr: make code LLMs better and smaller.

    Import a model once, then merge, prune, quantize, fine-tune, distill, tune and
    evaluate it; every technique is a plugin (see `apr plugins`).
    """


@cli.command("import", context_settings=CONTEXT)
@click.argument("source")
@click.option("-o", "--output", required=True, help="Output path (.apr by default; .safetensors, .gguf or a directory).")
@click.option("--dtype", default="auto", show_default=True, help="Store weights as auto (source type; F32 for quantized GGUF), f32, f16 or bf16.")
@click.option("--revision", default=None, help="Hub revision for hf:// sources (or use hf://org/name@rev).")
@click.option("--preserve-quant", is_flag=True, help="Keep GGUF k-quant blocks instead of dequantizing.")
@click.option("--format", "fmt", default=None, help="Output format (default: from the extension).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def import_cmd(source, output, dtype, revision, preserve_quant, fmt, as_json, quiet):
    """Import SOURCE (hf://org/name[@rev], a local HF directory, .safetensors, .gguf, .bin or a
    short name such as smollm2-135m) into an apr model file."""
    from . import pipeline

    ctx = _context(quiet)
    fmt_name = pipeline.output_format(output, fmt)
    start = time.perf_counter()
    model = pipeline.load(source, revision=revision, preserve_quant=preserve_quant,
                          dtype=None if dtype == "auto" else pipeline.FLOAT_DTYPES.get(dtype.lower(), dtype))
    model = pipeline.cast(model, dtype).with_operation(
        "import", None, {"source": source, "dtype": dtype, "revision": revision}, [model])
    written = pipeline.save(model, output, fmt_name, progress=ctx.progress)
    summary = {"output": written, "format": fmt_name, "architecture": model.architecture,
               "params": model.param_count, "bytes": model.nbytes, "dtypes": model.dtype_counts(),
               "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        _emit_json(summary)
    else:
        click.echo(f"imported {source} -> {written}: {model.architecture}, "
                   f"{model.param_count / 1e6:.1f}M params, {_human_bytes(model.nbytes)}")


@cli.command("export", context_settings=CONTEXT)
@click.argument("model")
@click.option("-o", "--output", required=True, help="Output path.")
@click.option("--format", "fmt", required=True, help="hf, safetensors, gguf or apr.")
@click.option("--dtype", default=None, help="gguf: f32, f16 (default), q8_0, q6_k, q4_k (= q4_k_s), q4_k_m, "
              "q5_k_m or q3_k_m (llama-quantize's mixtures, see docs/quantize.md); others: f32, f16, bf16.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def export_cmd(model, output, fmt, dtype, as_json, quiet):
    """Export MODEL to a Hugging Face directory, safetensors, GGUF or .apr."""
    from . import pipeline

    ctx = _context(quiet)
    fmt_name = pipeline.output_format(output, fmt)
    m = pipeline.load(model)
    options: dict[str, Any] = {"progress": ctx.progress}
    if fmt_name == "gguf":
        options["dtype"] = dtype
    else:
        m = pipeline.cast(m, dtype)
    m = m.with_operation("export", None, {"format": fmt_name, "dtype": dtype}, [m])
    written = pipeline.save(m, output, fmt_name, **options)
    if as_json:
        _emit_json({"output": written, "format": fmt_name, "dtype": dtype})
    else:
        click.echo(f"exported {model} -> {written} ({fmt_name})")


@cli.command("inspect", context_settings=CONTEXT)
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor.")
@click.option("--no-verify", is_flag=True, help="Skip the whole-file checksum.")
def inspect_cmd(model, as_json, show_tensors, no_verify):
    """Architecture, parameter count, dtypes, size, tokenizer and provenance of MODEL."""
    from . import pipeline
    from .inspect import describe

    m = pipeline.load(model, verify=not no_verify)
    info = describe(m, show_tensors, verified=not no_verify)
    if as_json:
        _emit_json(info)
        return
    click.echo(f"{model}: {info['architecture']} ({info['model_type']})")
    click.echo(f"  parameters: {info['params']:,}  size: {_human_bytes(info['bytes'])}  "
               f"bits/weight: {info['bits_per_weight']}  tensors: {info['tensor_count']}")
    click.echo(f"  dtypes: {', '.join(f'{k} {v:,}' for k, v in info['dtypes'].items())}")
    arch = info["config"]
    click.echo("  " + ", ".join(f"{k}={v}" for k, v in arch.items() if v is not None))
    tok = info["tokenizer"]
    click.echo(f"  tokenizer: {tok['type']}, vocab {tok['vocab_size']}, files {', '.join(tok['files'])}, "
               f"chat template {'yes' if tok['chat_template'] else 'no'}")
    click.echo(f"  provenance ({len(info['provenance'])} operations):")
    for rec in info["provenance"]:
        click.echo(f"    - {rec.get('operation')} {rec.get('technique') or ''} {json.dumps(rec.get('params', {}))}")
    if show_tensors:
        for t in info["tensors"]:
            click.echo(f"  {t['name']}: {t['dtype']} {t['shape']} ({t['bits_per_weight']} bits/weight)")


def _eval_command() -> click.Command:
    """`apr eval`, with every installed evaluate technique's parameters as options."""
    from .plugins import manager

    evaluators = manager()[1].of_kind("evaluate")
    options, _ = _collect_options(evaluators)

    def callback(model, task, threshold, as_json, seed, quiet, **raw):
        from . import pipeline

        task = task or "perplexity"
        technique = manager()[1].get("evaluate", task)
        given = {k: v for k, v in raw.items() if v is not None}
        technique.resolve_params(given)  # validate before loading anything
        m = pipeline.load(model)
        result = pipeline.evaluate(task, m, given, _context(quiet, seed=seed))
        failed = False
        if threshold is not None:
            value = float(result["value"])
            failed = value < threshold if result.get("higher_is_better") else value > threshold
            result["threshold"] = threshold
            result["passed"] = not failed
        if as_json:
            _emit_json(result)
        else:
            click.echo(result.get("summary") or f"{result['metric']}: {result['value']}")
            if threshold is not None:
                click.echo(f"threshold {threshold}: {'FAIL' if failed else 'ok'}")
        if failed:
            click.get_current_context().exit(1)

    params: list[click.Parameter] = [
        click.Argument(["model"]),
        click.Option(["--task"], default=None,
                     help=f"Evaluation to run: {', '.join(evaluators) or 'none installed'} (default perplexity)."),
        click.Option(["--threshold"], type=float, default=None,
                     help="Exit 1 when the metric is worse than this (above it, for perplexity)."),
        click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable result on stdout."),
        click.Option(["--seed"], type=int, default=0, show_default=True, help="Seed for sampling."),
        click.Option(["-q", "--quiet"], is_flag=True, help="No progress output on stderr."),
    ]
    params.extend(options)
    return click.Command("eval", callback=callback, params=params, context_settings=CONTEXT,
                         no_args_is_help=True,
                         help="Evaluate MODEL: perplexity on a corpus, or a task from an evaluate plugin.")


@cli.command("plugins", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def plugins_cmd(as_json):
    """List installed plugins, the techniques each registers, and where they come from."""
    from .plugins import manager

    _, registry = manager()
    rows = []
    for info in registry.plugins:
        techs = [{"kind": r.technique.kind, "name": r.technique.name, "summary": r.technique.summary}
                 for r in registry.techniques.values() if r.plugin == info.name]
        rows.append({"plugin": info.name, "module": info.module, "distribution": info.distribution,
                     "version": info.version, "techniques": techs})
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        techs = ", ".join(f"{t['kind']}/{t['name']}" for t in row["techniques"]) or "(formats and hooks)"
        click.echo(f"{row['plugin']:<24} {row['distribution']} {row['version']:<8} {techs}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with exit code 2 for anything the user can fix."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="apr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        print(f"apr: error: {exc.format_message()}", file=sys.stderr)
        code = 2
    except click.exceptions.Abort:
        print("apr: aborted", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("apr: interrupted", file=sys.stderr)
        code = 130
    except AprError as exc:
        print(f"apr: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except PluginError as exc:
        print(f"apr: plugin error: {exc}", file=sys.stderr)
        code = 3
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
