"""GGML's legacy 32-element blocks: Q8_0, Q4_0 and Q5_0, bit-exact with ggml's reference code.

Q8_0 is a scheme of its own; Q4_0 is what AprQ4 becomes in GGUF; Q5_0 is the
type llama.cpp falls back to when a Q4_K tensor's rows are not a multiple of
256 (for example SmolLM2's 576-wide projections). The rounding reproduces
ggml's reference functions: ``roundf(x / d)`` for Q8_0 and
``(int8_t)(x * id + 8.5f)`` truncation for Q4_0/Q5_0, with d = max / -8
(-16) where max is the first element of largest magnitude, sign kept.
"""

from __future__ import annotations

from .apr import pack_low_high, unpack_low_high
from .codec import Codec, f16_bytes, read_f16, round_half_away


def _signed_absmax(blocks):
    """The first element of largest magnitude in each block, with its sign."""
    import torch

    idx = blocks.abs().argmax(dim=1, keepdim=True)
    return torch.gather(blocks, 1, idx).squeeze(1)


def _inverse(d):
    import torch

    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(d), torch.div(torch.ones_like(d), safe))


class Q8_0(Codec):
    dtype = "Q8_0"

    def encode_rows(self, x):
        import torch

        blocks = x.reshape(-1, 32)
        d = blocks.abs().amax(dim=1) / 127
        q = round_half_away(blocks * _inverse(d)[:, None]).to(torch.int8)
        return torch.cat([f16_bytes(d), q.view(torch.uint8)], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 34)
        q = b[:, 2:].contiguous().view(torch.int8).to(torch.float32)
        return (q * read_f16(b[:, :2])[:, None]).reshape(rows, cols)


class Q4_0(Codec):
    dtype = "Q4_0"

    def encode_rows(self, x):
        import torch

        blocks = x.reshape(-1, 32)
        d = _signed_absmax(blocks) / -8
        q = torch.trunc(blocks * _inverse(d)[:, None] + 8.5).clamp_(0, 15)
        return torch.cat([f16_bytes(d), pack_low_high(q)], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 18)
        q = unpack_low_high(b[:, 2:]).to(torch.float32) - 8
        return (read_f16(b[:, :2])[:, None] * q).reshape(rows, cols)


class Q5_0(Codec):
    dtype = "Q5_0"

    def encode_rows(self, x):
        import torch

        blocks = x.reshape(-1, 32)
        d = _signed_absmax(blocks) / -16
        q = torch.trunc(blocks * _inverse(d)[:, None] + 16.5).clamp_(0, 31).to(torch.int64)
        high = (q >> 4) << torch.arange(32)
        qh = high.sum(dim=1)  # bit j = fifth bit of element j
        qh_bytes = torch.stack([(qh >> (8 * i)) & 0xFF for i in range(4)], dim=1).to(torch.uint8)
        return torch.cat([f16_bytes(d), qh_bytes, pack_low_high(q & 0x0F)], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 22)
        qh = b[:, 2:6].to(torch.int64)
        qh = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
        high = ((qh[:, None] >> torch.arange(32, device=raw.device)) & 1).to(torch.uint8)
        q = (unpack_low_high(b[:, 6:]) | (high << 4)).to(torch.float32) - 16
        return (read_f16(b[:, :2])[:, None] * q).reshape(rows, cols)
