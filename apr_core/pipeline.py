"""load -> transform -> evaluate -> save, through the plugin hooks.

`run` is what every technique command does (validate, count inputs, load,
transform or evaluate, save, summarise); `plan`, `action` and `batch` are its
report-only and many-technique forms. The CLI only parses options and renders
what these return, so Python callers (and ``apr tune``, which runs techniques
as objectives) get exactly what the command line gets::

    from apr_core import pipeline
    summary = pipeline.run("merge", "slerp", ["a.apr", "b.apr"], {"weights": "0.85,0.15"},
                           output="merged.apr")
    ppl = pipeline.run("evaluate", "perplexity", ["merged.apr"], {"dataset": "code"})["value"]

The lower-level `load`, `transform`, `evaluate` and `save` work on `Model`
handles already in memory.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from .errors import AprError, UpToDate
from .model import LazyTensor, Model, TensorSpec
from .plugins import manager
from .technique import EvaluateTechnique, Kind, RunContext, TransformTechnique
from .validate import check_model

EXTENSIONS = {".apr": "apr", ".safetensors": "safetensors", ".gguf": "gguf"}
FLOAT_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "float32": "F32", "float16": "F16",
                "bfloat16": "BF16"}


_LOADED: dict[tuple, Model] | None = None


@contextlib.contextmanager
def reuse_loads():
    """Within the block, loading the same source with the same options returns the same handle
    (a plan that opens one model for many steps reads it once)."""
    global _LOADED
    outer, _LOADED = _LOADED, ({} if _LOADED is None else _LOADED)
    try:
        yield
    finally:
        _LOADED = outer


def load(source: str, **options: Any) -> Model:
    """Open a model through the first plugin that recognises ``source``."""
    options.setdefault("verify", True)
    if _LOADED is not None:
        key = (str(source), tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in _LOADED:
            _LOADED[key] = _load(source, options)
        return _LOADED[key]
    return _load(source, options)


def _load(source: str, options: dict[str, Any]) -> Model:
    pm, _ = manager()
    check_tensors = options.pop("check_tensors", True)  # False: config and tokenizer only (no torch)
    model = pm.hook.apr_load_model(source=str(source), options=options)
    if model is None:
        if not os.path.exists(source):
            raise AprError(f"no such file or model: {source}")
        raise AprError(f"{source}: unknown model format (expected .apr, .safetensors, .gguf, "
                       f".bin, a Hugging Face directory or hf://org/name)")
    check_model(model, tensors=check_tensors)
    return model


def formats() -> list[str]:
    pm, _ = manager()
    return sorted({f for names in pm.hook.apr_formats() for f in names})


def output_format(destination: str, fmt: str | None) -> str:
    """The format to write: ``fmt`` if given, else from the extension (a directory means hf)."""
    known = formats()
    if fmt:
        if fmt not in known:
            raise AprError(f"--format {fmt!r} is not one of {', '.join(known)}")
        return fmt
    ext = Path(destination).suffix.lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if destination.endswith(("/", os.sep)) or not ext or Path(destination).is_dir():
        return "hf"
    raise AprError(f"cannot tell the format of {destination!r} from its extension; pass --format "
                   f"({', '.join(known)})")


def save(model: Model, destination: str, fmt: str | None = None, **options: Any) -> str:
    """Write ``model`` atomically through the first plugin that writes ``fmt``."""
    pm, _ = manager()
    fmt = output_format(destination, fmt)
    destination = destination.rstrip("/") if len(destination) > 1 else destination  # dir formats
    written = pm.hook.apr_save_model(model=model, destination=destination, fmt=fmt, options=options)
    if written is None:
        raise AprError(f"no installed plugin writes format {fmt!r}")
    return written


def cast(model: Model, dtype: str | None) -> Model:
    """Lazily convert every floating-point tensor to ``dtype`` (f32, f16, bf16); None keeps them."""
    if dtype in (None, "auto"):
        return model
    target = FLOAT_DTYPES.get(dtype.lower())
    if target is None:
        raise AprError(f"--dtype {dtype!r} is not one of auto, {', '.join(sorted(set(FLOAT_DTYPES)))}")
    out = model.derive()
    for name, lt in model.tensors.items():
        if lt.spec.dtype in ("F32", "F16", "BF16", "F64") and lt.spec.dtype != target:
            spec = TensorSpec(name, target, lt.spec.shape)
            out.tensors[name] = LazyTensor(spec, lambda lt=lt, spec=spec: lt.load().to(spec.dt.torch_dtype()))
    torch_name = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[target]
    out.config["torch_dtype"] = torch_name
    out.config.pop("dtype", None)
    return out


def import_model(source: str, output: str, dtype: str = "auto", revision: str | None = None,
                 preserve_quant: bool = False, fmt: str | None = None, context: RunContext | None = None,
                 force: bool = False) -> dict[str, Any]:
    """``apr import``: load ``source`` (hf://, a directory, a file, a short name), store its weights
    as ``dtype`` (auto keeps the source's), record the import in provenance and write ``output``."""
    from .atomic import check_destination

    context = context or RunContext()
    fmt_name = output_format(output, fmt)
    check_destination(output, [source], force)
    start = time.perf_counter()
    model = load(source, revision=revision, preserve_quant=preserve_quant,
                 dtype=None if dtype == "auto" else FLOAT_DTYPES.get(dtype.lower(), dtype))
    model = cast(model, dtype).with_operation("import", None, {"source": source, "dtype": dtype,
                                                               "revision": revision}, [model])
    written = save(model, output, fmt_name, progress=context.progress)
    return {"output": written, "format": fmt_name, "architecture": model.architecture,
            "params": model.param_count, "bytes": model.nbytes, "dtypes": model.dtype_counts(),
            "seconds": round(time.perf_counter() - start, 3)}


def technique_of(kind_name: str, name: str):
    """The registered technique ``name`` of kind ``kind_name`` (one line naming the choices if not)."""
    _, registry = manager()
    return registry.get(kind_name, name)


def transform_technique(kind_name: str, name: str) -> TransformTechnique:
    technique = technique_of(kind_name, name)
    if not isinstance(technique, TransformTechnique):
        raise AprError(f"{kind_name} {name} is not a transform")
    return technique


def kind(name: str) -> Kind:
    """The command family ``name`` (``merge``, ``evaluate`` ...), as its plugin declared it."""
    _, registry = manager()
    return registry.kind(name)


def chosen(kind_: Kind, name: str | None) -> str:
    """The technique a command runs: ``name``, else the kind's default."""
    name = name or kind_.default
    if not name:
        _, registry = manager()
        raise AprError(f"apr {kind_.command_name} needs --{kind_.selector} "
                       f"({', '.join(registry.of_kind(kind_.name)) or 'none installed'})")
    return name


def check_input_count(kind_: Kind, technique, sources: list[str]) -> None:
    lo, hi = technique.input_range(kind_)
    if len(sources) < lo or (hi is not None and len(sources) > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        raise AprError(f"{kind_.name} {technique.name} takes {want} model(s), got {len(sources)}")


def _prepare(kind_name: str, name: str | None, sources: list[str], raw: dict[str, Any] | None):
    """Kind, technique and validated parameters, before anything is loaded."""
    kind_ = kind(kind_name)
    technique = technique_of(kind_.name, chosen(kind_, name))
    check_input_count(kind_, technique, sources)
    params = technique.resolve_params(_given(raw), kind_.options)
    return kind_, technique, params


def _given(raw: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (raw or {}).items() if v is not None}


def _apply(kind_: Kind, technique: TransformTechnique, inputs: list[Model], params: dict[str, Any],
           context: RunContext) -> Model:
    pm, _ = manager()
    result = pm.hook.apr_transform(technique=technique, inputs=inputs, params=params, context=context)
    unrecorded = {p.name for p in technique.params + kind_.options if not p.recorded}
    recorded = {k: v for k, v in params.items() if k not in unrecorded}
    if technique.random:
        recorded["seed"] = context.seed
    return result.with_operation(kind_.name, technique.name, recorded, [*inputs, *context.extra_inputs],
                                 context.record)


def _evaluate(technique: EvaluateTechnique, model: Model, params: dict[str, Any], context: RunContext) -> dict:
    pm, _ = manager()
    result = pm.hook.apr_evaluate(technique=technique, model=model, params=params, context=context)
    threshold = params.get("threshold")
    if threshold is not None:
        value = float(result["value"])
        result["threshold"] = threshold
        result["passed"] = value >= threshold if result.get("higher_is_better") else value <= threshold
    return result


def run(kind_name: str, name: str | None, sources: list[str], raw_params: dict[str, Any] | None = None,
        output: str | None = None, fmt: str | None = None, context: RunContext | None = None,
        force: bool = False) -> dict[str, Any]:
    """Run one technique as its command does and return the summary (or, for an evaluation,
    the result record with ``passed`` when a threshold was given).

    Every name, count and parameter is validated before any model is loaded, the output is
    checked not to destroy an input or a directory apr did not write (``force`` allows replacing
    an input, `apr_core.atomic.check_destination`), and nothing is written before the transform
    succeeds.
    """
    context = context or RunContext()
    kind_, technique, params = _prepare(kind_name, name, sources, raw_params)
    if isinstance(technique, EvaluateTechnique):
        return _evaluate(technique, load(sources[0]), params, context)
    if not output:
        raise AprError(f"apr {kind_.command_name} needs -o/--output (or --plan)")
    fmt_name = output_format(output, fmt or technique.default_format(output))
    from .atomic import check_destination

    paths = [params.get(p.name) for p in technique.params + kind_.options if p.type == "path"]
    check_destination(output, [*sources, *paths], force)
    context.output, context.output_format = output, fmt_name
    start = time.perf_counter()
    try:
        result = _apply(kind_, technique, [load(s) for s in sources], params, context)
    except UpToDate as done:
        return {"command": kind_.name, "technique": technique.name, "output": output, "format": fmt_name,
                "up_to_date": True, "message": str(done), "seconds": round(time.perf_counter() - start, 3),
                "report": context.report}
    written = save(result, output, fmt_name, progress=context.progress) if is_main_process() else output
    return {"command": kind_.name, "technique": technique.name, "output": written, "format": fmt_name,
            "params": result.provenance[-1]["params"], "seconds": round(time.perf_counter() - start, 3),
            "report": context.report}


def is_main_process() -> bool:
    """False in every process but rank 0 of a torchrun / accelerate launch: only rank 0 writes."""
    return os.environ.get("RANK", "0") == "0"


def plan(kind_name: str, name: str | None, sources: list[str], raw_params: dict[str, Any] | None = None,
         context: RunContext | None = None) -> dict[str, Any]:
    """What `run` would do (sizes, memory, time), without writing anything."""
    context = context or RunContext()
    _kind, technique, params = _prepare(kind_name, name, sources, raw_params)
    if not isinstance(technique, TransformTechnique):
        raise AprError(f"{technique.kind} {technique.name} has no --plan")
    return technique.plan([load(s, verify=False) for s in sources], params, context)


def action(kind_name: str, name: str | None, action_name: str, sources: list[str],
           raw_params: dict[str, Any] | None = None, context: RunContext | None = None) -> dict[str, Any]:
    """Run a kind's report-only action (``apr prune --analyze``) with one technique."""
    context = context or RunContext()
    kind_, technique, params = _prepare(kind_name, name, sources, raw_params)
    if action_name not in kind_.actions:
        raise AprError(f"apr {kind_.command_name} has no --{action_name}")
    if action_name not in technique.actions:
        _, registry = manager()
        able = [n for n, r in registry.of_kind(kind_.name).items() if action_name in r.technique.actions]
        raise AprError(f"{kind_.name} {technique.name} has no --{action_name}; use --{kind_.selector} "
                       f"{' or '.join(able) or '(none installed)'}")
    return getattr(technique, action_name)([load(s) for s in sources], params, context)


def transform(kind_name: str, name: str, inputs: list[Model], raw_params: dict[str, Any],
              context: RunContext | None = None) -> Model:
    """Validate parameters (the technique's and its kind's shared options), run the technique on
    models already loaded, through the apr_transform hook, and record provenance."""
    kind_ = kind(kind_name)
    technique = transform_technique(kind_.name, name)
    params = technique.resolve_params(_given(raw_params), kind_.options)
    return _apply(kind_, technique, inputs, params, context or RunContext())


def evaluate(name: str, model: Model, raw_params: dict[str, Any], context: RunContext | None = None) -> dict:
    """Evaluate a model already loaded (see `run` for the command's form)."""
    kind_ = kind("evaluate")
    technique = technique_of(kind_.name, name)
    if not isinstance(technique, EvaluateTechnique):
        raise AprError(f"evaluate {name} is not an evaluation")
    params = technique.resolve_params(_given(raw_params), kind_.options)
    return _evaluate(technique, model, params, context or RunContext())


def batch_directory(source: str, kind_name: str, output: str | None) -> Path:
    """Where ``--batch`` writes: ``output`` if given, else ``<input stem>-<kind>/`` next to the input."""
    if output:
        return Path(output)
    src = Path(source)
    return src.parent / f"{src.stem if src.suffix else src.name}-{kind_name}"


def batch(kind_name: str, names: list[str], sources: list[str], raw_params: dict[str, Any] | None = None,
          output: str | None = None, fmt: str | None = None, context: RunContext | None = None,
          batch_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply each technique ``names`` of a kind to one input, one file per technique in a
    directory, then the comparison report (rows plus what the technique's ``compare`` adds).

    Every name and parameter is validated before anything is written, so a typo costs nothing.
    Each row: technique, output path, bytes, seconds (transform and write).
    """
    from .params import resolve

    kind_ = kind(kind_name)
    if not kind_.batch:
        raise AprError(f"apr {kind_.command_name} has no --batch")
    if len(sources) != 1:
        raise AprError(f"{kind_.name} --batch takes one model, got {len(sources)}")
    if not names:
        raise AprError("--batch needs a comma-separated list of techniques")
    if len(set(names)) != len(names):
        raise AprError(f"--batch lists a technique twice: {','.join(names)}")
    given = _given(raw_params)
    techniques = [transform_technique(kind_.name, n) for n in names]  # unknown names fail here
    for technique in techniques:
        technique.resolve_params(dict(given), kind_.options)
    options = resolve(kind_.batch_options, _given(batch_options), f"{kind_.name} --batch")
    fmt = fmt or "apr"
    if fmt not in formats() or fmt == "hf":
        raise AprError(f"--batch writes files; --format must be one of "
                       f"{', '.join(f for f in formats() if f != 'hf')}")
    context = context or RunContext()
    source = sources[0]
    directory = batch_directory(source, kind_.name, output)
    directory.mkdir(parents=True, exist_ok=True)
    stem = Path(source).stem if Path(source).suffix else Path(source).name
    ext = {v: k for k, v in EXTENSIONS.items()}.get(fmt, "." + fmt)
    rows = []
    for technique in techniques:
        start = time.perf_counter()
        params = technique.resolve_params(dict(given), kind_.options)
        result = _apply(kind_, technique, [load(source)], params, context)
        out = str(directory / f"{stem}-{technique.name}{ext}")
        save(result, out, fmt, progress=context.progress)
        rows.append({"technique": technique.name, "output": out, "bytes": os.path.getsize(out),
                     "seconds": round(time.perf_counter() - start, 3)})
        context.log(f"{kind_.name} {technique.name}: wrote {out} in {rows[-1]['seconds']:.1f}s")
    report: dict[str, Any] = {"command": kind_.name, "input": source, "directory": str(directory)}
    report.update(techniques[0].compare(source, rows, options, context))
    report["rows"] = rows
    return report
