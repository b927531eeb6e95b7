"""Bridges from a `Model` handle to live transformers objects (modules and tokenizers).

Used by techniques that need to run the network (perplexity, calibration,
generation). Weights are assigned from the lazy tensors without a second
copy where dtypes already match.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from .errors import AprError, first_line
from .model import Model
from .names import tokenizer_files, write_into


@contextlib.contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def hf_config(config: dict[str, Any]):
    from transformers import AutoConfig

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise AprError("model config has no model_type")
    with quiet_transformers():
        try:
            return AutoConfig.for_model(model_type, **cfg)
        except (ValueError, KeyError) as exc:
            raise AprError(f"transformers does not know model type {model_type!r}: {exc}") from None


def causal_lm_class(config: dict[str, Any]):
    """The transformers class for a causal-LM config (architectures[0] if given)."""
    import transformers
    from transformers import AutoModelForCausalLM

    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    cfg = hf_config(config)
    try:
        return AutoModelForCausalLM._model_mapping[type(cfg)]
    except KeyError:
        raise AprError(f"no causal-LM class for model type {config.get('model_type')!r}") from None


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device while buffers (rotary tables) stay real."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(self, name, param):
        original(self, name, param)
        if param is not None and not param.is_meta:
            self._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def meta_model(config: dict[str, Any], buffers: bool = True):
    """An instance of the model class whose parameters take no memory (names, shapes, buffers).

    With ``buffers=False`` the buffers (rotary tables) are on the meta device too, so nothing
    at all is allocated whatever sizes the config claims: for checking shapes only."""
    import torch

    cls = causal_lm_class(config)
    place = _parameters_on_meta() if buffers else torch.device("meta")
    with place, quiet_transformers():
        return cls(hf_config(config))


def to_transformers(model: Model, dtype: str = "float32", device: str = "cpu"):
    """Build the transformers module for ``model`` with its weights, in eval mode.

    Quantized tensors are not expanded: their linear and embedding layers are
    replaced by modules that dequantize one weight per call (apr_core.quant.modules).
    """
    import torch

    tdtype = getattr(torch, dtype)
    module = meta_model(model.config)
    expected = module.state_dict()
    state = {}
    quantized = {}
    for name in expected:
        if name in model.tensors:
            spec = model.spec(name)
            if spec.dt.quantized:  # stays in its stored bytes; dequantized per matmul or lookup
                quantized[name] = (model.tensor(name).to(device), spec)
            else:
                state[name] = model.tensor(name).to(device=device, dtype=tdtype)
    tied = bool(getattr(module.config, "tie_word_embeddings", False))
    provided: set[str] = set()
    if quantized:
        from .quant.modules import install

        embedding = module.get_input_embeddings()
        embedding_name = next(n for n, m in module.named_modules() if m is embedding) + ".weight"
        provided = install(module, quantized, state, tie_output=tied)
        tied = tied and embedding_name not in quantized  # else install already shares its bytes
    missing = [n for n in expected if n not in state and n not in provided]
    missing = [n for n in missing if not (tied and n == "lm_head.weight")]
    if missing:
        raise AprError(f"model has no tensor {missing[0]} ({len(missing)} missing) for {type(module).__name__}")
    with quiet_transformers():
        module.load_state_dict(state, strict=False, assign=True)
        if tied:
            module.tie_weights()
    leftovers = [n for n, p in module.named_parameters() if p.is_meta]
    if leftovers:
        raise AprError(f"model has no tensor {leftovers[0]} for {type(module).__name__}")
    return module.to(device=device, dtype=tdtype).eval()


def load_tokenizer(model: Model):
    """A transformers tokenizer built from the model's tokenizer files."""
    from transformers import AutoTokenizer

    if not model.tokenizer:
        raise AprError(f"{model.source}: model has no tokenizer files")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tokenizer_files(model.tokenizer, str(model.source)).items():
            write_into(tmp, name, data, str(model.source))
        (Path(tmp) / "config.json").write_text(json.dumps(model.config))
        with quiet_transformers():
            try:
                return AutoTokenizer.from_pretrained(tmp)
            except Exception as exc:  # transformers raises many types for files it cannot use
                raise AprError(f"{model.source}: its tokenizer files do not load in transformers: "
                               f"{first_line(exc)}") from None
