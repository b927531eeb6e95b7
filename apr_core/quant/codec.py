"""The codec interface: how one quantized dtype turns float rows into bytes and back.

Every block-quantized dtype of apr_core.dtypes has one `Codec`. Blocks run
along the last dimension, so a tensor of shape ``(..., cols)`` is quantized as
``rows = numel // cols`` independent rows, and the bytes of row ``r`` are
``raw.view(rows, row_bytes)[r]`` for every codec without a tensor-wide prefix.
That lets an embedding lookup dequantize only the rows it needs.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from ..dtypes import DType, by_name
from ..errors import AprError

if TYPE_CHECKING:  # pragma: no cover
    import torch


CHUNK_ELEMENTS = 1 << 20  # rows are quantized in chunks of about this many elements (bounds memory)


class Codec:
    """Quantize float tensors into one dtype's bytes and dequantize them back.

    Subclasses set ``dtype`` and implement `encode_rows` / `decode_rows` on
    ``(rows, cols)`` float32 matrices whose ``cols`` is a multiple of the block size.
    """

    dtype: str = ""

    @property
    def dt(self) -> DType:
        return by_name(self.dtype)

    @property
    def block_size(self) -> int:
        return self.dt.block_size

    @property
    def type_size(self) -> int:
        return self.dt.type_size

    def bits_per_weight(self, cols: int = 4096) -> float:
        """Storage bits per element for rows of ``cols`` elements."""
        return 8 * self.dt.nbytes((1, cols)) / cols

    def fits(self, shape: tuple[int, ...]) -> bool:
        """True if rows of this shape can be stored (length a multiple of the block size)."""
        return bool(shape) and int(shape[-1]) % self.block_size == 0

    def row_bytes(self, cols: int) -> int:
        return self.dt.nbytes((1, cols)) - self.dt.prefix_bytes

    # -- public entry points -------------------------------------------------------------
    def quantize(self, w: "torch.Tensor", device: str = "cpu") -> "torch.Tensor":
        """The raw bytes (1-D uint8, on the CPU) of ``w`` stored as this dtype, computed on ``device``."""
        import torch

        if not self.fits(tuple(w.shape)):
            raise AprError(f"{self.dtype} needs rows that are a multiple of {self.block_size}, "
                           f"got shape {list(w.shape)}")
        cols = int(w.shape[-1])
        if device == "cpu":
            from ..runtime.malloc import retain_freed_memory

            retain_freed_memory()  # the chunks' temporaries reuse heap memory (no fresh page faults)
        x = w.detach().to(device, torch.float32).reshape(-1, cols)
        # a tensor-wide prefix (AprQ8's scale) needs every row at once; others go in chunks
        step = x.shape[0] if self.dt.prefix_bytes else max(1, CHUNK_ELEMENTS // max(cols, 1))
        with one_thread(x.device.type == "cpu"):
            parts = [self.encode(x[r:r + step].contiguous()).reshape(-1).cpu()
                     for r in range(0, max(x.shape[0], 1), step)]
        out = torch.cat(parts) if len(parts) != 1 else parts[0]
        assert out.dtype == torch.uint8 and out.numel() == self.dt.nbytes(tuple(w.shape))
        return out

    def encode(self, x: "torch.Tensor") -> "torch.Tensor":
        """`encode_rows` through a kernel where one exists for this dtype and device."""
        return self.encode_rows(x)

    def dequantize(self, raw: "torch.Tensor", shape: tuple[int, ...]) -> "torch.Tensor":
        """Float32 values of shape ``shape`` from raw bytes (on raw's device)."""
        shape = tuple(int(d) for d in shape)
        self._check_raw(raw, shape)
        cols = shape[-1] if shape else 1
        rows = _numel(shape) // cols if cols else 0
        return self.decode_rows(raw.reshape(-1), rows, cols).reshape(shape)

    def dequantize_rows(self, raw: "torch.Tensor", shape: tuple[int, ...], index: "torch.Tensor") -> "torch.Tensor":
        """Float32 rows ``index`` (any shape of row ids) of a 2-D tensor, without the others."""
        rows, cols = int(shape[0]), int(shape[-1])
        self._check_raw(raw, tuple(shape))
        picked = raw.reshape(rows, self.row_bytes(cols))[index.reshape(-1)]
        return self.decode_rows(picked.reshape(-1), picked.shape[0], cols).reshape(*index.shape, cols)

    def _check_raw(self, raw, shape) -> None:
        import torch

        if raw.dtype != torch.uint8 or raw.numel() != self.dt.nbytes(shape):
            raise AprError(f"{self.dtype}: {raw.numel()} bytes do not hold a tensor of shape {list(shape)}")

    # -- per-codec ----------------------------------------------------------------------
    def encode_rows(self, x: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def decode_rows(self, raw: "torch.Tensor", rows: int, cols: int) -> "torch.Tensor":
        raise NotImplementedError


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


_THREAD_STATE = threading.local()  # per Python thread: [depth inside one_thread, count to restore]


@contextlib.contextmanager
def one_thread(active: bool = True):
    """Quantize on one thread: the k-quant search runs thousands of ~100k-element ops, and with
    intra-op threads each pays a hand-off that dominated (up to 100x) on a busy machine.

    With OpenMP, torch's intra-op thread count belongs to the calling thread (a new thread starts
    from the count last set anywhere), and the tensor-parallel writer (`apr_core.quant.parallel`)
    runs codecs on several Python threads at once. So each thread keeps its own depth: its
    outermost one_thread saves that thread's count and sets 1, and restores it on the way out;
    nested and concurrent callers never restore each other's setting."""
    import torch

    if not active:
        yield
        return
    state = getattr(_THREAD_STATE, "value", None)
    if state is None:
        state = _THREAD_STATE.value = [0, 0]
    if state[0] == 0:
        state[1] = torch.get_num_threads()
        torch.set_num_threads(1)
    state[0] += 1
    try:
        yield
    finally:
        state[0] -= 1
        if state[0] == 0:
            torch.set_num_threads(state[1])


# -- helpers shared by the codecs --------------------------------------------------------

def round_half_away(x: "torch.Tensor") -> "torch.Tensor":
    """C's roundf: halves round away from zero (torch.round rounds them to even).

    Exact for every float: ``floor(|x| + 0.5)`` is not (0.49999997 + 0.5 rounds up to 1.0 in
    float32), which made rare blocks differ from llama.cpp and gguf-py. ``x - trunc(x)`` is exact.
    """
    import torch

    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5).to(x.dtype)


def round_half_away_int(x: "torch.Tensor") -> "torch.Tensor":
    """`round_half_away` of ``x`` as int32, for ``|x| < 2**30``; ``x`` is overwritten.

    roundf(v) = trunc(2v) - trunc(v): with v = n + f (n = trunc(v), |f| < 1 of v's sign),
    2v = 2n + 2f exactly, so trunc(2v) = 2n + trunc(2f) and the difference is
    n + sign(v)·[|f| >= 0.5]. Doubling is exact and the float-to-int32 conversion truncates,
    so the result equals `round_half_away` exactly, in a few passes that allocate little
    (torch's float ``trunc`` is not vectorised on the CPU and was most of Q8_0's time). NaN
    and infinities (a block whose scale underflowed) give code 0, as converting
    `round_half_away`'s NaN or infinity to int8 does. The quantizers call it on
    ``x / scale``, bounded by the largest code.
    """
    import torch

    whole = x.to(torch.int32)
    doubled = x.mul_(2).to(torch.int32)
    return doubled.sub_(whole)


def nearest_int(x: "torch.Tensor") -> "torch.Tensor":
    """llama.cpp's nearest_int: round to nearest, halves to even (the 1.5*2^23 trick), as int32."""
    import torch

    return torch.round(x).to(torch.int32)


def f16_bytes(x: "torch.Tensor") -> "torch.Tensor":
    """float32 (n,) -> f16 little-endian bytes (n, 2)."""
    import torch

    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def f32_bytes(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    return x.to(torch.float32).contiguous().view(torch.uint8).reshape(-1, 4)


def read_f16(raw: "torch.Tensor") -> "torch.Tensor":
    """(n, 2) uint8 -> float32 (n,)."""
    import torch

    return raw.contiguous().view(torch.float16).reshape(-1).to(torch.float32)


def read_f32(raw: "torch.Tensor") -> "torch.Tensor":
    import torch

    return raw.contiguous().view(torch.float32).reshape(-1)
