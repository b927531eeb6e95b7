#!/usr/bin/env python3
"""The baseline of benchmarks/inference.py: what a user writes with plain transformers.

    python benchmarks/peers/transformers_inference.py generate --model HF_DIR --prompts prompts.json
        --max-new-tokens N --batch-size B
    python benchmarks/peers/transformers_inference.py perplexity --model HF_DIR --windows windows.json
        --batch-size B

``generate``: greedy ``model.generate`` on each batch of the prompt texts (left padding, the
prompts' stop strings through ``stop_strings=``), counting the new tokens before padding/EOS.
``perplexity``: ``model(input_ids, labels=input_ids)`` over the same token windows apr
evaluates, summing loss x predicted tokens. Everything at transformers' defaults: ``from_pretrained``
with its default dtype and torch's default threads. Prints one JSON line. Written for this
benchmark; not part of apr, and it imports nothing from apr.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def generate(args) -> dict:
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    prompts = json.loads(open(args.prompts).read())
    texts, tokens, seconds = [], 0, 0.0
    for i in range(0, len(prompts), args.batch_size):
        batch = prompts[i: i + args.batch_size]
        enc = tok([p["text"] for p in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        stops = sorted({s for p in batch for s in p["stops"]})
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, stop_strings=stops or None,
                                 tokenizer=tok, pad_token_id=tok.pad_token_id)
        seconds += time.perf_counter() - start
        width = enc["input_ids"].shape[1]
        for row in range(len(batch)):
            new = out[row, width:].tolist()
            while new and new[-1] in (tok.pad_token_id, tok.eos_token_id):
                new.pop()
            tokens += len(new)
            texts.append(tok.decode(new, skip_special_tokens=True))
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds, "texts": texts,
            "dtype": str(model.dtype).replace("torch.", ""), "threads": torch.get_num_threads()}


def perplexity(args) -> dict:
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    windows = torch.tensor(json.loads(open(args.windows).read()))
    nll, count = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, windows.shape[0], args.batch_size):
            batch = windows[i: i + args.batch_size]
            loss = model(input_ids=batch, labels=batch).loss
            n = batch.shape[0] * (batch.shape[1] - 1)
            nll += float(loss) * n
            count += n
    seconds = time.perf_counter() - start
    return {"perplexity": math.exp(nll / count), "tokens": int(windows.numel()), "seconds": seconds,
            "tokens_per_second": windows.numel() / seconds, "dtype": str(model.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["generate", "perplexity"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts")
    ap.add_argument("--windows")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()
    print(json.dumps(generate(args) if args.task == "generate" else perplexity(args)))


if __name__ == "__main__":
    main()
