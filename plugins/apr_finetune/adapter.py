"""LoRA adapters in peft's directory layout: read, write, and merge into a base model.

A peft LoRA adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors``
whose keys are ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``. For each target
linear ``<module>`` the merged weight is ``W + s * B @ A`` with s = lora_alpha / r (or
lora_alpha / sqrt(r) with rsLoRA; per-module ``rank_pattern`` / ``alpha_pattern`` honoured).
Merging is lazy: each merged tensor is computed in float32 when the writer asks for it and stored
in the base tensor's dtype, so an adapter merges into a 7B model a tensor at a time.

An adapter trained by apr's ``qlora`` was trained against NF4-quantized base weights (every linear
of the decoder layers); apr records that in ``apr_training.json`` and merges it into the
dequantized NF4 weights, all of them, so the merged model computes what base + adapter computed
in training, in full precision: it is never re-quantized silently. Adapters trained elsewhere are
merged into the base as it is. Features apr cannot merge exactly (DoRA, trained biases,
``modules_to_save``, embedding or convolution LoRA) are refused with one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apr_core.errors import AprError
from apr_core.model import LazyTensor, Model, TensorSpec

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
TRAINING = "apr_training.json"
FILES = (CONFIG, WEIGHTS, TRAINING, "README.md", "train_log.json", "loss.png")
PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(?P<module>[A-Za-z0-9_.]+)\.lora_(?P<part>[AB])\.weight")
_UNSUPPORTED = {"use_dora": "DoRA", "modules_to_save": "modules_to_save", "layer_replication": "layer replication",
                "trainable_token_indices": "trainable tokens"}


@dataclass
class LoraAdapter:
    """A LoRA adapter: its peft config and, per target module, the A and B matrices (lazy)."""

    config: dict[str, Any]
    pairs: dict[str, tuple[LazyTensor, LazyTensor]]  # module path -> (A [r, in], B [out, r])
    training: dict[str, Any] = field(default_factory=dict)  # apr_training.json (provenance, NF4 base)
    files: dict[str, bytes] = field(default_factory=dict)  # log and chart to write beside it
    keepalive: Any = None  # the memory map the lazy matrices point into

    def scale(self, module: str) -> float:
        r = int(self.config.get("rank_pattern", {}).get(_pattern_key(self.config, "rank_pattern", module),
                                                         self.config["r"]))
        alpha = float(self.config.get("alpha_pattern", {}).get(_pattern_key(self.config, "alpha_pattern", module),
                                                                self.config["lora_alpha"]))
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    @property
    def nf4_base(self) -> dict[str, Any] | None:
        return self.training.get("base_quantization")

    def tensors(self) -> dict[str, LazyTensor]:
        """peft's key -> tensor, as adapter_model.safetensors stores them."""
        out = {}
        for module, (a, b) in sorted(self.pairs.items()):
            out[f"{PREFIX}{module}.lora_A.weight"] = a
            out[f"{PREFIX}{module}.lora_B.weight"] = b
        return out


def _pattern_key(config: dict, pattern: str, module: str) -> str:
    """The key of peft's rank/alpha pattern that matches ``module`` (longest suffix match)."""
    keys = [k for k in config.get(pattern) or {} if module == k or module.endswith("." + k)]
    return max(keys, key=len) if keys else ""


def _checked_config(config: Any, where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise AprError(f"{where}: not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AprError(f"{where}: a {config.get('peft_type')} adapter; apr merges LoRA adapters")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise AprError(f"{where}: {what} adapters cannot be merged by apr")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AprError(f"{where}: adapters with trained biases cannot be merged by apr")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise AprError(f"{where}: {key} must be a positive number")
    return config


def read_adapter(directory: str | Path) -> LoraAdapter:
    """Open a peft LoRA adapter directory (lazily; tensors are memory-mapped)."""
    from apr_core.formats.safetensors import read_safetensors

    d = Path(directory)
    if not d.is_dir():
        raise AprError(f"--adapter {directory}: not a directory (expected a peft adapter directory)")
    if not (d / CONFIG).is_file():
        raise AprError(f"--adapter {directory}: no {CONFIG}; is this a peft adapter directory?")
    if not (d / WEIGHTS).is_file():
        raise AprError(f"--adapter {directory}: no {WEIGHTS} (pickled adapter_model.bin files are not read; "
                       f"re-save the adapter with safetensors)")
    try:
        config = _checked_config(json.loads((d / CONFIG).read_text(encoding="utf-8")), str(d / CONFIG))
        training = json.loads((d / TRAINING).read_text(encoding="utf-8")) if (d / TRAINING).is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AprError(f"--adapter {directory}: {CONFIG} or {TRAINING} is not valid UTF-8 JSON") from None
    if not isinstance(training, dict):
        raise AprError(f"--adapter {directory}: {TRAINING} is not a JSON object")
    tensors, _meta, mm = read_safetensors(d / WEIGHTS)
    halves: dict[str, dict[str, LazyTensor]] = {}
    for key, lazy in tensors.items():
        m = _KEY.fullmatch(key.replace(".default.", "."))
        if m is None:
            raise AprError(f"--adapter {directory}: tensor {key!r} is not a LoRA A/B matrix apr can merge")
        halves.setdefault(m.group("module"), {})[m.group("part")] = lazy
    pairs = {}
    for module, parts in halves.items():
        if set(parts) != {"A", "B"}:
            raise AprError(f"--adapter {directory}: module {module} has lora_{''.join(parts)} but not both A and B")
        a, b = parts["A"], parts["B"]
        if len(a.spec.shape) != 2 or len(b.spec.shape) != 2 or a.spec.shape[0] != b.spec.shape[1]:
            raise AprError(f"--adapter {directory}: module {module}: A {list(a.spec.shape)} and B "
                           f"{list(b.spec.shape)} do not form a rank-r update")
        pairs[module] = (a, b)
    if not pairs:
        raise AprError(f"--adapter {directory}: {WEIGHTS} holds no LoRA matrices")
    return LoraAdapter(config, pairs, training, keepalive=mm)


def check_fits(adapter: LoraAdapter, model: Model, where: str) -> None:
    """Every adapted module exists in ``model`` with a weight of shape (B rows, A columns)."""
    for module, (a, b) in sorted(adapter.pairs.items()):
        name = module + ".weight"
        if name not in model.tensors:
            raise AprError(f"{where} does not fit {model.source}: it adapts {module}, which this model lacks "
                           f"(an adapter for another base?)")
        shape = model.spec(name).shape
        if shape != (b.spec.shape[0], a.spec.shape[1]):
            raise AprError(f"{where} does not fit {model.source}: {module} is {list(shape)} here but the adapter "
                           f"expects {[b.spec.shape[0], a.spec.shape[1]]} (an adapter for another base?)")
    expected = adapter.training.get("base_sha256")
    actual = model.fingerprint()
    if expected and actual and expected != actual:
        raise AprError(f"{where} was trained on a base with sha256 {expected[:12]}..., not {model.source} "
                       f"({actual[:12]}...)")


def decoder_linears(model: Model) -> list[str]:
    """The 2-D weights inside the decoder layers: the linears QLoRA stores as NF4."""
    from apr_core.runtime.layerwise import layers_prefix

    prefix = layers_prefix(model.config)
    return [n for n in model.names() if n.startswith(prefix) and n.endswith(".weight")
            and len(model.spec(n).shape) == 2]


def merged(model: Model, adapter: LoraAdapter, where: str = "the adapter") -> Model:
    """``model`` with every adapted weight replaced by W + s B A (lazy), the adapter attached;
    for a QLoRA adapter W is the dequantized NF4 weight, for every decoder linear."""
    check_fits(adapter, model, where)
    out = model.derive()
    nf4 = adapter.nf4_base
    names = set(decoder_linears(model)) if nf4 else set()
    names |= {module + ".weight" for module in adapter.pairs}
    for name in sorted(names):
        base = model.tensors[name]
        pair = adapter.pairs.get(name[: -len(".weight")])
        scale = adapter.scale(name[: -len(".weight")]) if pair else 0.0

        def load(base=base, pair=pair, scale=scale):
            import torch

            from apr_core.quant.convert import float_tensor

            w = float_tensor(base)
            if nf4:
                w = nf4_roundtrip(w, nf4)
            if pair is not None:
                a, b = pair
                w = w + scale * (b.load().to(torch.float32) @ a.load().to(torch.float32))
            return w.to(base.spec.dt.torch_dtype() if not base.spec.dt.quantized else torch.float32)

        dtype = base.spec.dtype if not base.spec.dt.quantized else "F32"
        out.tensors[name] = LazyTensor(TensorSpec(name, dtype, base.spec.shape), load)
    out.attachments["lora"] = adapter
    return out


def nf4_roundtrip(w, settings: dict[str, Any]):
    """``w`` quantized to NF4 as QLoRA's base was (bitsandbytes, same block size and double
    quantization) and dequantized to float32: the weights the adapter was trained against."""
    from apr_core.quant.nf4 import bitsandbytes_functional

    F = bitsandbytes_functional()

    device = w.device
    packed, state = F.quantize_4bit(w.contiguous(), blocksize=int(settings.get("blocksize", 64)), quant_type="nf4",
                                    compress_statistics=bool(settings.get("double_quant", True)))
    return F.dequantize_4bit(packed, state).to(device).float().reshape(w.shape)


def write_adapter(adapter: LoraAdapter, directory: str | Path, progress=None) -> str:
    """Write ``adapter`` as a peft adapter directory, atomically (staged, then renamed)."""
    from apr_core.runtime.startup import quiet_bitsandbytes

    with quiet_bitsandbytes():
        from peft import LoraConfig

    from apr_core.atomic import atomic_dir
    from apr_core.formats.safetensors import write_safetensors

    keys = {k for k in LoraConfig().to_dict()}
    config = {k: v for k, v in adapter.config.items() if k in keys}
    with atomic_dir(directory) as stage:
        LoraConfig(**config).save_pretrained(str(stage))
        write_safetensors(adapter.tensors(), stage / WEIGHTS, metadata={"format": "pt"}, progress=progress)
        if adapter.training:
            (stage / TRAINING).write_text(json.dumps(adapter.training, indent=2, sort_keys=True) + "\n")
        for name, data in adapter.files.items():
            if name in FILES:
                (stage / name).write_bytes(data)
    return str(directory)
