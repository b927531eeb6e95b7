"""load -> transform -> evaluate -> save, through the plugin hooks.

The CLI is a thin layer over these functions; Python users call them directly::

    from apr_core import pipeline
    base = pipeline.load("base.apr")
    out = pipeline.transform("merge", "slerp", [a, b], {"weights": (0.85, 0.15)})
    pipeline.save(out, "merged.apr")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import AprError
from .kinds import CORE_KINDS
from .model import LazyTensor, Model, TensorSpec
from .plugins import manager
from .technique import EvaluateTechnique, Kind, RunContext, TransformTechnique
from .validate import check_model

EXTENSIONS = {".apr": "apr", ".safetensors": "safetensors", ".gguf": "gguf"}
FLOAT_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "float32": "F32", "float16": "F16",
                "bfloat16": "BF16"}


def load(source: str, **options: Any) -> Model:
    """Open a model through the first plugin that recognises ``source``."""
    pm, _ = manager()
    options.setdefault("verify", True)
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
    destination = destination.rstrip("/") if fmt == "hf" and len(destination) > 1 else destination
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


def transform_technique(kind: str, name: str) -> TransformTechnique:
    _, registry = manager()
    technique = registry.get(kind, name)
    if not isinstance(technique, TransformTechnique):
        raise AprError(f"{kind} {name} is not a transform")
    return technique


def kind(name: str) -> Kind:
    """The command family ``name``: a core kind or one a plugin registered."""
    _, registry = manager()
    if name in registry.kinds:
        return registry.kinds[name][0]
    if name in CORE_KINDS:
        return CORE_KINDS[name]
    raise AprError(f"unknown technique kind {name!r}")


def transform(kind_name: str, name: str, inputs: list[Model], raw_params: dict[str, Any],
              context: RunContext | None = None) -> Model:
    """Validate parameters (the technique's and its kind's shared options), run the technique
    through the apr_transform hook, and record provenance."""
    pm, _ = manager()
    technique = transform_technique(kind_name, name)
    params = technique.resolve_params(raw_params, kind(kind_name).options)
    context = context or RunContext()
    result = pm.hook.apr_transform(technique=technique, inputs=inputs, params=params, context=context)
    recorded = dict(params)
    if technique.random:
        recorded["seed"] = context.seed
    return result.with_operation(kind_name, name, recorded, [*inputs, *context.extra_inputs])


def evaluate(name: str, model: Model, raw_params: dict[str, Any], context: RunContext | None = None) -> dict:
    pm, registry = manager()
    technique = registry.get("evaluate", name)
    assert isinstance(technique, EvaluateTechnique)
    params = technique.resolve_params(raw_params)
    return pm.hook.apr_evaluate(technique=technique, model=model, params=params, context=context or RunContext())


def batch_directory(source: str, kind_name: str, output: str | None) -> Path:
    """Where ``--batch`` writes: ``output`` if given, else ``<input stem>-<kind>/`` next to the input."""
    if output:
        return Path(output)
    src = Path(source)
    return src.parent / f"{src.stem if src.suffix else src.name}-{kind_name}"


def batch(kind_name: str, names: list[str], model_source: str, raw_params: dict[str, Any],
          directory: Path, fmt: str = "apr", context: RunContext | None = None) -> list[dict[str, Any]]:
    """Apply each technique ``names`` of a kind to one input, writing one file per technique.

    Every name and parameter is validated before anything is written, so a typo
    costs nothing. Returns one row per technique: technique, output path, bytes,
    seconds (transform and write).
    """
    import time

    _, registry = manager()
    shared = kind(kind_name).options
    if not names:
        raise AprError("--batch needs a comma-separated list of techniques")
    for name in names:
        registry.get(kind_name, name)  # unknown names fail here, before any work
    if len(set(names)) != len(names):
        raise AprError(f"--batch lists a technique twice: {','.join(names)}")
    for name in names:
        transform_technique(kind_name, name).resolve_params(dict(raw_params), shared)
    if fmt not in formats() or fmt == "hf":
        raise AprError(f"--batch writes files; --format must be one of "
                       f"{', '.join(f for f in formats() if f != 'hf')}")
    context = context or RunContext()
    directory.mkdir(parents=True, exist_ok=True)
    stem = Path(model_source).stem if Path(model_source).suffix else Path(model_source).name
    ext = {v: k for k, v in EXTENSIONS.items()}.get(fmt, "." + fmt)
    rows = []
    for name in names:
        start = time.perf_counter()
        result = transform(kind_name, name, [load(model_source)], dict(raw_params), context)
        out = str(directory / f"{stem}-{name}{ext}")
        save(result, out, fmt, progress=context.progress)
        rows.append({"technique": name, "output": out, "bytes": os.path.getsize(out),
                     "seconds": round(time.perf_counter() - start, 3)})
        context.log(f"{kind_name} {name}: wrote {out} in {rows[-1]['seconds']:.1f}s")
    return rows
