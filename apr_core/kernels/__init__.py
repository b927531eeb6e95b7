"""Hot-path kernels: a Triton implementation and an independent torch reference per op.

Dispatch rule: a CUDA tensor with triton importable runs the Triton kernel;
everything else runs the torch reference, except where an op also has a C kernel for
CPUs (`native`: Triton has no CPU backend), which CPU tensors take when the machine can
compile it. ``APR_KERNELS=torch`` forces the reference; ``APR_KERNELS=triton`` forces
Triton (with ``TRITON_INTERPRET=1`` set before triton is imported this runs kernels on
CPU, which is how the tests compare both on machines without a GPU); ``APR_NATIVE=0``
turns the C kernels off.
"""

from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(*tensors) -> bool:
    mode = os.environ.get("APR_KERNELS", "auto").lower()
    if mode == "torch" or not triton_available():
        return False
    if mode == "triton":
        return True
    return all(t.is_cuda for t in tensors)


def use_native(device) -> bool:
    """Whether work on ``device`` may take the C kernels (CPU tensors, unless APR_KERNELS=torch;
    `native.library` then says whether they could be built)."""
    import torch

    return torch.device(device).type == "cpu" and os.environ.get("APR_KERNELS", "auto").lower() != "torch"
