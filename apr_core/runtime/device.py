"""Which device and compute precision a run uses: ``--device`` / ``APR_DEVICE`` and ``--dtype``.

``auto`` means CUDA when torch sees a GPU, else the CPU; ``cuda`` and ``cuda:N`` are refused
with one line on a machine without one (never a silent CPU run). The compute dtype ``auto``
is bfloat16 on GPUs that support it and float32 elsewhere. Resolving ``cpu`` does not import
torch, so commands stay fast to start.
"""

from __future__ import annotations

import os
import re

from ..errors import AprError
from .startup import import_torch

ENV = "APR_DEVICE"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "f32": "float32",
          "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "f16": "float16", "half": "float16"}


def requested_device(spec: str | None = None) -> str:
    """The device the user asked for (option, else ``APR_DEVICE``, else ``auto``), validated."""
    raw = spec if spec is not None else os.environ.get(ENV) or "auto"
    value = raw.strip().lower()
    if not _DEVICE.fullmatch(value):
        source = "--device" if spec is not None else ENV
        raise AprError(f"{source} {raw!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def resolve_device(spec: str | None = None) -> str:
    """A torch device string (``cpu`` or ``cuda:N``) for ``spec``; CUDA requests need a GPU."""
    value = requested_device(spec)
    if value == "cpu":
        return "cpu"
    torch = import_torch()

    if value == "auto":
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible GPU"
        raise AprError(f"--device {value}: CUDA is not available here ({build}); use --device cpu or auto")
    index = int(value.partition(":")[2] or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise AprError(f"--device {value}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return f"cuda:{index}"


def canonical_dtype(name: str) -> str:
    """``bf16`` -> ``bfloat16`` ...; one line naming the choices for anything else."""
    value = DTYPES.get(str(name).strip().lower())
    if value is None:
        raise AprError(f"--dtype {name!r} is not one of auto, float32, bfloat16, float16")
    return value


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in
    /proc/cpuinfo); False where that cannot be read."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _NATIVE_BF16 = bool({"avx512_bf16", "amx_bf16"} & set(flags))
    return _NATIVE_BF16


_NATIVE_BF16: bool | None = None


def stored_float_dtype(model) -> str | None:
    """The floating type most of ``model``'s parameters are stored in (``BF16``, ``F16``, ``F32``),
    None for a model stored mostly in quantized blocks."""
    counts = {k: v for k, v in model.dtype_counts().items() if k in ("BF16", "F16", "F32")}
    if not counts or sum(counts.values()) * 2 < model.param_count:
        return None
    return max(counts, key=counts.get)


def resolve_dtype(name: str, device: str, model=None) -> str:
    """The torch dtype name to compute in on ``device``: ``auto`` is bfloat16 on a GPU that
    supports it; on a CPU it is bfloat16 for a model stored in bfloat16 when the CPU has native
    bf16 arithmetic (upcasting would double the memory and halve the speed; docs/performance.md
    has the measurement), and float32 otherwise (fp32-stored weights are never rounded unasked).
    Explicit names are honoured."""
    value = canonical_dtype(name)
    if value != "auto":
        return value
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if model is not None and stored_float_dtype(model) == "BF16" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def torch_dtype(name: str):
    import torch

    return getattr(torch, canonical_dtype(name) if name != "auto" else "float32")
