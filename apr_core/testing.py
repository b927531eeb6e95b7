"""Test helpers for apr and for third-party plugins: tiny models and the technique contract.

``tiny_model()`` builds a random Llama, Qwen2 or Gemma3 model with a real
(tiny, byte-level BPE) tokenizer and chat template in well under a second,
offline. ``check_technique(kind, name, workdir)`` runs the contract every
registered technique must pass: outputs are finite, declared shapes and
dtypes hold, tokenizer/config/chat template/generation config survive,
provenance records the operation, save -> load is identical, and the same
seed gives byte-identical files. A plugin author's whole test can be::

    from apr_core.testing import check_technique

    def test_contract(tmp_path):
        check_technique("merge", "my-strategy", tmp_path)
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from .model import LazyTensor, Model

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_TRAINING_TEXT = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n",
    "The quick brown fox jumps over the lazy dog. Python is a programming language.",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "while True:\n    line = input()\n    if not line:\n        break\n",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@functools.lru_cache(maxsize=4)
def tiny_tokenizer_files(vocab_size: int = 320) -> dict[str, bytes]:
    """A byte-level BPE tokenizer trained on a few lines of code, as HF tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TRAINING_TEXT * 4, trainer=trainer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 128,
        "add_bos_token": False,
    }
    return {
        "tokenizer.json": tok.to_str().encode("utf-8"),
        "tokenizer_config.json": json.dumps(config, indent=2).encode("utf-8"),
        "chat_template.jinja": CHAT_TEMPLATE.encode("utf-8"),
    }


_ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "rope_theta": 10000.0},
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True, "rope_theta": 1000000.0},
    "gemma3": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
               "rms_norm_eps": 1e-6, "sliding_window": 32, "tie_word_embeddings": True,
               # queries scaled by 1/sqrt(head_dim) as in every released Gemma 3 but the 27B (and as
               # llama.cpp computes them); transformers' default of 256 suits only head_dim 256
               "query_pre_attn_scalar": 16},
}
ARCHS = tuple(_ARCH_CONFIGS)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides: Any) -> Model:
    """A randomly initialised model of family ``arch`` (llama, qwen2, gemma3) with tokenizer files."""
    import torch

    from .torch_bridge import causal_lm_class, hf_config, quiet_transformers

    files = tiny_tokenizer_files()
    vocab = json.loads(files["tokenizer.json"])
    vocab_size = len(vocab["model"]["vocab"]) + len([a for a in vocab["added_tokens"]
                                                     if a["content"] not in vocab["model"]["vocab"]])
    config = dict(_ARCH_CONFIGS[arch], vocab_size=vocab_size, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    config.update(overrides)
    torch.manual_seed(seed)
    with quiet_transformers():
        module = causal_lm_class(config)(hf_config(config)).eval()
    state = module.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    full_config = module.config.to_dict()
    full_config.pop("transformers_version", None)
    tensors = {name: LazyTensor.of(name, t.detach().clone().contiguous()) for name, t in state.items()}
    return Model(tensors=tensors, config=full_config, tokenizer=dict(files),
                 generation_config={"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0},
                 source=f"tiny-{arch}-{seed}")


def write_tiny(path: str | Path, arch: str = "llama", seed: int = 0, **overrides: Any) -> str:
    """Save ``tiny_model(...)`` as an .apr file and return its path."""
    from .formats.apr import write_apr

    write_apr(tiny_model(arch, seed, **overrides), path)
    return str(path)


# --------------------------------------------------------------------------- contract

def _assert_same_metadata(before: Model, after: Model, what: str, config_changes: tuple[str, ...] = ()) -> None:
    assert after.tokenizer == before.tokenizer, f"{what}: tokenizer files changed"
    assert after.chat_template == before.chat_template, f"{what}: chat template changed"
    assert after.generation_config == before.generation_config, f"{what}: generation config changed"
    strip = lambda c: {k: v for k, v in c.items() if k not in config_changes and k not in ("torch_dtype", "dtype")}
    assert strip(after.config) == strip(before.config), f"{what}: config changed"


def _assert_finite(model: Model, what: str) -> None:
    import torch

    for name in model.names():
        spec = model.spec(name)
        if spec.dt.quantized:
            continue
        t = model.tensor(name)
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{what}: tensor {name} has NaN or inf"


def assert_models_equal(a: Model, b: Model, what: str = "models") -> None:
    """Same tensor names, specs and bytes; same config, tokenizer and provenance."""
    import torch

    assert a.names() == b.names(), f"{what}: tensor names differ"
    for name in a.names():
        assert a.spec(name) == b.spec(name), f"{what}: spec of {name} differs"
        ta, tb = a.tensor(name), b.tensor(name)
        assert torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8)), \
            f"{what}: bytes of {name} differ"
    assert a.config == b.config, f"{what}: config differs"
    assert a.tokenizer == b.tokenizer, f"{what}: tokenizer differs"
    assert a.provenance == b.provenance, f"{what}: provenance differs"
    assert a.generation_config == b.generation_config, f"{what}: generation config differs"


def check_technique(kind: str, name: str, workdir: str | Path, arch: str = "llama") -> dict[str, Any]:
    """Run the shared contract on one registered technique; raises AssertionError on a breach."""
    from . import pipeline
    from .formats.apr import read_apr, write_apr
    from .plugins import manager
    from .technique import RunContext

    _, registry = manager()
    technique = registry.get(kind, name)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from .technique import EvaluateTechnique, TransformTechnique

    if isinstance(technique, EvaluateTechnique):
        return _check_evaluate(technique, workdir, arch)
    if not isinstance(technique, TransformTechnique):
        # Techniques that neither transform nor evaluate models (e.g. eval prompt strategies)
        # bring their own contract.
        result = technique.contract(workdir)
        assert result is not None, f"{kind} {name}: not a transform or evaluation and has no contract()"
        return result
    n_inputs = max(1, technique.input_range(pipeline.kind(kind))[0])
    paths = [write_tiny(workdir / f"in{i}.apr", arch, seed=i) for i in range(n_inputs)]
    raw = technique.contract_params(workdir, paths)

    def run(seed: int, out: Path) -> Model:
        inputs = [read_apr(p) for p in paths]
        result = pipeline.transform(kind, name, inputs, dict(raw), RunContext(seed=seed, quiet=True))
        write_apr(result, out)
        return result

    first = run(1234, workdir / "out1.apr")
    base = read_apr(paths[0])
    what = f"{kind} {name}"
    _assert_same_metadata(base, first, what, technique.config_changes)
    _assert_finite(first, what)
    if not technique.changes_shapes:
        for n in base.names():
            assert n in first.tensors, f"{what}: tensor {n} disappeared"
            assert first.spec(n).shape == base.spec(n).shape, f"{what}: shape of {n} changed"
            if not technique.changes_dtypes:
                assert first.spec(n).dtype == base.spec(n).dtype, f"{what}: dtype of {n} changed"
    last = first.provenance[-1]
    assert last["operation"] == kind and last["technique"] == name, f"{what}: provenance not recorded"
    assert len(last["inputs"]) >= n_inputs, f"{what}: provenance lacks input hashes"
    reread = read_apr(workdir / "out1.apr")
    assert_models_equal(first, reread, f"{what}: save -> load")
    run(1234, workdir / "out2.apr")
    assert (workdir / "out1.apr").read_bytes() == (workdir / "out2.apr").read_bytes(), \
        f"{what}: same seed gave different bytes"
    _check_runs(reread, what)  # quantized tensors run through apr_core.quant.modules
    return {"technique": what, "tensors": len(reread.tensors)}


def _check_runs(model: Model, what: str) -> None:
    import torch

    from .torch_bridge import to_transformers

    module = to_transformers(model)
    with torch.inference_mode():
        logits = module(torch.arange(1, 9).unsqueeze(0)).logits
    assert torch.isfinite(logits).all(), f"{what}: the result produces non-finite logits"


def _check_evaluate(technique, workdir: Path, arch: str) -> dict[str, Any]:
    from . import pipeline
    from .formats.apr import read_apr
    from .technique import RunContext

    path = write_tiny(workdir / "eval.apr", arch)
    raw = technique.contract_params(workdir, [path])
    results = [pipeline.evaluate(technique.name, read_apr(path), dict(raw), RunContext(seed=7, quiet=True))
               for _ in range(2)]
    what = f"evaluate {technique.name}"
    for r in results:
        json.dumps(r)
        assert "metric" in r and "value" in r, f"{what}: result lacks metric/value"
        assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), f"{what}: value not finite"
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "tokens_per_second", "samples_per_second")}
    assert strip(results[0]) == strip(results[1]), f"{what}: same seed gave different results"
    return results[0]
