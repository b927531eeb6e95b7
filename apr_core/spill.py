"""Temporary on-disk storage for tensors a transform computes before the writer streams them.

Layer-by-layer techniques (calibrated pruning, quantization) produce one
decoder layer's weights at a time. Holding them all in RAM would make peak
memory a whole model; instead each batch is written to a safetensors file in
a private temporary directory and handed back as memory-mapped `LazyTensor`s.
The directory lives as long as the `TensorSpill` object (keep it in
``Model.keepalive``) and is removed when it is garbage collected; one a killed
run left behind (``apr-spill-apr<pid>-<host>-*`` of a process that is gone) is
removed by the next spill.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .atomic import owner_tag, remove_stale
from .model import LazyTensor


class TensorSpill:
    def __init__(self, prefix: str = "apr-spill-") -> None:
        remove_stale(tempfile.gettempdir(), prefix, suffixes=("",))
        self._dir = tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}-")
        self._maps: list = []
        self._count = 0

    @property
    def path(self) -> Path:
        return Path(self._dir.name)

    def put(self, tensors: dict) -> dict[str, LazyTensor]:
        """Write ``{name: torch.Tensor}`` to disk now; return lazy views of the written tensors."""
        from .formats.safetensors import read_safetensors, write_safetensors

        file = self.path / f"part{self._count:05d}.safetensors"
        self._count += 1
        write_safetensors({n: LazyTensor.of(n, t.detach().contiguous()) for n, t in tensors.items()}, file)
        lazy, _meta, mm = read_safetensors(file)
        self._maps.append(mm)
        return lazy
