"""apr quantize: the playbook's commands, the schemes' tensor choices, GGUF export, bad input."""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.quant import codec
from apr_core.technique import RunContext
from apr_core.testing import tiny_model, write_tiny
from apr_core.torch_bridge import to_transformers
from helpers import one_error_line, run_apr

WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def model_apr(tmp_path_factory) -> str:
    """A tiny llama whose rows are 256 wide, so every k-quant fits without fallback."""
    return write_tiny(tmp_path_factory.mktemp("quant") / "model.apr", "llama", seed=3, **WIDE)


def _quantize(model, scheme, **raw):
    ctx = RunContext(quiet=True)
    return pipeline.transform("quantize", scheme, [model], raw, ctx), ctx.report


def _logits(model, ids=torch.arange(1, 30).unsqueeze(0)):
    with torch.inference_mode():
        return to_transformers(model)(ids).logits


@pytest.mark.parametrize("scheme,layer,embed,norm,tol", [
    ("fp16", "F16", "F16", "F16", 0.01), ("bf16", "BF16", "BF16", "BF16", 0.05),
    ("int8", "APR_Q8", "F32", "F32", 0.05), ("int8-channel", "APR_Q8_ROW", "F32", "F32", 0.05),
    ("int4", "APR_Q4", "F32", "F32", 0.5), ("nf4", "NF4", "F32", "F32", 0.5),
    ("q8_0", "Q8_0", "Q8_0", "F32", 0.05), ("q4k", "Q4_K", "Q4_K", "F32", 0.5),
    ("q6k", "Q6_K", "Q6_K", "F32", 0.1)])
def test_scheme_tensor_choices_and_model_still_runs(scheme, layer, embed, norm, tol):
    base = tiny_model("llama", seed=3, **WIDE)
    out, report = _quantize(base, scheme)
    assert out.spec("model.layers.0.mlp.down_proj.weight").dtype == layer
    assert out.spec("model.layers.1.self_attn.q_proj.weight").dtype == layer
    assert out.spec("model.embed_tokens.weight").dtype == embed
    assert out.spec("model.norm.weight").dtype == norm
    head = {"q4k": "Q6_K", "q6k": "Q6_K", "q8_0": "Q8_0", "fp16": "F16", "bf16": "BF16"}.get(scheme, "F32")
    assert out.spec("lm_head.weight").dtype == head  # llama.cpp stores output.weight as Q6_K
    assert report["bits_per_weight"] == pytest.approx(8 * out.nbytes / out.param_count, abs=1e-3)
    ref, got = _logits(base), _logits(out)
    assert (got - ref).abs().max() / ref.abs().max() < tol
    assert out.tokenizer == base.tokenizer and out.chat_template == base.chat_template


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_quantized_linear_matches_dequantized_weights(arch):
    base = tiny_model(arch, seed=1, **WIDE)  # tied embeddings: the head shares the Q6_K bytes
    out, _ = _quantize(base, "q4k")
    dense = out.derive()
    from apr_core.model import LazyTensor

    for name in out.names():
        spec = out.spec(name)
        if spec.dt.quantized:
            dense.tensors[name] = LazyTensor.of(name, codec(spec.dtype).dequantize(out.tensor(name), spec.shape))
    assert torch.equal(_logits(out), _logits(dense))
    module = to_transformers(out)
    assert type(module.lm_head).__name__ == "QuantLinear"
    assert module.lm_head.raw.data_ptr() == module.model.embed_tokens.raw.data_ptr()


def test_playbook_plan_writes_nothing(model_apr, tmp_path):
    proc = run_apr("quantize", model_apr, "--scheme", "int4", "--plan", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    groups = {g["group"]: g for g in plan["groups"]}
    assert groups["mlp"]["bits_per_weight"] == 4.5 and groups["mlp"]["dtypes"] == "APR_Q4"
    assert groups["embeddings"]["dtypes"] == "F32"
    assert plan["output_bytes"] == sum(g["output_bytes"] for g in plan["groups"])
    assert plan["peak_memory_bytes"] > 0
    assert list(tmp_path.iterdir()) == []
    text = run_apr("quantize", model_apr, "--scheme", "int4", "--plan").stdout
    assert "bits_per_weight" in text and "groups:" in text


def test_playbook_int4_then_inspect_and_eval(model_apr, tmp_path):
    out = tmp_path / "model-q4.apr"
    run_apr("quantize", model_apr, "--scheme", "int4", "-o", str(out), check=True)
    info = json.loads(run_apr("inspect", str(out), "--json", check=True).stdout)
    assert info["dtypes"]["APR_Q4"] > 0 and info["bits_per_weight"] < 32
    assert info["provenance"][-1]["technique"] == "int4"
    text = run_apr("inspect", str(out), check=True).stdout
    assert "bits/weight" in text
    corpus = tmp_path / "c.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n" * 30)
    ppl = [json.loads(run_apr("eval", p, "--dataset", str(corpus), "--seq-len", "32", "--json",
                              check=True).stdout)["value"] for p in (model_apr, str(out))]
    assert abs(ppl[1] / ppl[0] - 1) < 0.05


def test_requantize_needs_flag_and_unknown_scheme_fails(model_apr, tmp_path):
    q = tmp_path / "q.apr"
    run_apr("quantize", model_apr, "--scheme", "q8_0", "-o", str(q), check=True)
    again = tmp_path / "again.apr"
    line = one_error_line(run_apr("quantize", str(q), "--scheme", "int4", "-o", str(again)))
    assert "--allow-requantize" in line and not again.exists()
    run_apr("quantize", str(q), "--scheme", "int4", "--allow-requantize", "-o", str(again), check=True)
    assert pipeline.load(str(again)).spec("model.layers.0.mlp.up_proj.weight").dtype == "APR_Q4"
    line = one_error_line(run_apr("quantize", model_apr, "--scheme", "int3", "-o", str(tmp_path / "x.apr")))
    assert "int3" in line and not (tmp_path / "x.apr").exists()


def test_playbook_batch(model_apr, tmp_path):
    import shutil

    src = tmp_path / "model.apr"
    shutil.copy(model_apr, src)
    corpus = tmp_path / "c.txt"
    corpus.write_text("for i in range(10):\n    print(i * i)\n" * 40)
    proc = run_apr("quantize", str(src), "--batch", "int8,int4,fp16,q4k", "--eval-dataset", str(corpus),
                   "--eval-tokens", "200", "--eval-seq-len", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["technique"]: r for r in report["rows"]}
    assert list(rows) == ["int8", "int4", "fp16", "q4k"]
    directory = tmp_path / "model-quantize"
    for name, row in rows.items():
        assert Path(row["output"]) == directory / f"model-{name}.apr" and Path(row["output"]).is_file()
        assert row["bytes"] < src.stat().st_size
        assert abs(row["perplexity_change_pct"]) < 20
    assert rows["q4k"]["bits_per_weight"] < rows["int8"]["bits_per_weight"] < rows["fp16"]["bits_per_weight"]
    assert (directory / "comparison.json").is_file()
    assert (directory / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    text = run_apr("quantize", str(src), "--batch", "int8", "--eval-tokens", "0", "-o",
                   str(tmp_path / "other"), check=True).stdout
    assert "rows:" in text and (tmp_path / "other" / "model-int8.apr").is_file()


def test_batch_typo_writes_nothing(model_apr, tmp_path):
    line = one_error_line(run_apr("quantize", model_apr, "--batch", "int8,int4,fp61", "-o", str(tmp_path / "b")))
    assert "fp61" in line and not (tmp_path / "b").exists()
    line = one_error_line(run_apr("quantize", model_apr, "--batch", "int8", "--scheme", "int4"))
    assert "--batch" in line


# --------------------------------------------------------------------------- GGUF

def _assert_gguf_matches(path, model, arch="llama"):
    """gguf-py reopens the file and its dequantizer gives apr's values for every tensor."""
    reader = gguf.GGUFReader(str(path))
    keys = set(reader.fields)
    for key in ("general.architecture", f"{arch}.context_length", f"{arch}.block_count",
                f"{arch}.attention.head_count", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.chat_template", "general.file_type", "general.quantization_version"):
        assert key in keys, key
    assert reader.fields["tokenizer.chat_template"].contents() == model.chat_template
    for t in reader.tensors:
        assert t.data_offset % reader.alignment == 0
    back = pipeline.load(str(path))  # dequantizes through gguf-py and undoes llama.cpp's layout
    for name in back.names():
        spec = model.spec(name)
        ours = codec(spec.dtype).dequantize(model.tensor(name), spec.shape) if spec.dt.quantized \
            else model.tensor(name).float()
        assert torch.equal(back.tensor(name).float(), ours.float().to(torch.float16).float()
                           if back.spec(name).dtype == "F16" and not spec.dt.quantized else ours), name
    return reader


@pytest.mark.parametrize("scheme", ["q4k", "int4"])
def test_playbook_gguf_export_reads_back_exactly(model_apr, tmp_path, scheme):
    out = tmp_path / "model.gguf"
    run_apr("quantize", model_apr, "--scheme", scheme, "--format", "gguf", "-o", str(out), check=True)
    quantized, _ = _quantize(pipeline.load(model_apr), scheme)
    _check_gguf_types(_assert_gguf_matches(out, quantized), scheme)


@pytest.mark.parametrize("scheme", ["q6k", "q8_0"])
def test_gguf_export_of_other_schemes(model_apr, tmp_path, scheme):
    quantized, _ = _quantize(pipeline.load(model_apr), scheme)
    out = pipeline.save(quantized, str(tmp_path / "m.gguf"))
    _check_gguf_types(_assert_gguf_matches(out, quantized), scheme)


def _check_gguf_types(reader, scheme):
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    expected = {"q4k": "Q4_K", "q6k": "Q6_K", "q8_0": "Q8_0", "int4": "Q4_0"}[scheme]
    assert types["blk.0.ffn_down.weight"] == expected
    assert types["blk.0.attn_q.weight"] == expected
    assert types["output_norm.weight"] == "F32"


def test_export_dtype_q4_k_and_preserve_quant_import(model_apr, tmp_path):
    out = tmp_path / "m.gguf"
    run_apr("export", model_apr, "--format", "gguf", "--dtype", "q4_k", "-o", str(out), check=True)
    direct, _ = _quantize(pipeline.load(model_apr), "q4k")
    _assert_gguf_matches(out, direct)
    kept = tmp_path / "kept.apr"
    run_apr("import", str(out), "--preserve-quant", "-o", str(kept), check=True)
    back = pipeline.load(str(kept))
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.mlp.down_proj.weight", "lm_head.weight"):
        assert back.spec(name).dtype == direct.spec(name).dtype
        assert torch.equal(back.tensor(name), direct.tensor(name)), name  # the very same blocks
    corpus = tmp_path / "c.txt"
    corpus.write_text("x = 1\n" * 50)
    run_apr("eval", str(kept), "--dataset", str(corpus), "--seq-len", "16", check=True)


def test_gguf_refuses_nf4(model_apr, tmp_path):
    pytest.importorskip("bitsandbytes")
    quantized, _ = _quantize(pipeline.load(model_apr), "nf4")
    with pytest.raises(AprError, match="GGUF has no type for NF4"):
        pipeline.save(quantized, str(tmp_path / "n.gguf"))
    assert not (tmp_path / "n.gguf").exists()


def test_safetensors_format_keeps_quantized_blocks(model_apr, tmp_path):
    out = tmp_path / "m.safetensors"
    proc = run_apr("quantize", model_apr, "--scheme", "q8_0", "--format", "safetensors", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    back = pipeline.load(str(out))
    assert back.spec("model.layers.0.mlp.up_proj.weight").dtype == "Q8_0"
    direct, _ = _quantize(pipeline.load(model_apr), "q8_0")
    assert torch.equal(back.tensor("model.layers.0.mlp.up_proj.weight"),
                       direct.tensor("model.layers.0.mlp.up_proj.weight"))


def test_core_batch_validates_before_writing(model_apr, tmp_path):
    from apr_core.errors import AprError as Err

    assert pipeline.batch_directory("a/model.apr", "quantize", None) == Path("a/model-quantize")
    assert pipeline.batch_directory("a/model.apr", "quantize", "x") == Path("x")
    for names, match in ((["int8", "nope"], "nope"), (["int8", "int8"], "twice"), ([], "needs")):
        with pytest.raises(Err, match=match):
            pipeline.batch("quantize", names, [model_apr], {}, str(tmp_path / "d"))
    with pytest.raises(Err, match="does not apply"):
        pipeline.batch("quantize", ["int8"], [model_apr], {"target_ratio": "0.5"}, str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_safetensors_refuses_bad_quantized_metadata(tmp_path):
    from apr_core.errors import CorruptFileError
    from apr_core.formats.safetensors import QUANTIZED_KEY, read_safetensors, write_safetensors

    model = tiny_model("llama")
    bogus = {QUANTIZED_KEY: json.dumps({"model.norm.weight": {"dtype": "Q4_K", "shape": [64]}})}
    write_safetensors(model.tensors, tmp_path / "m.safetensors", metadata=bogus)
    with pytest.raises(CorruptFileError, match="apr.quantized"):
        read_safetensors(tmp_path / "m.safetensors")
