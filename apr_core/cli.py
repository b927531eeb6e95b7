"""The ``apr`` command line: core commands plus one command per technique kind.

Technique commands (``apr merge``, ``apr prune`` ...) are generated from the
registry: each registered technique's declared `Param`s become options, so
installing a plugin adds its strategy and flags with no edit here. Nothing in
this module imports torch; ``apr --help`` and ``apr plugins`` stay fast.

Errors a user can fix print one line and exit 2; ``--threshold`` failures exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import click

from . import __version__
from .errors import AprError, PluginError, Terminated
from .params import Param
from .technique import Kind, RunContext

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
FORCE_HELP = "Let -o name an input and replace it (a directory only if apr wrote it)."


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _context(quiet: bool = False, seed: int = 0, device: str | None = None, dtype: str | None = None,
             verbose: bool = False) -> RunContext:
    """The run's settings: this command's --device/--dtype, else the group's (``apr --device``),
    else ``APR_DEVICE`` / auto."""
    from .runtime.device import canonical_dtype, resolve_device
    from .runtime.startup import import_torch

    import_torch()  # every technique needs it; imported here with the collector paused
    root = click.get_current_context(silent=True)
    group = (root.find_root().obj or {}) if root is not None else {}
    device = resolve_device(device if device is not None else group.get("device"))
    dtype = canonical_dtype(dtype if dtype is not None else group.get("dtype") or "auto")
    return RunContext(seed=seed, device=device, dtype=dtype, quiet=quiet, verbose=verbose)


def _check_ahead(sources) -> None:
    """Start checking the .apr inputs' checksums now, while torch is imported (apr_core.formats.footer)."""
    from .formats.footer import check_ahead

    check_ahead(s for s in sources if str(s).endswith(".apr"))


DEVICE_HELP = "Compute device: auto (CUDA when available), cpu, cuda or cuda:N (default: apr --device, APR_DEVICE)."
DTYPE_HELP = ("Compute precision: auto (bf16 on GPUs that support it; on a CPU bf16 for bf16-stored models "
              "evaluated where the CPU has bf16 instructions; else float32), float32, bfloat16, float16.")


def _run_options() -> list[click.Option]:
    return [click.Option(["--device"], default=None, metavar="DEVICE", help=DEVICE_HELP),
            click.Option(["--dtype", "compute_dtype"], default=None, metavar="DTYPE", help=DTYPE_HELP)]


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
    if param.repeatable:
        return click.Option([param.cli_flag], type=str, multiple=True, metavar=param.metavar, help=help_text,
                            callback=lambda _ctx, _p, values: ",".join(values) if values else None)
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
    """One command for a kind: the selector, the union of its techniques' options, the kind's
    shared options and actions; the callback hands everything to `apr_core.pipeline`."""
    options, _declared = _collect_options(techniques, kind.options)
    names = list(techniques)
    selector_help = "; ".join(f"{n}: {techniques[n].technique.summary}" for n in names)

    def callback(models, as_json, seed, quiet, verbose, device, compute_dtype, output=None, fmt=None,
                 plan=False, force=False, nproc=None, **raw):
        from . import pipeline

        if nproc and nproc > 1 and "LOCAL_RANK" not in os.environ:
            return _relaunch(nproc)

        _check_ahead(models)
        name = raw.pop(kind.selector)
        actions = [a for a in kind.actions if raw.pop(a, False)]
        batch_list = raw.pop("batch", None)
        batch_raw = {p.name: raw.pop(p.name, None) for p in kind.batch_options}
        ctx = _context(quiet, seed, device, compute_dtype, verbose)
        if batch_list is not None:
            if name or plan or actions:
                raise AprError(f"--batch replaces --{kind.selector}, --plan and report actions")
            names_ = [n.strip() for n in batch_list.split(",") if n.strip()]
            report = pipeline.batch(kind.name, names_, list(models), raw, output, fmt, ctx, batch_raw)
            return _emit_json(report) if as_json else _print_plan(report)
        if plan or actions:
            if fmt or output:  # the plan's memory estimate depends on the writer
                ctx.output_format = pipeline.output_format(output or "", fmt)
            report = (pipeline.action(kind.name, name, actions[0], list(models), raw, ctx) if actions
                      else pipeline.plan(kind.name, name, list(models), raw, ctx))
            return _emit_json(report) if as_json else _print_plan(report)
        result = pipeline.run(kind.name, name, list(models), raw, output, fmt, ctx, force=force)
        if not pipeline.is_main_process():
            return None  # under torchrun only rank 0 reports
        if not kind.writes:
            return _render_result(result, as_json)
        if as_json:
            return _emit_json(result)
        if result.get("up_to_date"):
            return click.echo(f"{kind.name} {result['technique']}: {result['message']}")
        click.echo(f"{kind.name} {result['technique']}: wrote {result['output']} ({result['format']}) "
                   f"in {result['seconds']:.1f}s")
        for k, v in result["report"].items():
            click.echo(f"  {k}: {v}")

    params: list[click.Parameter] = [
        click.Argument(["models"], nargs=-1, metavar="MODEL" if kind.max_inputs == 1 else "MODELS..."),
        click.Option([f"--{kind.selector}"], type=str, default=None, metavar="NAME",
                     help=f"Technique to apply{f' (default {kind.default})' if kind.default else ''}: "
                          f"{selector_help}."),
    ]
    if kind.writes:
        params += [
            click.Option(["-o", "--output"], default=None,
                         help="Output path (.apr, .safetensors, .gguf or a directory)."),
            click.Option(["--format", "fmt"], default=None, help="Output format (default: from the extension)."),
            click.Option(["--force"], is_flag=True, help=FORCE_HELP),
            click.Option(["--plan"], is_flag=True, help="Print what would happen (sizes, memory) and exit."),
        ]
    params += [
        *[click.Option([f"--{a}"], is_flag=True, help=f"Run the technique's {a} report; writes nothing.")
          for a in kind.actions],
        click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable summary on stdout."),
        click.Option(["--seed"], type=int, default=0, show_default=True, help="Seed for random techniques."),
        *_run_options(),
        click.Option(["-v", "--verbose"], is_flag=True, help="More detail in reports."),
        click.Option(["-q", "--quiet"], is_flag=True, help="No progress output on stderr."),
    ]
    if kind.processes:
        params.append(click.Option(["--nproc"], type=click.IntRange(1), default=None, metavar="N",
                                   help="Run as N processes under torchrun (DDP; gloo on the CPU). Same as "
                                        "`torchrun --nproc-per-node N -m apr_core.cli ...` or `accelerate "
                                        "launch`; only rank 0 writes."))
    if kind.batch:
        params.append(click.Option(["--batch"], default=None, metavar="A,B,...",
                                   help=f"Apply several {kind.selector}s to the input, one output each in "
                                        f"-o DIR (default: <input>-{kind.name}/ beside it), and compare them."))
        params.extend(_option_for(p, ["--batch"]) for p in kind.batch_options)
    taken = {p.name for p in params}
    params.extend(o for o in options if o.name not in taken)
    return click.Command(kind.command_name, callback=callback, params=params, help=kind.help,
                         context_settings=CONTEXT, no_args_is_help=True)


def _check_destination(output, inputs, force) -> None:
    from .atomic import check_destination

    check_destination(output, inputs, force)


_ARGS: list[str] = []


def _relaunch(nproc: int) -> None:
    """Re-run this command under torchrun with ``nproc`` processes and exit with its status."""
    import subprocess

    args, skip = [], False
    for a in _ARGS:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "apr_core.cli", *args]
    click.get_current_context().exit(subprocess.call(cmd))


def _render_result(result: dict[str, Any], as_json: bool) -> None:
    """An evaluation's record: JSON or its summary line; exit 1 when it missed --threshold."""
    failed = result.get("passed") is False
    if as_json:
        _emit_json(result)
    else:
        click.echo(result.get("summary") or f"{result['metric']}: {result['value']}")
        if "threshold" in result:
            click.echo(f"threshold {result['threshold']}: {'FAIL' if failed else 'ok'}")
    if failed:
        click.get_current_context().exit(1)


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
    """Core commands are static; technique-kind commands come from the registry on demand, and
    plugins may add whole commands through ``apr_register_commands``."""

    _plugin_commands_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugin_commands_added:
            from .plugins import manager

            type(self)._plugin_commands_added = True
            manager()[0].hook.apr_register_commands(cli=self)

    def list_commands(self, ctx):
        from .plugins import manager

        self._add_plugin_commands()
        return sorted(set(super().list_commands(ctx)) | set(manager()[1].commands()))

    def get_command(self, ctx, name):
        self._add_plugin_commands()
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        from .plugins import manager

        kinds = manager()[1].commands()
        if name in kinds:
            return _kind_command(kinds[name], manager()[1].of_kind(kinds[name].name))
        return None


@click.group(cls=AprGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="apr")
@click.option("--device", default=None, metavar="DEVICE",
              help="Default compute device for every command: auto, cpu, cuda, cuda:N (or APR_DEVICE).")
@click.option("--dtype", default=None, metavar="DTYPE",
              help="Default compute precision: auto, float32, bfloat16, float16.")
@click.option("--threads", default=None, metavar="N",
              help="CPU threads for torch: a number or auto (one per core this process may use; "
                   "or APR_THREADS, OMP_NUM_THREADS).")
@click.pass_context
def cli(ctx, device, dtype, threads):
    """apr: make code LLMs better and smaller.

    Import a model once, then merge, prune, quantize, fine-tune, distill, tune and
    evaluate it; every technique is a plugin (see `apr plugins`).
    """
    from .runtime import threads as cpu_threads

    count, source = cpu_threads.configure(threads)
    ctx.obj = {"device": device, "dtype": dtype, "threads": count, "threads_source": source}


@cli.command("import", context_settings=CONTEXT)
@click.argument("source")
@click.option("-o", "--output", required=True, help="Output path (.apr by default; .safetensors, .gguf or a directory).")
@click.option("--dtype", default="auto", show_default=True, help="Store weights as auto (source type; F32 for quantized GGUF), f32, f16 or bf16.")
@click.option("--revision", default=None, help="Hub revision for hf:// sources (or use hf://org/name@rev).")
@click.option("--preserve-quant", is_flag=True, help="Keep GGUF k-quant blocks instead of dequantizing.")
@click.option("--format", "fmt", default=None, help="Output format (default: from the extension).")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def import_cmd(source, output, dtype, revision, preserve_quant, fmt, force, as_json, quiet):
    """Import SOURCE (hf://org/name[@rev], a local HF directory, .safetensors, .gguf, .bin or a
    short name such as smollm2-135m) into an apr model file."""
    from . import pipeline

    summary = pipeline.import_model(source, output, dtype, revision, preserve_quant, fmt, RunContext(quiet=quiet),
                                    force=force)
    if as_json:
        _emit_json(summary)
    else:
        click.echo(f"imported {source} -> {summary['output']}: {summary['architecture']}, "
                   f"{summary['params'] / 1e6:.1f}M params, {_human_bytes(summary['bytes'])}")


@cli.command("export", context_settings=CONTEXT)
@click.argument("model")
@click.option("-o", "--output", required=True, help="Output path.")
@click.option("--format", "fmt", required=True, help="hf, safetensors, gguf or apr.")
@click.option("--dtype", default=None, help="gguf: f32, f16 (default), q8_0, q6_k, q4_k (= q4_k_s), q4_k_m, "
              "q5_k_m or q3_k_m (llama-quantize's mixtures, see docs/quantize.md); others: f32, f16, bf16.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def export_cmd(model, output, fmt, dtype, force, as_json, quiet):
    """Export MODEL to a Hugging Face directory, safetensors, GGUF or .apr."""
    from . import pipeline

    ctx = RunContext(quiet=quiet)
    fmt_name = pipeline.output_format(output, fmt)
    _check_destination(output, [model], force)
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

    m = pipeline.load(model, verify=not no_verify, check_tensors=False)  # stays instant: no torch
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
        techs = ", ".join(f"{t['kind']}/{t['name']}" for t in row["techniques"]) or "(commands, formats or hooks)"
        click.echo(f"{row['plugin']:<24} {row['distribution']} {row['version']:<8} {techs}")


def _only_help(args: list[str]) -> bool:
    """Whether the command line only asks for help or the version."""
    return not args or any(a in ("-h", "--help", "--version") for a in args)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with exit code 2 for anything the user can fix."""
    from .runtime import malloc
    from .runtime.threads import prepare_environment

    args = sys.argv[1:] if argv is None else argv
    _ARGS[:] = args
    if not _only_help(args):  # help runs nothing: no need to sample the machine's load
        prepare_environment()
    malloc.configure()
    previous = _catch_sigterm()
    try:
        code = cli.main(args=args, prog_name="apr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        print(f"apr: error: {exc.format_message()}", file=sys.stderr)
        code = 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
            print("apr: terminated", file=sys.stderr)
            code = 128 + signal.SIGTERM
        else:
            print(f"apr: {'aborted' if isinstance(exc, click.exceptions.Abort) else 'interrupted'}",
                  file=sys.stderr)
            code = 130
    except AprError as exc:
        print(f"apr: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except PluginError as exc:
        print(f"apr: plugin error: {exc}", file=sys.stderr)
        code = 3
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    code = code if isinstance(code, int) else 0
    if argv is None:  # this process's own command line: skip the interpreter's teardown
        from .runtime.shutdown import exit_now

        exit_now(code)
    sys.exit(code)


def _catch_sigterm():
    """Make SIGTERM raise `Terminated` (a KeyboardInterrupt), so atomic writes clean up as for
    Ctrl-C; returns the previous handler (None where signals cannot be set: not the main thread)."""
    def terminate(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:
        return None


if __name__ == "__main__":  # pragma: no cover
    main()
