"""Quantization codecs: GGUF byte layouts checked against gguf-py, rounding against ggml's C code.

gguf-py's own dequantizer must give exactly our values for every GGML type,
and its numpy quantizers (Q8_0, Q4_0, Q5_0) exactly our bytes. For Q4_K and
Q6_K (gguf-py has no quantizer) the bytes are compared with ggml's reference
C functions when ``APR_GGML_SRC`` names a llama.cpp ``ggml/src`` directory
and gcc is available (see docs/quantize.md); otherwise that test skips.
"""

import ctypes
import os
import shutil
import subprocess

import gguf
import numpy as np
import pytest
import torch

from apr_core.dtypes import by_name
from apr_core.errors import AprError
from apr_core.quant import codec
from apr_core.quant.policy import Recipe, fallbacks, plan

GGML = ["Q8_0", "Q4_0", "Q5_0", "Q5_1", "IQ4_NL", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
APR = ["APR_Q8", "APR_Q8_ROW", "APR_Q4", "NF4"]


def _tensors(cols: int):
    """Awkward inputs: scales from 1e-4 to 1e3, zero blocks, constants, one-signed rows, ties."""
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(12, cols, generator=g) * 10 ** torch.empty(12, 1).uniform_(-4, 3, generator=g)
    x[0] = 0
    x[1, : cols // 2] = 0.75
    x[2] = x[2].abs()
    x[3] = -x[3].abs()
    x[4, :32] = torch.tensor([1.0, -1.0] * 16)
    x[5] = torch.randn(cols, generator=g).half().float()
    return x


@pytest.mark.parametrize("dtype", GGML)
@pytest.mark.parametrize("cols", [256, 768])
def test_gguf_py_dequantizes_our_bytes_to_our_values(dtype, cols):
    x = _tensors(cols)
    raw = codec(dtype).quantize(x)
    assert raw.numel() == by_name(dtype).nbytes(tuple(x.shape))
    theirs = gguf.quants.dequantize(raw.numpy().reshape(x.shape[0], -1), gguf.GGMLQuantizationType[dtype])
    ours = codec(dtype).dequantize(raw, tuple(x.shape)).numpy()
    assert np.array_equal(theirs, ours)


@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0", "Q5_0", "Q5_1"])
def test_legacy_blocks_equal_gguf_py_quantizer(dtype):
    x = _tensors(256)
    theirs = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType[dtype])
    assert np.array_equal(codec(dtype).quantize(x).numpy(), theirs.reshape(-1))


def test_round_half_away_is_c_roundf_even_just_below_a_half():
    from apr_core.quant.codec import round_half_away

    below = float(np.nextafter(np.float32(0.5), np.float32(0)))  # 0.49999997: floor(x + 0.5) gets 1
    x = torch.tensor([below, -below, 0.5, -0.5, 1.5, -2.5, 2.4999998, 126.5, 0.0, -0.0], dtype=torch.float32)
    assert round_half_away(x).tolist() == [0.0, -0.0, 1.0, -1.0, 2.0, -3.0, 2.0, 127.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", ["Q8_0", "Q4_0", "Q5_0", "Q5_1"])
def test_grid_valued_weights_equal_gguf_py_quantizer(dtype):
    """Weights dequantized from a 4-bit GGUF sit on a grid (Gemma 3 reaches us so), which puts
    x/d next to halves far more often than random weights do."""
    g = torch.Generator().manual_seed(3)
    steps = torch.randint(-8, 8, (512, 64), generator=g).float()
    x = steps * (torch.rand(512, 1, generator=g) * 0.01 + 1e-3) + torch.randint(0, 2, (512, 1), generator=g) * 1e-3
    theirs = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType[dtype])
    assert np.array_equal(codec(dtype).quantize(x).numpy(), theirs.reshape(-1))


@pytest.mark.parametrize("dtype", GGML + APR)
def test_error_is_within_half_a_step_and_rows_dequantize_alone(dtype):
    x = _tensors(256)[5:]
    c = codec(dtype)
    raw = c.quantize(x)
    y = c.dequantize(raw, tuple(x.shape))
    rel = ((y - x).norm() / x.norm()).item()
    assert rel < {"Q8_0": 0.01, "APR_Q8": 0.02, "APR_Q8_ROW": 0.01, "Q6_K": 0.02, "Q5_0": 0.05,
                  "Q5_1": 0.05, "Q5_K": 0.05, "Q4_K": 0.1, "IQ4_NL": 0.1, "Q3_K": 0.2, "Q4_0": 0.12,
                  "APR_Q4": 0.12, "NF4": 0.12}[dtype], rel
    index = torch.tensor([[3, 0], [6, 3]])
    assert torch.equal(c.dequantize_rows(raw, tuple(x.shape), index), y[index])


def test_bits_per_weight():
    assert codec("Q4_K").bits_per_weight() == 4.5
    assert codec("Q6_K").bits_per_weight() == 6.5625
    assert codec("Q8_0").bits_per_weight() == 8.5
    assert codec("APR_Q4").bits_per_weight() == 4.5
    assert by_name("APR_Q8_ROW").nbytes((3, 10)) == 3 * (4 + 10)


def test_apr_layouts():
    x = torch.tensor([[0.5, -2.0, 1.0, 0.25]])
    raw = codec("APR_Q8").quantize(x)
    assert raw[:4].view(torch.float32).item() == pytest.approx(2.0 / 127)
    assert raw[4:].view(torch.int8).tolist() == [32, -127, 64, 16]
    rows = codec("APR_Q8_ROW").quantize(torch.stack([x[0], 2 * x[0]]))
    assert rows.reshape(2, 8)[1, :4].view(torch.float32).item() == pytest.approx(4.0 / 127)
    # AprQ4: f16 absmax/7 then nibbles q+8 with element j low and j+16 high: a valid Q4_0 block
    b = _tensors(64)[5:7]
    q4 = codec("APR_Q4").quantize(b)
    blocks = q4.reshape(-1, 18)
    assert torch.equal(blocks[:, :2].contiguous().view(torch.float16).float().reshape(-1),
                       (b.reshape(-1, 32).abs().amax(1) / 7).half().float())
    as_q4_0 = gguf.quants.dequantize(q4.numpy().reshape(2, -1), gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(as_q4_0, codec("APR_Q4").dequantize(q4, (2, 64)).numpy())


def test_rows_that_do_not_fit_are_refused_by_the_codec():
    with pytest.raises(AprError, match="multiple of 256"):
        codec("Q4_K").quantize(torch.zeros(2, 96))


def test_nf4_matches_bitsandbytes():
    F = pytest.importorskip("bitsandbytes.functional")
    x = _tensors(128)[5:]
    q, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    ours = codec("NF4").dequantize(codec("NF4").quantize(x), tuple(x.shape))
    assert torch.equal(F.dequantize_4bit(q, state), ours)


def test_nf4_without_bitsandbytes_says_so(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_bnb(name, *a, **k):
        if name.startswith("bitsandbytes"):
            raise ImportError("No module named 'bitsandbytes'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(AprError, match="nf4 needs bitsandbytes"):
        codec("NF4").quantize(torch.zeros(1, 64))


# --------------------------------------------------------------------------- policy

class _Spec:
    def __init__(self, name, shape, dtype="F32"):
        self.name, self.shape, self.dtype = name, shape, dtype


def test_policy_conventions_and_llama_cpp_fallbacks():
    specs = [_Spec("model.embed_tokens.weight", (1000, 512)),
             _Spec("model.layers.0.self_attn.q_proj.weight", (512, 512)),
             _Spec("model.layers.0.mlp.up_proj.weight", (1536, 576)),
             _Spec("model.layers.0.mlp.odd.weight", (8, 40)),
             _Spec("model.layers.0.input_layernorm.weight", (512,)),
             _Spec("model.norm.weight", (512,), "BF16")]
    cfg = {"tie_word_embeddings": True}
    q4k = Recipe("Q4_K", "gguf", output="Q6_K")
    got = plan(q4k, specs, cfg)
    assert got == {"model.embed_tokens.weight": "Q6_K", "model.layers.0.self_attn.q_proj.weight": "Q4_K",
                   "model.layers.0.mlp.up_proj.weight": "Q5_0", "model.layers.0.mlp.odd.weight": "F16",
                   "model.layers.0.input_layernorm.weight": "F32", "model.norm.weight": "F32"}
    assert fallbacks(q4k, specs, cfg) == {"model.layers.0.mlp.up_proj.weight": "Q4_K",
                                          "model.layers.0.mlp.odd.weight": "Q4_K"}
    assert plan(Recipe("Q6_K", "gguf"), specs, cfg)["model.layers.0.mlp.up_proj.weight"] == "Q8_0"
    int4 = plan(Recipe("APR_Q4", "linear"), specs, cfg)
    assert int4 == {"model.embed_tokens.weight": "F32", "model.layers.0.self_attn.q_proj.weight": "APR_Q4",
                    "model.layers.0.mlp.up_proj.weight": "APR_Q4", "model.layers.0.mlp.odd.weight": "F32",
                    "model.layers.0.input_layernorm.weight": "F32", "model.norm.weight": "BF16"}
    assert set(plan(Recipe("F16", "cast"), specs, cfg).values()) == {"F16"}


# --------------------------------------------------------------------------- ggml oracle

@pytest.fixture(scope="module")
def ggml_ref(tmp_path_factory):
    """ggml's reference quantizers compiled from APR_GGML_SRC (llama.cpp's ggml/src), if given."""
    src = os.environ.get("APR_GGML_SRC")
    if not src or not os.path.isfile(os.path.join(src, "ggml-quants.c")) or not shutil.which("gcc"):
        pytest.skip("set APR_GGML_SRC to llama.cpp's ggml/src (and have gcc) to compare with ggml's C code")
    out = tmp_path_factory.mktemp("ggml")
    stubs = out / "stubs.c"
    stubs.write_text(  # the few ggml symbols ggml-quants.c links against, never called here
        "#include <stdlib.h>\n#include <stddef.h>\n"
        "void ggml_abort(const char *f, int l, const char *fmt, ...) { abort(); }\n"
        "size_t ggml_row_size(int t, long n) { abort(); }\n"
        "const char *ggml_type_name(int t) { return \"?\"; }\n"
        "size_t ggml_type_size(int t) { abort(); }\n")
    lib = out / "libggmlq.so"
    include = os.path.join(os.path.dirname(src.rstrip("/")), "include")
    # -O2 without -march: no FMA contraction, the float rounding of a portable build
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-std=gnu11", f"-I{src}", f"-I{include}",
                    "-o", str(lib), os.path.join(src, "ggml-quants.c"), str(stubs), "-lm"],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def _ggml_quantize(lib, dtype: str, x) -> np.ndarray:
    """What llama-quantize's ggml_quantize_chunk writes without an importance matrix: the
    ``quantize_row_*_ref`` function, except for IQ4_NL, whose chunk quantizer searches scales."""
    out = np.zeros(by_name(dtype).nbytes(tuple(x.shape)), dtype=np.uint8)
    xn = np.ascontiguousarray(x.numpy())
    src, dst = xn.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)
    if dtype == "IQ4_NL":
        lib.quantize_iq4_nl(src, dst, ctypes.c_int64(x.shape[0]), ctypes.c_int64(x.shape[1]), None)
    else:
        getattr(lib, f"quantize_row_{dtype.lower().replace('_k', '_K')}_ref")(src, dst, ctypes.c_int64(x.numel()))
    return out


@pytest.mark.parametrize("dtype", GGML)
def test_bytes_equal_ggml_reference_quantizer(ggml_ref, dtype):
    g = torch.Generator().manual_seed(11)
    for cols in (256, 512, 1024):
        # awkward rows, then weight-like ones and grid-valued ones (weights that were 4-bit once)
        x = torch.cat([_tensors(cols), torch.randn(64, cols, generator=g) * 0.02,
                       torch.randint(-8, 8, (16, cols), generator=g).float() * 0.01])
        theirs = _ggml_quantize(ggml_ref, dtype, x)
        ours = codec(dtype).quantize(x).numpy()
        differ = (ours.reshape(-1, by_name(dtype).type_size) != theirs.reshape(-1, by_name(dtype).type_size)).any(1)
        assert not differ.any(), f"{dtype}: {int(differ.sum())} of {differ.size} blocks differ"
