"""What every quantization scheme shares: the command family, the requantize guard, --plan.

A scheme is a row of `apr_quant.schemes` whose `Recipe` (apr_core.quant.policy)
says the dtype its weights get and which tensors stay in higher precision.
`QuantScheme.transform` is lazy: the writer quantizes one tensor at a time.
``apr quantize --batch`` compares schemes through `QuantScheme.compare`
(apr_quant.batch).
"""

from __future__ import annotations

from typing import Any

from apr_core.errors import AprError
from apr_core.params import Param
from apr_core.quant.policy import Recipe
from apr_core.technique import Kind, TransformTechnique

ALLOW_REQUANTIZE = Param("allow_requantize", "bool", False,
                         "Quantize tensors that are already quantized (their error compounds)")
EVAL_DATASET = Param("eval_dataset", "str", "code",
                     "Corpus for the perplexity column (code, prose, or a file)")
EVAL_TOKENS = Param("eval_tokens", "int", 2048,
                    "Tokens of the corpus to evaluate (0 skips perplexity)", min=0)
EVAL_SEQ_LEN = Param("eval_seq_len", "int", 512, "Perplexity window length", min=2)

QUANT_KIND = Kind("quantize", "scheme", "Store weights in fewer bits.", 1, 1,
                  options=(ALLOW_REQUANTIZE,), batch=True,
                  batch_options=(EVAL_DATASET, EVAL_TOKENS, EVAL_SEQ_LEN))

GROUPS = (("embeddings", "embed_tokens"), ("attention", "self_attn"), ("mlp", "mlp"),
          ("output", "lm_head"))


def group_of(name: str, shape: tuple[int, ...]) -> str:
    """Report group of a tensor: embeddings, attention, mlp, output, norms (1-D) or other."""
    if len(shape) < 2:
        return "norms"
    for group, key in GROUPS:
        if key in name:
            return group
    return "other"


class QuantScheme(TransformTechnique):
    """One quantization scheme, built from its row of `apr_quant.schemes`."""

    kind = "quantize"
    changes_dtypes = True

    def __init__(self, row) -> None:
        self.name, self.summary, self.paper = row.name, row.summary, row.paper
        self.recipe: Recipe = row.recipe
        self._requires = row.requires

    def check(self, params):
        if self._requires is not None:
            self._requires()

    def targets(self, model) -> dict[str, str]:
        from apr_core.quant.policy import plan

        return plan(self.recipe, [model.spec(n) for n in model.names()], model.text_config())

    def check_requantize(self, model, targets: dict[str, str], allowed: bool) -> None:
        if allowed:
            return
        for name, dtype in targets.items():
            spec = model.spec(name)
            if spec.dt.quantized and dtype != spec.dtype:
                raise AprError(f"tensor {name} is already {spec.dtype}-quantized; quantizing it again "
                               f"compounds the error: pass --allow-requantize to do it anyway")

    def transform(self, inputs, params, context):
        from apr_core.quant.convert import convert

        model = inputs[0]
        targets = self.targets(model)
        self.check_requantize(model, targets, params["allow_requantize"])
        out = convert(model, targets, context.device)
        if self.recipe.convention == "cast":
            out.config["torch_dtype"] = {"F16": "float16", "BF16": "bfloat16"}[self.recipe.main]
            out.config.pop("dtype", None)
        context.report.update(summary(model, out, self.recipe, _as_written(out, context.output_format)))
        if context.output_format == "hf" and any(t.spec.dt.quantized for t in out.tensors.values()):
            context.report["note"] = ("a Hugging Face directory holds float tensors: the quantized weights are "
                                      "written dequantized to F32 (write .apr, .safetensors or .gguf to keep them)")
        return out

    def compare(self, source, rows, options, context) -> dict[str, Any]:
        """``--batch``'s extra columns: bits/weight, perplexity change, chart (apr_quant.batch)."""
        from .batch import compare

        return compare(source, rows, options, context)

    def plan(self, inputs, params, context) -> dict[str, Any]:
        """Bits per weight and bytes per tensor group and in total, peak memory; writes nothing."""
        from apr_core.quant.convert import convert

        model = inputs[0]
        targets = self.targets(model)
        self.check_requantize(model, targets, params["allow_requantize"])
        out = convert(model, targets)
        groups: dict[str, dict[str, Any]] = {}
        for name in model.names():
            before, after = model.spec(name), out.spec(name)
            g = groups.setdefault(group_of(name, before.shape), {
                "group": group_of(name, before.shape), "tensors": 0, "params": 0, "dtypes": set(),
                "input_bytes": 0, "output_bytes": 0})
            g["tensors"] += 1
            g["params"] += before.numel
            g["dtypes"].add(after.dtype)
            g["input_bytes"] += before.nbytes
            g["output_bytes"] += after.nbytes
        rows = []
        for g in groups.values():
            g["dtypes"] = ",".join(sorted(g["dtypes"]))
            g["bits_per_weight"] = round(8 * g["output_bytes"] / g["params"], 3) if g["params"] else 0
            rows.append(g)
        from apr_core.quant.codec import CHUNK_ELEMENTS

        largest = max((s.numel for s in (model.spec(n) for n in model.names())), default=0)
        largest_out = max((out.spec(n).nbytes for n in out.names()), default=0)
        # one tensor's float32 copy and its output, plus the codec's per-chunk temporaries; the GGUF
        # writer quantizes one tensor per worker thread and holds up to 2 x workers outputs in
        # flight (apr_core.quant.parallel)
        workers = 1
        if context.output_format == "gguf":
            from apr_core.quant.parallel import worker_count

            workers = min(worker_count(), max(1, len(model.names())))
        per_worker = 4 * largest + 24 * 4 * min(largest, CHUNK_ELEMENTS)
        report = {"technique": f"quantize {self.name}", "input": model.source,
                  **summary(model, out, self.recipe),
                  "peak_memory_bytes": workers * per_worker + (2 * workers if workers > 1 else 1) * largest_out,
                  "groups": rows}
        return report


def _as_written(out, fmt: str | None):
    """``out`` with the tensors the writer of ``fmt`` stores (an HF directory dequantizes blocks)."""
    if fmt != "hf":
        return out
    from apr_core.formats.hfdir import written_tensors

    return out.derive(tensors=written_tensors(out))


def summary(model, out, recipe: Recipe, written=None) -> dict[str, Any]:
    """What the run reports: sizes, compression, bits per weight and dtypes of ``written`` (what
    the writer stores; default ``out``), and the tensors whose recipe type did not fit, by the type
    ``out`` gave them instead."""
    from apr_core.quant.policy import fallbacks

    written = written if written is not None else out
    missed = fallbacks(recipe, [model.spec(n) for n in model.names()], model.text_config())
    return {
        "input_bytes": model.nbytes,
        "output_bytes": written.nbytes,
        "compression": round(model.nbytes / written.nbytes, 3) if written.nbytes else None,
        "bits_per_weight": round(written.bits_per_weight, 3),
        "dtypes": written.dtype_counts(),
        "fallbacks": _count(f"{missed[n]} -> {out.spec(n).dtype}" for n in missed),
    }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))
