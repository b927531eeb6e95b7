"""Token data for every technique that runs the network: encoding, evaluation windows and
calibration windows.

Text comes from `apr_core.corpora` (built-in corpora or user files), the tokenizer from the
model (`apr_core.torch_bridge.load_tokenizer`). Evaluation follows the pruning papers'
protocol: the stream is cut into non-overlapping windows and a partial last window is
dropped (`consecutive_windows`). Calibration draws window starts with a seeded generator, as
the Wanda and SparseGPT code samples random windows of C4 (`random_windows`); the default
calibration corpus is ``stdlib-calibration``, disjoint from the ``stdlib-code`` evaluation set.
"""

from __future__ import annotations

from ..errors import AprError

DEFAULT_CALIBRATION = "stdlib-calibration"


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added around it (no length warning)."""
    from ..torch_bridge import quiet_transformers

    with quiet_transformers():  # a whole corpus is longer than model_max_length by design
        return tokenizer(text, return_attention_mask=False)["input_ids"]


def consecutive_windows(ids: list[int], seq_len: int):
    """Non-overlapping windows of ``seq_len`` tokens as a LongTensor (windows x seq_len); a stream
    shorter than one window is a single window of its own length."""
    import torch

    n = len(ids) // seq_len
    if n == 0:
        return torch.tensor([ids], dtype=torch.long)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def random_windows(ids: list[int], samples: int, seq_len: int, seed: int, what: str = "data"):
    """``samples`` windows of ``seq_len`` tokens starting at seeded random positions."""
    import torch

    if len(ids) <= seq_len:
        raise AprError(f"{what} has only {len(ids)} tokens; it needs more than the window length {seq_len}")
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (samples,), generator=gen)
    return torch.stack([stream[s: s + seq_len] for s in starts.tolist()])


def calibration_windows(model, source: str | None, samples: int, seq_len: int, seed: int):
    """``samples`` x ``seq_len`` token ids drawn from the calibration text (a built-in corpus or a
    file; default ``stdlib-calibration``)."""
    from ..corpora import load_corpus
    from ..torch_bridge import load_tokenizer

    if source and source.endswith(".jsonl"):
        given = token_windows(source, samples, seq_len, model)
        if given is not None:
            return given
    corpus = load_corpus(source or DEFAULT_CALIBRATION)
    ids = encode(load_tokenizer(model), corpus.text)
    return random_windows(ids, samples, seq_len, seed, f"calibration data {corpus.name}")


def token_windows(path: str, samples: int, seq_len: int, model):
    """Pre-tokenized calibration: a jsonl whose rows carry ``input_ids`` gives its first
    ``samples`` rows as the windows, each cut to ``seq_len`` tokens (no tokenizer, no seed), so
    another tool can calibrate on exactly the same tokens. None when the rows are text."""
    import json
    from pathlib import Path

    import torch

    file = Path(path)
    if not file.is_file():
        return None
    rows = []
    with file.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise AprError(f"{path}:{number}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise AprError(f"{path}:{number}: not a JSON line") from None
            if not isinstance(row, dict) or "input_ids" not in row:
                if not rows:
                    return None  # a text corpus
                raise AprError(f"{path}:{number}: no input_ids (the first rows had token ids)")
            ids = row["input_ids"]
            if not isinstance(ids, list) or not all(type(i) is int for i in ids):
                raise AprError(f"{path}:{number}: input_ids must be a list of integers")
            if len(ids) < seq_len:
                raise AprError(f"{path}:{number}: {len(ids)} token ids, fewer than --calibration-seq-len {seq_len}")
            rows.append(ids[:seq_len])
            if len(rows) == samples:
                break
    if len(rows) < samples:
        raise AprError(f"{path} has {len(rows)} rows of token ids; --calibration-samples asks for {samples}")
    windows = torch.tensor(rows, dtype=torch.long)
    vocab = model.text_config().get("vocab_size")
    if vocab and (int(windows.max()) >= vocab or int(windows.min()) < 0):
        raise AprError(f"{path}: token ids outside the model's vocabulary (0..{vocab - 1})")
    return windows
