"""The parameters of ``apr finetune``: shared by every method (the kind's options) and per method.

Defaults follow the playbook's table for code models (LoRA rank 16, alpha 2 x rank, target
modules q_proj and v_proj, learning rate 2e-4 for adapters) and common practice elsewhere
(2e-5 for full fine-tuning, 3% warmup, cosine decay, clipping at 1.0).
"""

from __future__ import annotations

from apr_core.params import Param, Search

DATA = Param("data", "path", None, "Training jsonl: instruction/input/output, prompt/completion, messages or "
             "text per line (docs/finetune.md)")
EVAL_DATA = Param("eval_data", "path", None, "Held-out jsonl for the eval loss (default: --eval-split of --data)")
EVAL_SPLIT = Param("eval_split", "float", 0.05, "Fraction of --data held out for the eval loss when --eval-data "
                   "is not given (0 disables)", min=0, max=1, max_exclusive=True)
EPOCHS = Param("epochs", "int", 3, "Passes over the training data", min=1)
MAX_STEPS = Param("max_steps", "int", None, "Stop after this many optimizer steps (caps --epochs)", min=1)
BATCH = Param("batch_size", "int", 4, "Examples per micro-batch", min=1)
ACCUM = Param("grad_accum", "int", 1, "Micro-batches per optimizer step (per process)", min=1)
SEQ = Param("max_seq_len", "int", 1024, "Tokens per example; longer ones are cut", min=8)
PACKING = Param("packing", "bool", False, "Concatenate short examples into --max-seq-len sequences")
TRAIN_ON_PROMPT = Param("train_on_prompt", "bool", False, "Count prompt tokens in the loss too (default: answers only)")
CHAT = Param("chat", "bool", None, "Render prompts with the chat template (default: when the model has one)")
WARMUP = Param("warmup_ratio", "float", 0.03, "Fraction of the steps spent warming the learning rate up",
               min=0, max=1)
DECAY = Param("weight_decay", "float", 0.0, "AdamW weight decay", min=0)
CLIP = Param("max_grad_norm", "float", 1.0, "Clip the gradient norm to this (0 disables)", min=0)
OPTIMIZER = Param("optimizer", "choice", "adamw", "adamw, or bitsandbytes' 8-bit / paged 8-bit AdamW (CUDA)",
                  choices=("adamw", "adamw-8bit", "paged-adamw-8bit"))
EVAL_STEPS = Param("eval_steps", "int", None, "Measure the held-out loss every N steps (and at the end)", min=1,
                   recorded=False)
SAVE_STEPS = Param("save_steps", "int", 50, "Write a checkpoint every N optimizer steps", min=1, recorded=False)
CHECKPOINTING = Param("gradient_checkpointing", "bool", False, "Recompute activations in the backward pass "
                      "(less memory, about a third more compute)")
RESUME = Param("resume", "bool", False, "Continue an interrupted run from its last checkpoint", recorded=False)
VRAM = Param("vram", "float", None, "GPU memory budget in GB: --plan and auto fit the run into it with 10% headroom",
             min=0, min_exclusive=True, recorded=False)
ADAPTER = Param("adapter", "path", None, "A peft LoRA adapter directory: with --merge, merge it into MODEL; "
                "without, start training from it")
MERGE = Param("merge", "bool", False, "Merge --adapter into MODEL and write the merged model (no training)")

SHARED = (DATA, EVAL_DATA, EVAL_SPLIT, EPOCHS, MAX_STEPS, BATCH, ACCUM, SEQ, PACKING, TRAIN_ON_PROMPT, CHAT, WARMUP,
          DECAY, CLIP, OPTIMIZER, EVAL_STEPS, SAVE_STEPS, CHECKPOINTING, RESUME, VRAM, ADAPTER, MERGE)

RANK = Param("rank", "int", 16, "LoRA rank r", min=1, search=Search(choices=(4, 8, 16, 32, 64)))
ALPHA = Param("alpha", "float", None, "LoRA alpha (default 2 x rank); updates are scaled by alpha / r",
              min=0, min_exclusive=True, search=Search(4.0, 128.0, log=True))
DROPOUT = Param("dropout", "float", 0.05, "Dropout on the LoRA input", min=0, max=1, max_exclusive=True,
                search=Search(0.0, 0.2))
TARGETS = Param("target_modules", "str", "q_proj,v_proj", "Linear modules to adapt, comma-separated, or all-linear")
DOUBLE_QUANT = Param("double_quant", "bool", True, "Quantize the NF4 block scales too (QLoRA's double quantization)")


def learning_rate(default: float, low: float | None = None, high: float | None = None) -> Param:
    """``--learning-rate``; with ``low``/``high``, ``apr tune`` searches it on a log scale."""
    return Param("learning_rate", "float", default, "Peak learning rate", min=0, min_exclusive=True,
                 search=Search(low, high, log=True) if low is not None and high is not None else None)


#: ``apr tune`` searches the adapter methods' learning rate over 1e-5..1e-3 (log), the rank over
#: 4..64, alpha over 4..128 (log) and the dropout over 0..0.2; full fine-tuning's rate over 1e-6..1e-4
LORA = (RANK, ALPHA, DROPOUT, TARGETS, learning_rate(2e-4, 1e-5, 1e-3))
QLORA = LORA + (DOUBLE_QUANT,)
FULL = (learning_rate(2e-5, 1e-6, 1e-4),)
AUTO = (RANK, ALPHA, DROPOUT, TARGETS, learning_rate(2e-4, 1e-5, 1e-3), DOUBLE_QUANT)

#: the parameters that change what a run computes: they and the data make its fingerprint
#: (--resume, --save-steps, --eval-steps and --vram, the unrecorded ones, do not)
NOT_FINGERPRINTED = tuple(p.name for p in SHARED if not p.recorded) + ("merge",)
