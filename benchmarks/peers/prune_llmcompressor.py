#!/usr/bin/env python3
"""The peer of benchmarks/prune.py: Wanda / SparseGPT with llm-compressor's ``oneshot``.

    runs/peers/llmcompressor/bin/python benchmarks/peers/prune_llmcompressor.py --model HF_DIR
        --windows windows.jsonl --method wanda|sparsegpt [--pattern unstructured|2:4] [--ratio 0.5]
        --out DIR

``windows.jsonl`` holds one calibration window per line (``input_ids``), the same token ids apr
reads with ``--calibration windows.jsonl``, so both sides calibrate on identical tokens. The
model is loaded in float32 (apr computes in float32 on the CPU), pruned with
``WandaPruningModifier`` or ``SparseGPTModifier`` (llm-compressor's defaults otherwise:
block 128, dampening 0.01, every Linear but ``lm_head``, which apr leaves dense too) and saved uncompressed
(dense safetensors, ``save_compressed=False``) next to the tokenizer, so one perplexity code can
read it. Prints one JSON line. Runs in its own venv (runs/peers/llmcompressor), never in
apr's. Written for this benchmark; not part of apr.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--windows", required=True)
    ap.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    windows = [json.loads(line)["input_ids"] for line in open(args.windows) if line.strip()]
    seq_len = len(windows[0])
    data = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    structure = "0:0" if args.pattern == "unstructured" else args.pattern
    cls = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    # apr prunes the decoder linears only; the (tied) LM head stays dense on both sides
    recipe = cls(sparsity=args.ratio, mask_structure=structure, ignore=["lm_head"])
    oneshot(model=model, tokenizer=tokenizer, dataset=data, recipe=recipe, num_calibration_samples=len(windows),
            max_seq_length=seq_len, shuffle_calibration_samples=False)
    model.save_pretrained(args.out, save_compressed=False)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 3), "windows": len(windows),
                      "seq_len": seq_len}))


if __name__ == "__main__":
    main()
