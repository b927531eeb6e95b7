"""The trainable network of each method, built from a `Model` on the run's device.

- ``full``: every weight trainable, float32 master weights (autocast does bf16 compute on GPUs);
- ``lora``: the base frozen in the compute dtype (bf16 on GPUs, float32 on the CPU), peft LoRA
  adapters in float32 on the target linears;
- ``qlora``: every linear of the decoder layers replaced by a bitsandbytes ``Linear4bit`` (NF4,
  blocks of 64, double quantization of the scales by default) computing in the compute dtype,
  quantized one layer at a time as it is loaded, so the full-precision model never exists
  whole; peft LoRA adapters in float32 on top.

`CausalLMLoss` wraps the causal LM so that its forward returns the summed next-token loss over
the answer tokens and their count, with the LM head and cross-entropy chunked
(`apr_core.runtime.loss`): the trainer (and DDP) call that forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from apr_core.errors import AprError
from apr_core.runtime.startup import quiet_bitsandbytes


class CausalLMLoss(nn.Module):
    """``forward(ids, attention_mask, target_mask) -> (summed loss, target count)``."""

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids, attention_mask, target_mask):
        from apr_core.runtime.loss import next_token_loss, softcap_of, training_chunk

        hidden = self.lm.get_decoder()(input_ids=ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return next_token_loss(hidden, self.lm.get_output_embeddings(), ids, target_mask, softcap_of(self.lm),
                               training_chunk(hidden.device.type))


def nf4_model(model, device: str, compute_dtype: str, double_quant: bool, blocksize: int = 64):
    """The causal LM with every decoder linear as NF4 ``Linear4bit`` (see the module docstring)."""
    with quiet_bitsandbytes():
        import bitsandbytes as bnb

    from apr_core.quant.convert import float_tensor
    from apr_core.torch_bridge import meta_model, quiet_transformers

    from .adapter import decoder_linears

    dtype = getattr(torch, compute_dtype)
    lm = meta_model(model.config)
    expected = list(lm.state_dict())
    targets = set(decoder_linears(model))
    quantized: set[str] = set()
    for name, mod in list(lm.named_modules()):
        weight = name + ".weight"
        if not (isinstance(mod, nn.Linear) and weight in targets):
            continue
        q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None, compute_dtype=dtype,
                              compress_statistics=double_quant, quant_type="nf4", device="meta")
        # bitsandbytes repacks the weight for its AVX512-BF16 CPU kernel the first time it runs in eval
        # mode; that kernel has no autograd (training after an evaluation would lose the gradients that
        # flow through frozen layers) and rounds differently. Keep the exact dequantize path.
        q.support_avx512bf16_for_cpu = False
        q.weight = bnb.nn.Params4bit(float_tensor(model.tensors[weight]).to(dtype), requires_grad=False,
                                     compress_statistics=double_quant, quant_type="nf4", blocksize=blocksize)
        with quiet_bitsandbytes():
            q.weight = q.weight.to(device)  # quantizes on the device
        if mod.bias is not None:
            q.bias = nn.Parameter(model.tensor(name + ".bias").to(device, dtype), requires_grad=False)
            quantized.add(name + ".bias")
        parent, _, child = name.rpartition(".")
        setattr(lm.get_submodule(parent), child, q)
        quantized.add(weight)
    state = {n: float_tensor(model.tensors[n]).to(device, dtype) for n in expected
             if n not in quantized and n in model.tensors}
    with quiet_transformers():
        lm.load_state_dict(state, strict=False, assign=True)
        if getattr(lm.config, "tie_word_embeddings", False):
            lm.tie_weights()
    for name, buf in list(lm.named_buffers()):  # rotary tables were built on the CPU
        owner, _, leaf = name.rpartition(".")
        (lm.get_submodule(owner) if owner else lm)._buffers[leaf] = buf.to(device)
    left = [n for n, p in lm.named_parameters() if p.is_meta]
    if left:
        raise AprError(f"model has no tensor {left[0]} for {type(lm).__name__}")
    return lm


def base_model(model, method: str, context, double_quant: bool = True):
    """The causal LM a method trains (frozen for the adapter methods)."""
    from apr_core.torch_bridge import to_transformers

    compute = context.compute_dtype()
    if method == "qlora":
        lm = nf4_model(model, context.device, compute, double_quant)
    elif method == "lora":
        lm = to_transformers(model, dtype=compute, device=context.device)
    else:
        lm = to_transformers(model, dtype="float32", device=context.device)
    lm.config.use_cache = False
    lm.requires_grad_(method == "full")
    return lm


def with_lora(lm, rank: int, alpha: float, dropout: float, targets: list[str] | str, seed: int):
    """peft LoRA adapters on ``lm`` (initialised from ``seed``); returns the peft model."""
    with quiet_bitsandbytes():
        from peft import LoraConfig, get_peft_model

    import warnings

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(lm, config)
    except ValueError as exc:
        raise AprError(f"--target-modules: {str(exc).splitlines()[0][:200]}") from None


def enable_checkpointing(lm) -> None:
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def lora_state(peft_model) -> dict[str, Any]:
    """The adapter's tensors under peft's saved names (``base_model.model.<module>.lora_A.weight``).

    Embedding layers are never adapted here, so peft's "did the vocabulary change" probe (which
    looks for the base's config on disk or on the Hub) is skipped."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def load_lora_state(peft_model, state: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise AprError(f"checkpoint holds tensors this adapter does not have: {unexpected[0]}")
