"""Tensor element types, with their GGML numbering, block geometry and torch equivalents.

.apr and GGUF both number types after GGML. They disagree in one place: GGML's
Q8_0 is id 8, which .apr (v1) used for AprQ4. We store Q8_0 in .apr under id 131
(see docs/format.md) and read legacy ids 8 and 9 as AprQ4 and AprQ8.

This module must not import torch at import time (the CLI's `--help` path uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CorruptFileError


MAX_ELEMENTS = 1 << 62


@dataclass(frozen=True)
class DType:
    name: str  # GGML-style name: F32, F16, BF16, Q4_K ...
    apr_id: int  # id in a .apr tensor index
    gguf_id: int | None  # id in a GGUF file, None if GGUF has no such type
    block_size: int  # elements per block (1 for plain types)
    type_size: int  # bytes per block
    torch_name: str | None  # attribute of torch for plain types, None for block-quantized
    prefix_bytes: int = 0  # bytes before the elements (AprQ8's tensor-wide f32 scale)
    row_prefix_bytes: int = 0  # bytes per row before the elements (per-channel int8's f32 scales)

    @property
    def quantized(self) -> bool:
        return self.torch_name is None

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes needed for a tensor of `shape`; blocks run along the last dimension.

        A shape torch could not hold (a dimension, or the product of the non-zero ones,
        of 2**62 or more, even next to a zero) is a `CorruptFileError`."""
        n = 1
        extent = 1
        for d in shape:
            n *= int(d)
            extent *= max(int(d), 1)
        if extent >= MAX_ELEMENTS or any(int(d) < 0 for d in shape):
            raise CorruptFileError(f"shape {list(shape)} is too large or negative")
        if self.block_size == 1:
            rows = n // int(shape[-1]) if shape and int(shape[-1]) else (1 if not shape else 0)
            return self.prefix_bytes + rows * self.row_prefix_bytes + n * self.type_size
        row = int(shape[-1]) if shape else 1
        if row % self.block_size:
            raise CorruptFileError(
                f"{self.name} needs rows that are a multiple of {self.block_size}, got {row}"
            )
        return n // self.block_size * self.type_size

    def torch_dtype(self):
        import torch

        if self.torch_name is None:
            return torch.uint8  # raw blocks
        return getattr(torch, self.torch_name)


_ALL = [
    DType("F32", 0, 0, 1, 4, "float32"),
    DType("F16", 1, 1, 1, 2, "float16"),
    DType("F64", 3, 28, 1, 8, "float64"),
    DType("I32", 4, 26, 1, 4, "int32"),
    DType("I64", 5, 27, 1, 8, "int64"),
    DType("I8", 6, 24, 1, 1, "int8"),
    DType("U8", 7, None, 1, 1, "uint8"),
    DType("BOOL", 132, None, 1, 1, "bool"),
    DType("Q4_K", 12, 12, 256, 144, None),
    DType("Q6_K", 14, 14, 256, 210, None),
    DType("BF16", 30, 30, 1, 2, "bfloat16"),
    DType("APR_Q4", 128, None, 32, 18, None),
    DType("APR_Q8", 129, None, 1, 1, None, prefix_bytes=4),  # f32 scale, then int8 values
    DType("Q8_0", 131, 8, 32, 34, None),
    # added by apr quantize (see docs/format.md and docs/quantize.md)
    DType("Q4_0", 2, 2, 32, 18, None),
    DType("Q5_0", 134, 6, 32, 22, None),  # GGML id 6 is I8 in .apr
    DType("APR_Q8_ROW", 133, None, 1, 1, None, row_prefix_bytes=4),  # per-row f32 scales, then int8
    DType("NF4", 135, None, 64, 36, None),  # per block: f32 absmax + 32 bytes (bitsandbytes nibble order)
    # llama.cpp's k-quant mixtures and their fallbacks (docs/quantize.md)
    DType("Q3_K", 11, 11, 256, 110, None),
    DType("Q5_K", 13, 13, 256, 176, None),
    DType("Q5_1", 136, 7, 32, 24, None),  # GGML id 7 is U8 in .apr
    DType("IQ4_NL", 20, 20, 32, 18, None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
BY_APR_ID: dict[int, DType] = {d.apr_id: d for d in _ALL}
BY_APR_ID[8] = BY_NAME["APR_Q4"]  # legacy ids of the Rust tool's v1 files
BY_APR_ID[9] = BY_NAME["APR_Q8"]
BY_GGUF_ID: dict[int, DType] = {d.gguf_id: d for d in _ALL if d.gguf_id is not None}

_TORCH_TO_NAME = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
    "torch.int32": "I32",
    "torch.int64": "I64",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}

# safetensors dtype strings
SAFETENSORS_NAMES = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64", "I32": "I32",
    "I64": "I64", "I8": "I8", "U8": "U8", "BOOL": "BOOL",
}


def by_name(name: str) -> DType:
    try:
        return BY_NAME[name.upper()]
    except KeyError:
        raise CorruptFileError(f"unknown dtype {name!r}") from None


def from_torch(dtype) -> DType:
    try:
        return BY_NAME[_TORCH_TO_NAME[str(dtype)]]
    except KeyError:
        raise CorruptFileError(f"tensors of type {dtype} cannot be stored") from None
