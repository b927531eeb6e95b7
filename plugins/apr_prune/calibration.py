"""Calibration token windows for data-aware pruning.

Default: 128 windows sampled from the built-in ``stdlib-calibration`` corpus
(Python standard-library modules disjoint from the ``stdlib-code`` evaluation
set). ``--calibration FILE`` takes a jsonl with a text field (or raw text).
Window starts are drawn with a seeded generator, as the Wanda and SparseGPT
code samples random windows of C4.
"""

from __future__ import annotations

from apr_core.corpora import load_corpus
from apr_core.errors import AprError


def calibration_windows(model, source: str | None, samples: int, seq_len: int, seed: int):
    """``samples`` x ``seq_len`` token ids (LongTensor) drawn from the calibration text."""
    import torch

    from apr_core.torch_bridge import load_tokenizer, quiet_transformers

    corpus = load_corpus(source or "stdlib-calibration")
    tokenizer = load_tokenizer(model)
    with quiet_transformers():
        ids = tokenizer(corpus.text, return_attention_mask=False)["input_ids"]
    if len(ids) <= seq_len:
        raise AprError(f"calibration data {corpus.name} has only {len(ids)} tokens; it needs more than "
                       f"--calibration-seq-len {seq_len}")
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (samples,), generator=gen)
    return torch.stack([stream[s: s + seq_len] for s in starts.tolist()])


def contract_calibration(workdir) -> dict[str, str]:
    """A tiny calibration file and options for the shared technique contract (tiny models)."""
    import json

    sample = workdir / "calibration.jsonl"
    lines = [json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 4}) for i in range(8)]
    sample.write_text("\n".join(lines) + "\n")
    return {"calibration": str(sample), "calibration_samples": "4", "calibration_seq_len": "16"}
