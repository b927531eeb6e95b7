"""apr's k-quant mixtures against llama-quantize: the same tensor types, and the same bytes.

The type tables are checked without llama.cpp (llama_tensor_get_type's rules
on SmolLM2's, an untied and a 70B geometry). With ``APR_LLAMA_CPP_BIN``
naming a llama.cpp build's ``bin/`` (docs/quantize.md), apr's own f32 GGUF
export is quantized by llama-quantize (no importance matrix) and by ``apr
quantize``, and every tensor's type and bytes must be equal.
"""

import os
import subprocess
from collections import Counter

import gguf
import numpy as np
import pytest

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.quant.mixtures import mixture
from apr_core.quant.policy import Recipe, fallbacks, plan
from apr_core.testing import tiny_model

LLAMA_NAMES = {"q4k": "Q4_K_S", "q4k_m": "Q4_K_M", "q5k_m": "Q5_K_M", "q3k_m": "Q3_K_M", "q6k": "Q6_K",
               "q8_0": "Q8_0"}


class _Spec:
    def __init__(self, name, shape, dtype="F32"):
        self.name, self.shape, self.dtype = name, shape, dtype


def llama_specs(layers: int, hidden: int, kv: int, ffn: int, vocab: int, tied: bool) -> list:
    specs = [_Spec("model.embed_tokens.weight", (vocab, hidden)), _Spec("model.norm.weight", (hidden,))]
    if not tied:
        specs.append(_Spec("lm_head.weight", (vocab, hidden)))
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [_Spec(p + "self_attn.q_proj.weight", (hidden, hidden)), _Spec(p + "self_attn.k_proj.weight", (kv, hidden)),
                  _Spec(p + "self_attn.v_proj.weight", (kv, hidden)), _Spec(p + "self_attn.o_proj.weight", (hidden, hidden)),
                  _Spec(p + "mlp.gate_proj.weight", (ffn, hidden)), _Spec(p + "mlp.up_proj.weight", (ffn, hidden)),
                  _Spec(p + "mlp.down_proj.weight", (hidden, ffn)), _Spec(p + "input_layernorm.weight", (hidden,)),
                  _Spec(p + "post_attention_layernorm.weight", (hidden,))]
    return specs


SMOLLM2 = {"model_type": "llama", "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "tie_word_embeddings": True}


def _types(mix: str, specs, config) -> dict[str, str]:
    return plan(Recipe(mixture(mix).default, "gguf", mixture=mix), specs, config)


def _layers(types: dict, part: str, dtype: str) -> list[int]:
    return sorted(int(n.split(".")[2]) for n, t in types.items() if part in n and t == dtype)


def test_q4_k_s_on_smollm2_raises_attn_v_and_ffn_down_as_llama_cpp():
    specs = llama_specs(30, 576, 192, 1536, 49152, tied=True)
    t = _types("Q4_K_S", specs, SMOLLM2)
    assert t["model.embed_tokens.weight"] == "Q8_0"  # the tied head: Q6_K's rows must fit 256
    assert _layers(t, "v_proj", "Q5_1") == [0, 1, 2, 3]  # Q5_K wanted, 576 is not a multiple of 256
    assert _layers(t, "v_proj", "Q5_0") == list(range(4, 30))
    assert _layers(t, "down_proj", "Q5_K") == [0, 1, 2]  # the first n_layer/8
    assert _layers(t, "down_proj", "Q4_K") == list(range(3, 30))
    assert {t[n] for n in t if any(k in n for k in ("q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"))} == {"Q5_0"}
    assert {t[n] for n in t if "norm" in n} == {"F32"}
    missed = fallbacks(Recipe("Q4_K", "gguf", mixture="Q4_K_S"), specs, SMOLLM2)
    assert Counter(f"{w} -> {t[n]}" for n, w in missed.items()) == {"Q4_K -> Q5_0": 176, "Q5_K -> Q5_1": 4}


def test_q4_k_m_and_q3_k_m_on_smollm2():
    specs = llama_specs(30, 576, 192, 1536, 49152, tied=True)
    more = [i for i in range(30) if i < 3 or i >= 26 or (i - 3) % 3 == 2]  # llama.cpp's use_more_bits
    t = _types("Q4_K_M", specs, SMOLLM2)
    assert _layers(t, "v_proj", "Q8_0") == more  # Q6_K wanted, falls back to Q8_0
    assert _layers(t, "down_proj", "Q6_K") == more
    assert _layers(t, "down_proj", "Q4_K") == [i for i in range(30) if i not in more]
    t = _types("Q3_K_M", specs, SMOLLM2)
    assert _layers(t, "v_proj", "Q5_1") == [0, 1] and _layers(t, "v_proj", "Q5_0") == list(range(2, 30))
    assert _layers(t, "down_proj", "Q5_K") == [0] and _layers(t, "down_proj", "Q4_K") == list(range(1, 30))
    assert {t[n] for n in t if "o_proj" in n} == {"Q5_0"}  # Q4_K wanted
    assert {t[n] for n in t if "q_proj" in n or "up_proj" in n} == {"IQ4_NL"}  # Q3_K's fallback


def test_untied_head_and_embedding_and_the_70b_rule():
    cfg = {"model_type": "llama", "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4,
           "tie_word_embeddings": False}
    t = _types("Q4_K_S", llama_specs(8, 256, 256, 512, 1000, tied=False), cfg)
    assert t["lm_head.weight"] == "Q6_K" and t["model.embed_tokens.weight"] == "Q4_K"
    big = dict(cfg, num_hidden_layers=80, num_key_value_heads=1)
    t = _types("Q4_K_M", llama_specs(80, 256, 64, 512, 1000, tied=False), big)
    assert {t[f"model.layers.{i}.self_attn.v_proj.weight"] for i in (13, 14)} == {"Q5_K"}  # Q4_K raised for 70B
    assert t["model.layers.12.self_attn.v_proj.weight"] == "Q6_K"  # a use_more_bits layer


def test_mixtures_refuse_what_llama_cpp_rules_do_not_cover():
    moe = dict(SMOLLM2, num_local_experts=8)
    with pytest.raises(AprError, match="mixture-of-experts"):
        _types("Q4_K_M", llama_specs(2, 256, 256, 512, 100, tied=True), moe)
    with pytest.raises(AprError, match="GGUF architecture"):
        _types("Q4_K_M", llama_specs(2, 256, 256, 512, 100, tied=True), dict(SMOLLM2, model_type="gpt2"))
    with pytest.raises(AprError, match="unknown llama.cpp mixture"):
        mixture("Q4_K_X")


# --------------------------------------------------------------------------- llama-quantize

@pytest.fixture(scope="module")
def llama_quantize():
    directory = os.environ.get("APR_LLAMA_CPP_BIN")
    tool = os.path.join(directory or "", "llama-quantize")
    if not directory or not os.path.isfile(tool):
        pytest.skip("set APR_LLAMA_CPP_BIN to a llama.cpp build's bin/ (llama-quantize)")
    return tool


def gguf_tensors(path) -> dict[str, tuple[str, bytes]]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.ascontiguousarray(t.data).view(np.uint8).tobytes()) for t in reader.tensors}


def assert_same_as_llama_quantize(tool: str, f32_gguf, scheme: str, workdir) -> dict[str, int]:
    """Quantize apr's f32 GGUF with llama-quantize and with apr; every tensor must be equal."""
    theirs_path, ours_path = workdir / f"llama-{scheme}.gguf", workdir / f"apr-{scheme}.gguf"
    proc = subprocess.run([tool, str(f32_gguf), str(theirs_path), LLAMA_NAMES[scheme], "2"],
                          capture_output=True, text=True, errors="replace", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    quantized = pipeline.transform("quantize", scheme, [pipeline.load(str(f32_gguf))], {})
    pipeline.save(quantized, str(ours_path), "gguf")
    theirs, ours = gguf_tensors(theirs_path), gguf_tensors(ours_path)
    assert sorted(ours) == sorted(theirs)
    types = {n: (ours[n][0], theirs[n][0]) for n in theirs if ours[n][0] != theirs[n][0]}
    assert not types, f"{len(types)} tensor types differ (apr, llama-quantize): {dict(list(types.items())[:5])}"
    data = [n for n in theirs if ours[n][1] != theirs[n][1]]
    assert not data, f"{len(data)} tensors' bytes differ: {data[:5]}"
    return dict(Counter(t for t, _ in theirs.values()))


GEOMETRIES = {
    # every row a multiple of 256 and 16 layers: the per-layer rules all apply
    "wide": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 16},
    # 64-wide rows: every k-quant falls back (Q5_0, Q5_1, Q8_0, IQ4_NL)
    "narrow": {},
}


@pytest.mark.parametrize("scheme", sorted(LLAMA_NAMES))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_tiny_models_quantize_exactly_as_llama_quantize(llama_quantize, tmp_path, arch, scheme, geometry):
    over = dict(GEOMETRIES[geometry])
    if arch == "gemma3" and geometry == "wide":
        over.update(head_dim=64, query_pre_attn_scalar=64)
    f32 = tmp_path / "f32.gguf"
    pipeline.save(tiny_model(arch, **over), str(f32), "gguf", dtype="f32")
    types = assert_same_as_llama_quantize(llama_quantize, f32, scheme, tmp_path)
    main = mixture(LLAMA_NAMES[scheme]).default
    assert (main in types) == (geometry == "wide" or main == "Q8_0"), types  # 64-wide rows fit only Q8_0


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["q4k", "q4k_m"])
def test_smollm2_quantizes_exactly_as_llama_quantize(llama_quantize, smollm2_apr, tmp_path, scheme):
    f32 = tmp_path / "smollm2-f32.gguf"
    pipeline.save(pipeline.load(smollm2_apr), str(f32), "gguf", dtype="f32")
    types = assert_same_as_llama_quantize(llama_quantize, f32, scheme, tmp_path)
    assert types == SMOLLM2_TYPES[scheme]


SMOLLM2_TYPES = {"q4k": {"F32": 61, "Q8_0": 1, "Q5_0": 176, "Q5_1": 4, "Q5_K": 3, "Q4_K": 27},
                 "q4k_m": {"F32": 61, "Q8_0": 15, "Q5_0": 166, "Q6_K": 14, "Q4_K": 16}}
