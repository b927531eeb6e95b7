"""The .apr-native integer layouts: AprQ8 (tensor-wide scale), per-row int8, AprQ4 (32-blocks).

AprQ8 and AprQ4 follow docs/APR-FORMAT: AprQ8 is one f32 scale (absmax/127)
then int8 values; AprQ4 blocks hold an f16 scale (absmax/7) and 16 bytes of
nibbles stored ``q + 8``. We put element ``j`` of a block in the low nibble of
byte ``j`` and element ``j + 16`` in its high nibble, GGML's Q4_0 order, so an
AprQ4 block is also a valid GGUF Q4_0 block with the same values (the GGUF
export copies it). Rounding is half away from zero, as Rust's ``f32::round``.
The per-row variant (``APR_Q8_ROW``) stores each row as its f32 scale
(row absmax/127) followed by the row's int8 values.
"""

from __future__ import annotations

from .codec import Codec, f16_bytes, f32_bytes, read_f16, read_f32, round_half_away_int


def _int8_codes(x, scale):
    """round(x / scale) clamped to [-127, 127]; zero where the scale is zero."""
    import torch

    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = round_half_away_int(x / safe).clamp_(-127, 127)
    return torch.where(scale == 0, torch.zeros_like(q), q).to(torch.int8)


class AprQ8(Codec):
    dtype = "APR_Q8"

    def encode_rows(self, x):
        import torch

        scale = (x.abs().max() if x.numel() else torch.tensor(0.0)) / 127
        q = _int8_codes(x, scale)
        return torch.cat([f32_bytes(scale.reshape(1)).reshape(-1), q.reshape(-1).view(torch.uint8)])

    def decode_rows(self, raw, rows, cols):
        import torch

        scale = read_f32(raw[:4])
        return raw[4:].view(torch.int8).reshape(rows, cols).to(torch.float32) * scale

    def row_bytes(self, cols):
        return cols

    def dequantize_rows(self, raw, shape, index):
        import torch

        self._check_raw(raw, tuple(shape))
        rows, cols = int(shape[0]), int(shape[-1])
        picked = raw[4:].view(torch.int8).reshape(rows, cols)[index.reshape(-1)]
        return (picked.to(torch.float32) * read_f32(raw[:4])).reshape(*index.shape, cols)


class AprQ8Row(Codec):
    dtype = "APR_Q8_ROW"

    def encode_rows(self, x):
        import torch

        scale = x.abs().amax(dim=1, keepdim=True) / 127
        q = _int8_codes(x, scale).view(torch.uint8)
        return torch.cat([f32_bytes(scale).reshape(-1, 4), q], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        r = raw.reshape(rows, 4 + cols)
        scale = read_f32(r[:, :4]).reshape(rows, 1)
        return r[:, 4:].contiguous().view(torch.int8).to(torch.float32) * scale


def pack_low_high(q):
    """(blocks, 32) codes 0..15 -> (blocks, 16) bytes: element j low nibble, j + 16 high nibble."""
    import torch

    q = q.to(torch.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def unpack_low_high(qs):
    """(blocks, 16) bytes -> (blocks, 32) codes 0..15 (inverse of `pack_low_high`)."""
    import torch

    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


class AprQ4(Codec):
    dtype = "APR_Q4"

    def encode_rows(self, x):
        import torch

        blocks = x.reshape(-1, 32)
        scale = (blocks.abs().amax(dim=1) / 7).to(torch.float16).to(torch.float32)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = round_half_away_int(blocks / safe[:, None]).clamp_(-8, 7)
        q = q.masked_fill_(scale[:, None] == 0, 0).add_(8)  # in place: no more block-sized temporaries
        return torch.cat([f16_bytes(scale), pack_low_high(q)], dim=1)

    def encode(self, x):
        from ..kernels.quant import int4_quantize  # the Triton kernel for CUDA tensors

        return int4_quantize(x)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 18)
        d = read_f16(b[:, :2])[:, None]
        q = unpack_low_high(b[:, 2:]).to(torch.float32) - 8
        return (d * q).reshape(rows, cols)
