"""GGML's 32-element blocks: Q8_0, Q4_0, Q5_0, Q5_1 and IQ4_NL, bit-exact with ggml's quantizers.

Q8_0 is a scheme of its own; Q4_0 is what AprQ4 becomes in GGUF; Q5_0, Q5_1,
Q8_0 and IQ4_NL are the types llama.cpp falls back to when a k-quant tensor's
rows are not a multiple of 256 (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
Q3_K -> IQ4_NL; SmolLM2's and Gemma 3's rows are 576 and 640 wide). The
rounding reproduces ggml's reference functions: ``roundf(x / d)`` for Q8_0,
``(int8_t)(x * id + 8.5f)`` truncation for Q4_0/Q5_0, with d = max / -8
(-16) where max is the first element of largest magnitude, sign kept, and
``(uint8_t)((x - min) * id + 0.5f)`` for Q5_1. IQ4_NL is what
``ggml_quantize_chunk`` (llama-quantize) produces, ``quantize_iq4_nl`` with its
15-candidate scale search; ggml's ``quantize_row_iq4_nl_ref`` differs (no search).
"""

from __future__ import annotations

from .apr import pack_low_high, unpack_low_high
from .codec import Codec, f16_bytes, read_f16, round_half_away_int


def _signed_absmax(blocks):
    """The first element of largest magnitude in each block, with its sign."""
    import torch

    idx = blocks.abs().argmax(dim=1, keepdim=True)
    return torch.gather(blocks, 1, idx).squeeze(1)


def _inverse(d):
    import torch

    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(d), torch.div(torch.ones_like(d), safe))


def _fifth_bits(q):
    """(blocks, 32) codes 0..31 -> (blocks, 4) bytes: bit j of the little-endian u32 = bit 4 of code j."""
    import torch

    qh = (((q >> 4) & 1) << torch.arange(32)).sum(dim=1)
    return torch.stack([(qh >> (8 * i)) & 0xFF for i in range(4)], dim=1).to(torch.uint8)


def _with_fifth_bits(qh_bytes, qs):
    """Codes 0..31 as float32 from 4 bytes of fifth bits and 16 bytes of nibbles (inverse of the above)."""
    import torch

    qh = qh_bytes.to(torch.int64)
    qh = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
    high = ((qh[:, None] >> torch.arange(32, device=qs.device)) & 1).to(torch.uint8)
    return (unpack_low_high(qs) | (high << 4)).to(torch.float32)


class Q8_0(Codec):
    dtype = "Q8_0"

    def encode_rows(self, x):
        import torch

        blocks = x.reshape(-1, 32)
        d = blocks.abs().amax(dim=1) / 127
        q = round_half_away_int(blocks * _inverse(d)[:, None]).to(torch.int8)
        return torch.cat([f16_bytes(d), q.view(torch.uint8)], dim=1)

    def encode(self, x):
        from ..kernels import use_native

        if use_native(x.device):  # q8_0.c: the same bits in one pass
            from ..kernels.quant.cpu import q8_0_encode

            out = q8_0_encode(x)
            if out is not None:
                return out
        return self.encode_rows(x)

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
        return torch.cat([f16_bytes(d), _fifth_bits(q), pack_low_high(q & 0x0F)], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 22)
        q = _with_fifth_bits(b[:, 2:6], b[:, 6:]) - 16
        return (read_f16(b[:, :2])[:, None] * q).reshape(rows, cols)


class Q5_1(Codec):
    """24 bytes: f16 d, f16 min, 32 fifth bits, 16 bytes of nibbles. Value = d*q + min."""

    dtype = "Q5_1"

    def encode_rows(self, x):
        import torch

        blocks = x.reshape(-1, 32)
        mn = blocks.amin(dim=1)
        d = (blocks.amax(dim=1) - mn) / 31
        q = torch.trunc((blocks - mn[:, None]) * _inverse(d)[:, None] + 0.5).to(torch.int64)
        return torch.cat([f16_bytes(d), f16_bytes(mn), _fifth_bits(q), pack_low_high(q & 0x0F)], dim=1)

    def decode_rows(self, raw, rows, cols):
        b = raw.reshape(-1, 24)
        q = _with_fifth_bits(b[:, 4:8], b[:, 8:])
        return (read_f16(b[:, :2])[:, None] * q + read_f16(b[:, 2:4])[:, None]).reshape(rows, cols)


# the 16 levels of IQ4_NL (ggml's kvalues_iq4nl)
IQ4_NL_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _nearest_level(levels, x):
    """ggml's best_index_int8: the index of the level nearest ``x`` (ties to the upper one)."""
    import torch

    mu = torch.searchsorted(levels, x, right=True).clamp_(1, levels.numel() - 1)
    lower, upper = levels[mu - 1], levels[mu]
    idx = torch.where(x - lower < upper - x, mu - 1, mu)
    idx = torch.where(x <= levels[0], torch.zeros_like(idx), idx)
    return torch.where(x >= levels[-1], torch.full_like(idx, levels.numel() - 1), idx)


class IQ4_NL(Codec):
    """18 bytes: f16 d, 16 bytes of 4-bit indices into `IQ4_NL_LEVELS` (j low, j + 16 high).

    The scale is the x²-weighted least-squares fit over the codes of 15 trial grids
    ``(t - 127) / max``, t = -7..7, after the first at ``max / 127`` (``quantize_iq4_nl``, ntry 7).
    """

    dtype = "IQ4_NL"

    def encode_rows(self, x):
        import torch

        levels = torch.tensor(IQ4_NL_LEVELS, dtype=torch.float32)
        blocks = x.reshape(-1, 32)
        w = blocks * blocks
        amax, idx = blocks.abs().max(dim=1)
        mx = torch.gather(blocks, 1, idx[:, None]).squeeze(1)
        zero = amax < 1e-15
        mx_safe = torch.where(zero, torch.ones_like(mx), mx)

        def fit(inv):
            q = levels[_nearest_level(levels, inv[:, None] * blocks)]
            wq = w * q
            sumqx, sumq2 = (wq * blocks)[:, 0].clone(), (wq * q)[:, 0].clone()
            for j in range(1, 32):  # C loop order
                sumqx += (wq * blocks)[:, j]
                sumq2 += (wq * q)[:, j]
            return sumqx, sumq2

        d0 = torch.div(-mx_safe, torch.full_like(mx_safe, -127.0))
        sumqx, sumq2 = fit(torch.div(torch.ones_like(d0), d0))
        d = sumqx / sumq2
        best = d * sumqx
        for t in range(-7, 8):
            sumqx, sumq2 = fit(torch.div(torch.full_like(mx_safe, float(t - 127)), mx_safe))
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = torch.where(better, sumqx / torch.where(better, sumq2, torch.ones_like(sumq2)), d)
            best = torch.where(better, d * sumqx, best)
        d = torch.where(zero, torch.zeros_like(d), d)
        L = _nearest_level(levels, _inverse(d)[:, None] * blocks)
        return torch.cat([f16_bytes(d), pack_low_high(L)], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 18)
        levels = torch.tensor(IQ4_NL_LEVELS, dtype=torch.float32, device=raw.device)
        q = levels[unpack_low_high(b[:, 2:]).to(torch.int64)]
        return (read_f16(b[:, :2])[:, None] * q).reshape(rows, cols)
