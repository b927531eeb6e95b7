"""llama-quantize's k-quant mixtures: which GGML type each tensor gets under Q4_K_S, Q4_K_M ...

A llama.cpp file type ("ftype") is not one tensor type but a mixture: the
output head gets Q6_K, some ``attn_v``/``ffn_down`` layers get more bits,
and rows that do not fit 256 fall back to a 32-block type. apr reproduces
the rules of ``llama_tensor_get_type`` (llama.cpp ``src/llama-quant.cpp``,
checked against the version named in docs/quantize.md) so that ``apr quantize
--scheme q4k`` and ``llama-quantize ... Q4_K_S`` give the same tensor types
(and, with the byte-exact codecs, the same bytes) from the same f32 file.

The rules are written on GGUF tensor names, as llama.cpp tests them, and run
in llama-quantize's tensor order (by block number, then name), because the
``attn_v`` and ``ffn_down`` rules count tensors as they go. Only the cases
reachable for the mixtures apr offers and for the dense architectures apr
exports are kept: the Falcon-only and 8-expert branches cannot occur (a
mixture-of-experts config is refused), and importance-matrix branches do not
apply (apr, like llama-quantize without ``--imatrix``, quantizes with the
reference quantizers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..dtypes import by_name
from ..errors import AprError


@dataclass(frozen=True)
class Mixture:
    """A llama.cpp file type: its name and id (``general.file_type``) and its default tensor type."""

    name: str
    ftype: int
    default: str


MIXTURES = {m.name: m for m in (
    Mixture("Q8_0", 7, "Q8_0"),
    Mixture("Q3_K_M", 12, "Q3_K"),
    Mixture("Q4_K_S", 14, "Q4_K"),
    Mixture("Q4_K_M", 15, "Q4_K"),
    Mixture("Q5_K_M", 17, "Q5_K"),
    Mixture("Q6_K", 18, "Q6_K"),
)}

# the type llama.cpp uses when rows are not a multiple of a k-quant's 256 (then F16 if that does
# not fit either); llama-quantize stops on other types, apr stores them as F16
FALLBACK = {"Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def mixture(name: str) -> Mixture:
    try:
        return MIXTURES[name]
    except KeyError:
        raise AprError(f"unknown llama.cpp mixture {name!r} (known: {', '.join(MIXTURES)})") from None


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(dtype: str, cols: int) -> bool:
    return cols % by_name(dtype).block_size == 0


def _is_70b(arch: str, config: dict) -> bool:
    """llama.cpp's LLM_TYPE_70B for the architectures apr exports (llama and qwen2 with 80 layers)."""
    layers = int(config.get("num_hidden_layers") or 0)
    heads = int(config.get("num_attention_heads") or 0)
    kv = int(config.get("num_key_value_heads") or heads)
    return layers == 80 and (arch == "qwen2" or (arch == "llama" and heads != kv))


def _layer_order(name: str) -> tuple[int, str]:
    """llama-quantize's tensor order (llama_model_loader::weight_name_comparer)."""
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name)


def gguf_types(mix: Mixture, tensors: dict[str, int], arch: str, config: dict) -> dict[str, tuple[str, str]]:
    """GGUF name -> (type the rules chose, type after the row-size fallback) for the quantized tensors.

    ``tensors`` maps the GGUF name of every tensor llama-quantize quantizes (2-D weights) to its
    row length (``ne[0]``).
    """
    if int(config.get("num_local_experts") or config.get("num_experts") or 1) > 1:
        raise AprError(f"llama.cpp's {mix.name} rules for mixture-of-experts models are not implemented")
    ft = mix.name
    n_layer = int(config["num_hidden_layers"])
    has_output = "output.weight" in tensors
    big = _is_70b(arch, config)
    n_attention_wv = sum(1 for n in tensors if "attn_v.weight" in n or "attn_qkv.weight" in n
                         or "attn_kv_b.weight" in n)
    i_attention_wv = i_ffn_down = 0
    out = {}
    for name in sorted(tensors, key=_layer_order):
        cols = tensors[name]
        new = mix.default
        if name == "output.weight" or (not has_output and name == "token_embd.weight"):
            if not _fits(new, cols):
                new = "Q8_0"
            elif new != "Q8_0":
                new = "Q6_K"
        elif name == "token_embd.weight":
            pass  # a separate embedding keeps the default type in every k-quant mixture
        elif "attn_v.weight" in name:
            if ft == "Q3_K_M":
                new = "Q5_K" if i_attention_wv < 2 else "Q4_K"
            elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attention_wv, n_attention_wv):
                new = "Q6_K"
            elif ft == "Q4_K_S" and i_attention_wv < 4:
                new = "Q5_K"
            if big and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"  # 70B: 8 heads share attn_v, so more bits cost little
            i_attention_wv += 1
        elif "ffn_down" in name:
            i = i_ffn_down
            if ft == "Q3_K_M":
                new = "Q5_K" if i < n_layer // 16 else "Q4_K"
            elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n_layer):
                new = "Q6_K"
            elif ft == "Q4_K_S" and i < n_layer // 8:
                new = "Q5_K"
            i_ffn_down += 1
        elif "attn_output.weight" in name:
            if ft == "Q3_K_M":
                new = "Q4_K"
        elif "attn_qkv.weight" in name:
            new = {"Q3_K_M": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(ft, new)
        wanted = new
        if not _fits(new, cols):
            new = FALLBACK.get(new, "F16")
            if not _fits(new, cols):
                new = "F16"
        out[name] = (wanted, new)
    return out


def plan(mix: Mixture, specs: list, config: dict) -> dict[str, tuple[str, str]]:
    """Hugging Face name -> (wanted, stored) type for each 2-D floating-point tensor under ``mix``.

    Names are translated to GGUF names with the exporter's tables; an output head tied to the
    embedding is not a tensor of its own in GGUF and gets the embedding's type.
    """
    from ..formats.gguf import GGUF_ARCH, hf_to_gguf_names

    model_type = str(config.get("model_type"))
    arch = GGUF_ARCH.get(model_type)
    if arch is None:
        raise AprError(f"llama.cpp's {mix.name} rules need a GGUF architecture; model type "
                       f"{model_type!r} has none (supported: {', '.join(sorted(GGUF_ARCH))})")
    two_d = [s for s in specs if len(s.shape) == 2]
    names = [s.name for s in two_d]
    tied_head = "lm_head.weight" in names and bool(config.get("tie_word_embeddings"))
    exported = [n for n in names if not (tied_head and n == "lm_head.weight")]
    to_gguf = hf_to_gguf_names(exported, arch, int(config["num_hidden_layers"]))
    unmapped = [n for n in exported if n not in to_gguf]
    if unmapped:
        raise AprError(f"llama.cpp's {mix.name} rules: no GGUF name for tensor {unmapped[0]}")
    cols = {s.name: int(s.shape[-1]) for s in two_d}
    chosen = gguf_types(mix, {to_gguf[n]: cols[n] for n in exported}, arch, config)
    out = {n: chosen[to_gguf[n]] for n in exported}
    if tied_head:
        embed = next((n for n in exported if to_gguf[n] == "token_embd.weight"), None)
        if embed is not None:
            out["lm_head.weight"] = out[embed]
    return out
