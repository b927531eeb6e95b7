"""Batched decoding with a KV cache (transformers ``generate``), cut at stop sequences.

Greedy when the temperature is 0, otherwise nucleus sampling at that temperature; each batch is
seeded from ``--seed`` and the batch's sample keys, so a resumed run draws the same samples for
the same keys. Left padding lets prompts of different lengths share a batch; a batch stops as
soon as every row has produced one of its stop sequences or end-of-sequence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass
class Generated:
    text: str
    tokens: int


def _stopping(tokenizer, starts: list[int], stops: list[tuple[str, ...]]):
    import torch
    from transformers import StoppingCriteria

    class StopOnSequences(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = []
            for row, ids in enumerate(input_ids):
                tail = tokenizer.decode(ids[starts[row]:], skip_special_tokens=True)
                done.append(any(s in tail for s in stops[row]))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnSequences()


def batch_seed(seed: int, keys: list[str]) -> int:
    digest = hashlib.sha256(f"{seed}|{'|'.join(keys)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generate_batch(module, tokenizer, texts: list[str], stops: list[tuple[str, ...]], *, max_new_tokens: int,
                   temperature: float, top_p: float, seed: int, add_special_tokens: bool = True) -> list[Generated]:
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    device = next(module.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    width = enc["input_ids"].shape[1]
    options = dict(max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                   stopping_criteria=[_stopping(tokenizer, [width] * len(texts), stops)])
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = module.generate(**enc, **options)
    results = []
    specials = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    for row in range(len(texts)):
        new = out[row, width:].tolist()
        count = len(new)
        while count and new[count - 1] in specials:
            count -= 1
        text = tokenizer.decode(new[:count], skip_special_tokens=True)
        results.append(Generated(text, count))
    return results
