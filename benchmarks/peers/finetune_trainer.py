#!/usr/bin/env python3
"""The baseline of benchmarks/finetune.py: what a user writes with transformers' Trainer and peft.

    python benchmarks/peers/finetune_trainer.py --model HF_DIR --data tokens.jsonl --out DIR
        --method lora|qlora|full [--rank 16 --alpha 32 --targets q_proj,v_proj] --steps N
        --batch-size B --grad-accum A --learning-rate LR [--warmup-ratio R]

``tokens.jsonl`` holds pre-tokenized examples (``input_ids`` and ``labels`` with -100 on the
prompt), in the order apr's first epoch visits them, and the Trainer reads them in that order
(``train_sampling_strategy="sequential"``), so both sides train on identical batches. LoRA
through ``get_peft_model``; QLoRA by loading the model with ``BitsAndBytesConfig(load_in_4bit=True,
nf4, double quantization)`` and ``prepare_model_for_kbit_training``; full with every weight
trainable. Prints one JSON line: the seconds of the training loop and the tokens trained on.
Written for this benchmark; not part of apr.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    for name, kind, default in (("model", str, None), ("data", str, None), ("out", str, None),
                                ("method", str, "lora"), ("rank", int, 16), ("alpha", float, 32.0),
                                ("targets", str, "q_proj,v_proj"), ("steps", int, 10), ("batch-size", int, 4),
                                ("grad-accum", int, 1), ("learning-rate", float, 2e-4), ("warmup-ratio", float, 0.03),
                                ("seed", int, 0)):
        ap.add_argument(f"--{name}", type=kind, default=default, required=default is None and kind is str)
    args = ap.parse_args()

    import torch
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, PreTrainedTokenizerFast, Trainer,
                              TrainerCallback, TrainingArguments)

    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [json.loads(line) for line in open(args.data)]
    kwargs = {"dtype": torch.float32}
    if args.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if args.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if args.method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                                                 target_modules=args.targets.split(","), task_type="CAUSAL_LM"))
    train_args = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.learning_rate,
        warmup_steps=round(args.warmup_ratio * args.steps), lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
        train_sampling_strategy="sequential")
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    seen, clock, steps = 0, {}, []

    class Counting(Trainer):
        """Counts the tokens of the batches actually trained on. (Counting in the collator would
        also count the batch accelerate's data loader fetches ahead to detect the end: one
        step's worth more than was trained.)"""

        def training_step(self, model, inputs, *args, **kwargs):
            nonlocal seen
            seen += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        """Times the training loop only, as apr's report does (not the Trainer's set-up), and
        each optimizer step's end with the tokens trained on so far."""

        def on_train_begin(self, *args, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            steps.append((time.perf_counter() - clock["start"], seen))

        def on_train_end(self, *args, **kwargs):
            clock["end"] = time.perf_counter()

    trainer = Counting(model=model, args=train_args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
    result = trainer.train()
    seconds = clock["end"] - clock["start"]
    model.save_pretrained(args.out)
    print(json.dumps({"seconds": round(seconds, 3), "train_loss": result.training_loss,
                      "tokens": seen, "tokens_per_second": round(seen / seconds, 2),
                      "steps": [{"seconds": round(t, 3), "tokens": n} for t, n in steps]}))


if __name__ == "__main__":
    main()
