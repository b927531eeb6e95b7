"""NF4 (QLoRA's 4-bit NormalFloat), quantized by bitsandbytes, stored in .apr blocks of 64.

Quantization goes through ``bitsandbytes.functional.quantize_4bit`` (no
re-implementation, so the codes are exactly bitsandbytes'); if bitsandbytes
is missing or has no backend for this device, the scheme fails with that
message rather than substituting another method. Dequantization is plain
torch (code table lookup times block absmax), so a stored NF4 model can be
evaluated anywhere. Block layout (36 bytes): f32 absmax, then 32 bytes of
codes, first element in the high nibble (bitsandbytes' packing).
"""

from __future__ import annotations

from ..errors import AprError
from .codec import Codec, f32_bytes, read_f32

# The 16 NF4 levels (Dettmers et al. 2023, QLoRA, appendix E), as used by bitsandbytes.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def bitsandbytes_functional():
    """``bitsandbytes.functional``, imported quietly, or an `AprError` naming the extra to install."""
    from apr_core.runtime.startup import quiet_bitsandbytes

    try:
        with quiet_bitsandbytes():  # we only quantize: its optional matmul kernels do not matter
            import bitsandbytes.functional as F
    except Exception as exc:  # ImportError, or a backend that fails to initialise
        raise AprError(f"nf4 needs bitsandbytes with a backend for this machine "
                       f"(pip install 'apr[quant]'): {str(exc).splitlines()[0][:120]}") from None
    return F


class NF4(Codec):
    dtype = "NF4"

    def encode_rows(self, x):
        import torch

        F = bitsandbytes_functional()
        try:
            packed, state = F.quantize_4bit(x.reshape(-1), blocksize=64, quant_type="nf4")
        except Exception as exc:
            raise AprError(f"nf4: bitsandbytes cannot quantize on this machine: "
                           f"{str(exc).splitlines()[0][:160]}") from None
        absmax = state.absmax.to(torch.float32).reshape(-1)
        codes = packed.reshape(-1, 32).to(torch.uint8)
        return torch.cat([f32_bytes(absmax), codes], dim=1)

    def decode_rows(self, raw, rows, cols):
        import torch

        b = raw.reshape(-1, 36)
        absmax = read_f32(b[:, :4])[:, None]
        codes = b[:, 4:]
        idx = torch.stack([codes >> 4, codes & 0x0F], dim=2).reshape(-1, 64).long()
        levels = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=raw.device)
        return (levels[idx] * absmax).reshape(rows, cols)
