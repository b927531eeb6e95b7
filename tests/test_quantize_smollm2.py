"""apr quantize on the real SmolLM2-135M-Instruct (slow tier): llama.cpp's fallbacks, quality."""

import json

import gguf
import pytest
import torch

from apr_core import pipeline
from apr_core.quant import codec
from helpers import run_apr

pytestmark = pytest.mark.slow
PPL = ["--dataset", "code", "--seq-len", "512", "--max-tokens", "1024", "--json"]


def test_q4k_gguf_uses_llama_cpp_fallbacks_and_reads_back(smollm2_apr, tmp_path):
    out = tmp_path / "model.gguf"
    run_apr("quantize", smollm2_apr, "--scheme", "q4k", "--format", "gguf", "-o", str(out), check=True)
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.3.ffn_down.weight"] == "Q4_K"  # rows of 1536 fit 256
    assert types["blk.0.ffn_down.weight"] == "Q5_K"  # Q4_K_S: the first n_layer/8 get Q5_K
    assert types["blk.0.attn_q.weight"] == "Q5_0"  # rows of 576 do not: llama.cpp's Q5_0
    assert types["blk.0.attn_v.weight"] == "Q5_1"  # Q4_K_S's Q5_K for attn_v 0-3, falls back to Q5_1
    assert reader.fields["general.file_type"].contents() == 14  # LLAMA_FTYPE_MOSTLY_Q4_K_S
    assert types["token_embd.weight"] == "Q8_0"  # tied output head: Q6_K wanted, falls back to Q8_0
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    back = pipeline.load(str(out))
    source = pipeline.load(smollm2_apr)
    from apr_core.quant.convert import float_tensor

    for name in ("model.layers.3.mlp.down_proj.weight", "model.layers.3.self_attn.k_proj.weight"):
        spec = back.spec(name)
        # gguf-py's dequantization of the file equals apr's quantize->dequantize of the source
        dtype = {"model.layers.3.mlp.down_proj.weight": "Q4_K"}.get(name, "Q5_0")
        ours = codec(dtype).dequantize(codec(dtype).quantize(float_tensor(source.tensors[name])), spec.shape)
        assert torch.equal(back.tensor(name), ours), name


def test_int8_and_q8_0_keep_perplexity(smollm2_apr, tmp_path):
    dense = json.loads(run_apr("eval", smollm2_apr, *PPL, check=True).stdout)["value"]
    for scheme in ("int8-channel", "q8_0"):
        out = tmp_path / f"{scheme}.apr"
        run_apr("quantize", smollm2_apr, "--scheme", scheme, "-o", str(out), check=True)
        value = json.loads(run_apr("eval", str(out), *PPL, check=True).stdout)["value"]
        assert abs(value / dense - 1) < 0.02, (scheme, value, dense)
