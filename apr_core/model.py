"""The model handle that travels through load -> transform -> evaluate -> save.

A `Model` carries everything that must survive every operation: the Hugging
Face config, the tokenizer files (with the chat template), the generation
config and the provenance log, next to *lazy* tensors. A `LazyTensor` knows its
name, dtype and shape without touching data; ``load()`` returns a view into a
memory map or computes the tensor on demand, so writers can stream one tensor
at a time and a transform never has to hold a whole model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .dtypes import DType, by_name
from .names import TOKENIZER_FILES  # noqa: F401  (the allow-list; re-exported for readers)

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a name from apr_core.dtypes (F32, BF16, Q4_K ...)
    shape: tuple[int, ...]

    @property
    def dt(self) -> DType:
        return by_name(self.dtype)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.dt.nbytes(self.shape)


class LazyTensor:
    """A tensor described up front and materialised only by ``load()``.

    For plain dtypes ``load()`` returns a torch tensor of ``spec.shape``; for
    block-quantized dtypes it returns the raw bytes as a 1-D uint8 tensor.
    """

    __slots__ = ("spec", "_load", "_release")

    def __init__(self, spec: TensorSpec, load: Callable[[], "torch.Tensor"],
                 release: Callable[[], None] | None = None):
        self.spec = spec
        self._load = load
        self._release = release

    def load(self) -> "torch.Tensor":
        return self._load()

    def release(self) -> None:
        """Hint that the caller is done with what ``load()`` returned: a memory-mapped tensor
        hands its file pages back to the kernel (a later ``load()`` reads them again), so a
        streaming pass over a model does not keep the whole file resident."""
        if self._release is not None:
            self._release()

    @classmethod
    def of(cls, name: str, tensor: "torch.Tensor") -> "LazyTensor":
        """Wrap an in-memory tensor."""
        from .dtypes import from_torch

        return cls(TensorSpec(name, from_torch(tensor.dtype).name, tuple(tensor.shape)), lambda: tensor)

    def __repr__(self) -> str:
        return f"LazyTensor({self.spec.name}, {self.spec.dtype}, {list(self.spec.shape)})"




@dataclass
class Model:
    """Config, tokenizer, generation config and provenance, plus lazy tensors.

    :ivar tensors: name -> `LazyTensor`, Hugging Face parameter names.
    :ivar config: the Hugging Face ``config.json`` as a dict.
    :ivar tokenizer: tokenizer file name -> raw bytes (``tokenizer.json``,
        ``tokenizer_config.json``, ``chat_template.jinja`` ...).
    :ivar generation_config: ``generation_config.json`` as a dict, if any.
    :ivar provenance: one record per operation applied, oldest first.
    :ivar source: where this handle was loaded from (for messages and hashes).
    :ivar attachments: technique-specific payloads that travel with the model and that the
        writers of some formats understand (a LoRA adapter for the ``peft`` format); never
        written into model files themselves.
    """

    tensors: dict[str, LazyTensor]
    config: dict[str, Any]
    tokenizer: dict[str, bytes] = field(default_factory=dict)
    generation_config: dict[str, Any] | None = None
    provenance: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None
    files: tuple[str, ...] = ()  # files whose bytes define this model (for input hashes)
    sha256: str | None = None  # set by readers that already hashed the file
    keepalive: Any = None  # memory maps the lazy tensors point into
    attachments: dict[str, Any] = field(default_factory=dict)

    # -- tensors --------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.tensors)

    def spec(self, name: str) -> TensorSpec:
        return self.tensors[name].spec

    def tensor(self, name: str) -> "torch.Tensor":
        return self.tensors[name].load()

    @property
    def param_count(self) -> int:
        return sum(t.spec.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.spec.nbytes for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per parameter (block scales included), 0 for an empty model."""
        params = self.param_count
        return 8 * self.nbytes / params if params else 0.0

    def dtype_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.spec.dtype] = out.get(t.spec.dtype, 0) + t.spec.numel
        return dict(sorted(out.items()))

    # -- metadata --------------------------------------------------------------
    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    @property
    def chat_template(self) -> str | None:
        if "chat_template.jinja" in self.tokenizer:
            return self.tokenizer["chat_template.jinja"].decode("utf-8")
        cfg = self.tokenizer_config()
        tpl = cfg.get("chat_template")
        return tpl if isinstance(tpl, str) else None

    def tokenizer_config(self) -> dict[str, Any]:
        raw = self.tokenizer.get("tokenizer_config.json")
        return json.loads(raw) if raw else {}

    def text_config(self) -> dict[str, Any]:
        """The config of the language model (``text_config`` for multimodal wrappers)."""
        return self.config.get("text_config") or self.config

    def derive(self, **changes: Any) -> "Model":
        """A copy with some fields replaced; tensors, config, tokenizer and provenance are copied."""
        base = replace(
            self,
            tensors=dict(self.tensors),
            config=json.loads(json.dumps(self.config)),
            tokenizer=dict(self.tokenizer),
            generation_config=None if self.generation_config is None else dict(self.generation_config),
            provenance=list(self.provenance),
            attachments=dict(self.attachments),
        )
        return replace(base, **changes) if changes else base

    def input_record(self) -> dict[str, Any]:
        """How this model appears as an input in a provenance record: name, size, sha256."""
        return {"source": os.path.basename(self.source or "") or None, "sha256": self.fingerprint()}

    def fingerprint(self) -> str | None:
        if self.sha256 is None and self.files:
            h = hashlib.sha256()
            for path in sorted(self.files):
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 24):
                        h.update(chunk)
            self.sha256 = h.hexdigest()
        return self.sha256

    def with_operation(self, operation: str, technique: str | None, params: dict[str, Any],
                       inputs: list["Model"], result: dict[str, Any] | None = None) -> "Model":
        """Append a provenance record: operation, technique, parameters, input hashes, apr version,
        and what the technique recorded about its result (data hash, steps, final loss ...)."""
        record = {
            "operation": operation,
            "technique": technique,
            "params": _jsonable(params),
            "inputs": [m.input_record() for m in inputs],
            "apr_version": __version__,
        }
        if result:
            record["result"] = _jsonable(result)
        if os.environ.get("SOURCE_DATE_EPOCH"):
            record["time"] = int(os.environ["SOURCE_DATE_EPOCH"])
        out = self.derive()
        out.provenance.append(record)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def plan_summary(technique: Any, inputs: list[Model], params: dict[str, Any]) -> dict[str, Any]:
    """A default --plan: inputs, parameters, output size and a streaming peak-memory estimate.

    The estimate assumes the streaming pattern: one tensor per input plus the
    output tensor in float32 at a time.
    """
    largest = max((t.spec.numel for m in inputs for t in m.tensors.values()), default=0)
    out_bytes = inputs[0].nbytes if inputs else 0
    return {
        "technique": f"{technique.kind} {technique.name}",
        "inputs": [{"source": m.source, "params": m.param_count, "bytes": m.nbytes} for m in inputs],
        "params": _jsonable(params),
        "output_bytes": out_bytes,
        "peak_memory_bytes": largest * 4 * (len(inputs) + 2),
    }
