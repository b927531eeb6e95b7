"""Line up the tensors of the models being merged, refusing what cannot be merged.

Every output tensor is named after the *reference* model (the base model for
task-vector strategies, else the first input) and gets one source tensor per
input. Checked up front, from tensor specs only, so a refusal comes before
anything is read or written:

- same architecture, same tensor names and shapes, no block-quantized tensors;
- embedding and LM-head rows may differ (vocabularies of different size, e.g.
  151936 vs 152064 in the Qwen family): the rows all models share are merged
  and the reference's extra rows are kept as they are;
- tied vs untied embeddings: a tied model's LM head *is* its embedding, so it
  is used as the LM head source; an untied model's LM head is left out when the
  reference ties (the output follows the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

from apr_core.errors import AprError
from apr_core.model import LazyTensor, Model, TensorSpec

LM_HEAD = "lm_head.weight"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass
class TensorPlan:
    """One output tensor: its spec (the reference's), the reference tensor, one source per input,
    and how many leading elements (whole rows) every model shares and are merged."""

    spec: TensorSpec
    reference: LazyTensor
    sources: list[LazyTensor]
    shared: int

    @property
    def name(self) -> str:
        return self.spec.name


def label(model: Model, index: int | None = None) -> str:
    name = model.source or "model"
    return name if index is None else f"input {index + 1} ({name})"


def _embedding_name(model: Model) -> str | None:
    found = [n for n in model.names() if n.endswith("embed_tokens.weight")]
    return found[0] if found else None


def _is_vocab_tensor(name: str) -> bool:
    return name == LM_HEAD or name.endswith("embed_tokens.weight")


def _source(model: Model, name: str, who: str, notes: list[str]) -> LazyTensor:
    if name in model.tensors:
        return model.tensors[name]
    embed = _embedding_name(model)
    if name == LM_HEAD and embed is not None:
        notes.append(f"{who} ties its embeddings: its {embed} serves as {LM_HEAD}")
        return model.tensors[embed]
    raise AprError(f"{who} has no tensor {name}: the models differ in architecture or layer count "
                   f"and cannot be merged")


def align(reference: Model, models: list[Model], ref_label: str) -> tuple[list[TensorPlan], list[str]]:
    """Per-tensor merge plans and notes for the report; raises AprError on anything unmergeable."""
    notes: list[str] = []
    whos = [label(m, i) for i, m in enumerate(models)]
    for m, who in zip(models, whos):
        if m.architecture != reference.architecture:
            raise AprError(f"cannot merge {who}, a {m.architecture}, into the {reference.architecture} of "
                           f"{ref_label}: different architectures")
    for m, who in zip([reference, *models], [ref_label, *whos]):
        quantized = [n for n in m.names() if m.spec(n).dt.quantized]
        if quantized:
            raise AprError(f"{who} stores {quantized[0]} block-quantized ({m.spec(quantized[0]).dtype}); "
                           f"merge unquantized models (re-import without --preserve-quant)")
    for m, who in zip(models, whos):
        if m.tokenizer.get("tokenizer.json") != reference.tokenizer.get("tokenizer.json"):
            notes.append(f"the tokenizer of {who} differs from that of {ref_label}; the output keeps "
                         f"{ref_label}'s (rows are merged by token id)")
    ref_names = set(reference.tensors)
    for m, who in zip(models, whos):
        extra = sorted(set(m.tensors) - ref_names)
        if extra == [LM_HEAD] and _embedding_name(reference):
            notes.append(f"{ref_label} ties its embeddings, so the output does too; the untied {LM_HEAD} "
                         f"of {who} is not used")
        elif extra:
            raise AprError(f"{who} has tensor {extra[0]} that {ref_label} lacks: the models differ in "
                           f"architecture and cannot be merged")
    plans = []
    for name in reference.names():
        spec = reference.spec(name)
        sources = [_source(m, name, who, notes) for m, who in zip(models, whos)]
        if spec.dtype not in FLOAT_DTYPES:
            plans.append(TensorPlan(spec, reference.tensors[name], sources, 0))
            continue
        rows = spec.shape[0] if spec.shape else 1
        for src, who in zip(sources, whos):
            shape = src.spec.shape
            if shape == spec.shape:
                continue
            if _is_vocab_tensor(name) and len(shape) == len(spec.shape) >= 2 and shape[1:] == spec.shape[1:]:
                rows = min(rows, shape[0])
                continue
            raise AprError(f"shape of {name} differs: {list(spec.shape)} in {ref_label} vs {list(shape)} in "
                           f"{who}; models of different sizes cannot be merged")
        if spec.shape and rows < spec.shape[0]:
            notes.append(f"{name}: vocabularies differ; merged the {rows} rows all models share and kept "
                         f"the other {spec.shape[0] - rows} rows of {ref_label} unchanged")
        elif spec.shape and any(s.spec.shape[0] > spec.shape[0] for s in sources):
            notes.append(f"{name}: vocabularies differ; the output keeps the {spec.shape[0]} rows of "
                         f"{ref_label} and drops the extra rows of larger inputs")
        per_row = spec.numel // spec.shape[0] if spec.shape and spec.shape[0] else spec.numel
        plans.append(TensorPlan(spec, reference.tensors[name], sources, rows * per_row if spec.shape else spec.numel))
    return plans, list(dict.fromkeys(notes))
