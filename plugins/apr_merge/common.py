"""What every merge strategy shares: parameters, input checks, and the streaming engine.

A strategy implements ``combine`` (and optionally ``prepare``) on float32
chunks. `MergeTechnique.transform` only checks and plans (tensor specs, no
data); the returned model's tensors are lazy, and each ``load()`` reads that
one tensor from every input's memory map, merges it chunk by chunk
(``CHUNK`` elements, in float32, on the run's device: a CUDA run moves one
chunk per input to the GPU, where the Triton kernels run) into a tensor of the
reference's dtype and returns it. The writer asks for one tensor at a time, so peak memory is about
one output tensor plus a few float32 chunks, whatever the model size.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from apr_core.errors import AprError
from apr_core.model import LazyTensor, Model, _jsonable
from apr_core.params import Param, Search
from apr_core.technique import RunContext, TransformTechnique

from .align import TensorPlan, align, label

CHUNK = 1 << 22  # elements per float32 working chunk (16 MiB)

BASE_MODEL = Param("base_model", "path", None,
                   "The model the inputs were fine-tuned from; task vectors are input - base", required=True)


def weights_param(help_text: str, required: bool = False, default: tuple | None = None) -> Param:
    return Param("weights", "floats", default, help_text, min=0, required=required,
                 search=Search(0.0, 1.0))


class MergeTechnique(TransformTechnique):
    """Base of the merge strategies: input checks, plans, lazy streaming output."""

    kind = "merge"
    min_inputs = 2
    #: True for the task-vector family: the base model is the reference and is read per tensor
    uses_base = False

    # -- hooks for strategies ---------------------------------------------------
    def prepare(self, plan: TensorPlan, views: list, base, params: dict[str, Any], context: RunContext) -> Any:
        """Whole-tensor statistics before combining (flat views over the shared elements)."""
        return None

    def combine(self, chunks: list, base, state: Any, start: int, plan: TensorPlan,
                params: dict[str, Any], context: RunContext):
        """Merged float32 values for elements ``start .. start+len`` of one tensor."""
        raise NotImplementedError

    def check_inputs(self, inputs: list[Model], params: dict[str, Any]) -> None:
        """Checks that need the number of inputs (weights count ...)."""
        weights = params.get("weights")
        if weights is not None:
            if len(weights) != len(inputs):
                raise AprError(f"--weights has {len(weights)} values for {len(inputs)} models; give one per model")
            if sum(weights) <= 0:
                raise AprError("--weights must not all be zero")

    # -- machinery ----------------------------------------------------------------
    def _setup(self, inputs: list[Model], params: dict[str, Any], verify: bool):
        self.check_inputs(inputs, params)
        if self.uses_base:
            from apr_core import pipeline

            base = pipeline.load(params["base_model"], verify=verify)
            reference, ref_label = base, f"base model ({base.source})"
        else:
            base, reference, ref_label = None, inputs[0], label(inputs[0], 0)
        plans, notes = align(reference, inputs, ref_label)
        return base, reference, plans, notes

    def transform(self, inputs, params, context):
        base, reference, plans, notes = self._setup(inputs, params, verify=True)
        if base is not None:
            context.extra_inputs.append(base)
        out = reference.derive()
        for plan in plans:
            out.tensors[plan.name] = LazyTensor(plan.spec, functools.partial(self._produce, plan, params, context))
        out.keepalive = (reference.keepalive, [m.keepalive for m in inputs])
        context.report.update(self.report_lines(inputs, base, plans, notes, params))
        return out

    def report_lines(self, inputs, base, plans, notes, params) -> dict[str, Any]:
        """What the user should see about the run (printed by the CLI, in --json and --plan)."""
        merged = sum(1 for p in plans if p.shared)
        report: dict[str, Any] = {"merged_tensors": f"{merged} of {len(plans)}",
                                  "output_config_from": base.source if base is not None else inputs[0].source}
        if notes:
            report["notes"] = notes
        return report

    def _produce(self, plan: TensorPlan, params: dict[str, Any], context: RunContext):
        import torch

        from apr_core.runtime.malloc import CHUNK_MMAP_BYTES, CHUNK_TRIM_BYTES, retain_freed_memory

        retain_freed_memory(CHUNK_MMAP_BYTES, CHUNK_TRIM_BYTES)  # the chunk buffers are reused, not re-faulted

        ref = plan.reference.load()
        if plan.shared == 0:
            return ref
        compute = torch.float64 if plan.spec.dtype == "F64" else torch.float32
        out = torch.empty(plan.spec.shape, dtype=ref.dtype)
        flat_out, flat_ref = out.reshape(-1), ref.reshape(-1)
        views = [(ref if src is plan.reference else src.load()).reshape(-1)[:plan.shared] for src in plan.sources]
        base = flat_ref[:plan.shared] if self.uses_base else None
        state = self.prepare(plan, views, base, params, context)
        device = context.device
        for start in range(0, plan.shared, CHUNK):
            end = min(plan.shared, start + CHUNK)
            chunks = [v[start:end].to(device=device, dtype=compute) for v in views]
            b = base[start:end].to(device=device, dtype=compute) if base is not None else None
            merged = self.combine(chunks, b, state, start, plan, params, context)
            flat_out[start:end] = merged.to(device="cpu", dtype=out.dtype)
        flat_out[plan.shared:] = flat_ref[plan.shared:]
        return out

    def plan(self, inputs, params, context):
        base, reference, plans, notes = self._setup(inputs, params, verify=False)
        k = len(inputs)
        peak = 0
        for p in plans:
            work = min(p.shared, CHUNK) * 4 * (2 * k + 4)
            peak = max(peak, p.spec.nbytes + work)
        rows = [{"role": f"input {i + 1}", "source": m.source, "params": m.param_count, "bytes": m.nbytes}
                for i, m in enumerate(inputs)]
        if base is not None:
            rows.append({"role": "base", "source": base.source, "params": base.param_count, "bytes": base.nbytes})
        report = {
            "technique": f"merge {self.name}",
            "paper": self.paper,
            "params": _jsonable(params),
            "output_bytes": reference.nbytes,
            "output_tensors": len(plans),
            "peak_memory_bytes": peak,
            "peak_memory_note": "one output tensor plus float32 working chunks; inputs are memory-mapped "
                                "(page cache, not process memory)",
        }
        report.update(self.report_lines(inputs, base, plans, notes, params))
        report["inputs"] = rows
        return report


def stream_seed(seed: int, name: str, index: int) -> int:
    """A 63-bit Philox key for one input's task vector of one tensor, from the run's --seed.

    Tensors and inputs get independent streams; the same seed gives the same key on every
    machine (sha256, not Python's salted hash).
    """
    digest = hashlib.sha256(f"{seed}\0{name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def normalized(weights, n: int) -> list[float]:
    """``weights`` (or equal weights) scaled to sum to 1."""
    w = list(weights) if weights is not None else [1.0] * n
    total = sum(w)
    return [x / total for x in w]
