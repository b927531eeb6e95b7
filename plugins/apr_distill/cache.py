"""``--cache-teacher DIR``: the teacher's softened distributions computed once, stored compactly.

For every answer-token position of every training example the cache keeps the teacher's
tempered log-probabilities of its top k ids (k = ``--cache-top-k``, at most the shared
vocabulary) and, when k is smaller than the vocabulary, the log of the remaining mass; the
student then trains against the coarse-grained distribution (`apr_distill.loss`) without the
teacher loaded. With k = the vocabulary it is the live teacher's distribution (to fp16 rounding).

Layout of DIR (written atomically, `apr_core.atomic.atomic_dir`):

- ``ids.bin``: the top-k ids, bit-packed at ceil(log2 vocabulary) bits each (16 for a 49152-token
  vocabulary, 18 for 151936), one byte-aligned block per example;
- ``logp.bin``: float16 log-probabilities, k per position (plus the rest-mass column);
- ``index.json``: the key (teachers, their weights, temperature, k, shared ids, a hash of the
  tokenized examples), per example its ids hash, first position, position count, byte offset and
  the teacher's mean cross-entropy on its answer tokens (used by ``progressive``), and the size
  in bytes per token.

At k = 64 that is 64 x (16 + 16) bits + 2 bytes = 258 bytes per token for SmolLM2's vocabulary
(the issue's aim of 130 would need 8-bit log-probabilities or entropy coding; see docs/distill.md).
A directory holding another key is refused, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from apr_core.errors import AprError

INDEX = "index.json"


def example_key(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:24]


def examples_digest(examples) -> str:
    """A hash of the set of examples (ids and answer masks), independent of their order."""
    h = hashlib.sha256()
    for digest in sorted(example_key(e.ids) + example_key(e.mask) for e in examples):
        h.update(digest.encode())
    return h.hexdigest()


def pack_ids(ids: np.ndarray, bits: int) -> bytes:
    """Unsigned ids (any shape) as a big-endian bit stream of ``bits`` bits each."""
    flat = ids.astype(">u4").reshape(-1)
    unpacked = np.unpackbits(flat.view(np.uint8)).reshape(-1, 32)[:, 32 - bits:]
    return np.packbits(unpacked.reshape(-1)).tobytes()


def unpack_ids(blob: bytes, count: int, bits: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return stream.astype(np.int64) @ weights


def target_positions(example) -> list[int]:
    """Positions t whose next token t + 1 is an answer token (what the loss counts)."""
    return [t for t in range(len(example.ids) - 1) if example.mask[t + 1]]


def scan(teachers, examples, batch_size: int, device: str, top_k: int | None, progress=None):
    """Run the live teachers over ``examples``; yield per example (mean teacher CE at T = 1 on its
    answer tokens, top-k ids, top-k log-probs with the rest column) — the last two None without
    ``top_k``."""
    import torch
    import torch.nn.functional as F

    from apr_core.runtime.trainer import collate

    starts = range(0, len(examples), batch_size)
    for b in (progress(starts, desc="teacher pass", total=len(starts)) if progress else starts):
        batch = examples[b: b + batch_size]
        ids, attn, mask = collate(batch, device)
        with torch.no_grad():
            hidden = teachers.extras(ids, attn, mask)
            for row, e in enumerate(batch):
                pos = torch.tensor(target_positions(e), device=ids.device)
                keep = torch.zeros_like(mask)
                keep[row, pos] = True
                logits = teachers.logits(hidden, keep)
                labels = ids[row, pos + 1]
                ce = sum(F.cross_entropy(z, labels, reduction="mean") for z in logits) / len(logits)
                if top_k is None:
                    yield float(ce), None, None
                    continue
                logp = teachers.mixture(logits)
                k = min(top_k, logp.shape[-1])
                values, top = logp.topk(k, dim=-1)
                if k < logp.shape[-1]:
                    rest = torch.logsumexp(logp.scatter(-1, top, float("-inf")), dim=-1, keepdim=True)
                    values = torch.cat([values, rest], dim=-1)
                yield float(ce), top.cpu().numpy(), values.float().cpu().numpy()


class TeacherCache:
    """An open cache directory (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.index = json.loads((self.dir / INDEX).read_text())
        self.k, self.bits, self.columns = self.index["k"], self.index["bits"], self.index["columns"]
        self.rows = {e["key"]: e for e in self.index["examples"]}
        self.ids_blob = np.memmap(self.dir / "ids.bin", dtype=np.uint8, mode="r") \
            if (self.dir / "ids.bin").stat().st_size else np.zeros(0, np.uint8)
        self.logp = np.memmap(self.dir / "logp.bin", dtype=np.float16, mode="r").reshape(-1, self.columns)

    @property
    def teacher_losses(self) -> dict[str, float]:
        return {e["key"]: e["teacher_loss"] for e in self.index["examples"]}

    def entry(self, key: str):
        e = self.rows.get(key)
        if e is None:
            raise AprError(f"{self.dir}: no cached teacher output for an example of this run; delete the "
                           f"directory to rebuild it")
        n = e["positions"]
        blob = bytes(self.ids_blob[e["byte"]: e["byte"] + e["bytes"]])
        ids = unpack_ids(blob, n * self.k, self.bits).reshape(n, self.k)
        return ids, np.asarray(self.logp[e["first"]: e["first"] + n], dtype=np.float32)

    def dense(self, ids, attention_mask, target_mask):
        """(top-k ids, log-probs) as batch x seq x k tensors aligned with the positions the loss counts."""
        import torch

        B, S = ids.shape
        out_ids = torch.zeros(B, S, self.k, dtype=torch.long)
        out_logp = torch.zeros(B, S, self.columns, dtype=torch.float32)
        for row in range(B):
            n = int(attention_mask[row].sum())
            cached_ids, cached_logp = self.entry(example_key(ids[row, :n].tolist()))
            pos = torch.nonzero(target_mask[row, 1:n], as_tuple=True)[0].cpu()
            if len(pos) != len(cached_ids):
                raise AprError(f"{self.dir}: cached positions do not match this run's answer mask; delete it")
            out_ids[row, pos] = torch.from_numpy(cached_ids)
            out_logp[row, pos] = torch.from_numpy(cached_logp)
        return out_ids.to(ids.device), out_logp.to(ids.device)


def cache_key(teacher_models, weights, temperature: float, top_k: int, shared: int, examples) -> str:
    blob = json.dumps({"teachers": [t.fingerprint() for t in teacher_models], "weights": weights,
                       "temperature": temperature, "k": top_k, "shared": shared,
                       "examples": examples_digest(examples)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def open_or_build(directory, key: str, build, context) -> tuple[TeacherCache, bool]:
    """The cache in ``directory`` if it holds ``key``; else build it with ``build(stage)`` when the
    directory does not exist. Returns (cache, built)."""
    from apr_core.atomic import atomic_dir

    import time

    from apr_core.pipeline import is_main_process

    path = Path(directory)
    while not is_main_process() and not (path / INDEX).is_file():  # rank 0 builds it; the others wait
        time.sleep(1.0)
    if (path / INDEX).is_file():
        found = json.loads((path / INDEX).read_text()).get("key")
        if found != key:
            raise AprError(f"--cache-teacher {directory} holds a cache of other teachers, data, temperature or "
                           f"--cache-top-k; delete it or give another directory")
        return TeacherCache(path), False
    if path.exists() and any(path.iterdir()):
        raise AprError(f"--cache-teacher {directory} exists and is not a teacher cache")
    with atomic_dir(path) as stage:
        build(stage)
    context.log(f"teacher cache written to {path}")
    return TeacherCache(path), True


def write(stage: Path, key: str, rows, shared: int, top_k: int, examples) -> None:
    """Write a cache from `scan`'s rows (one per example, in order) into ``stage``."""
    k = min(top_k, shared)
    bits = max(1, math.ceil(math.log2(shared)))
    columns = k + (1 if k < shared else 0)
    entries, first, byte = [], 0, 0
    seen = set()
    with open(stage / "ids.bin", "wb") as f_ids, open(stage / "logp.bin", "wb") as f_logp:
        for e, (loss, ids, logp) in zip(examples, rows):
            key_e = example_key(e.ids)
            if key_e in seen:
                continue
            seen.add(key_e)
            blob = pack_ids(ids, bits)
            f_ids.write(blob)
            f_logp.write(logp.astype(np.float16).tobytes())
            entries.append({"key": key_e, "first": first, "positions": int(len(ids)), "byte": byte,
                            "bytes": len(blob), "teacher_loss": round(loss, 6)})
            first += len(ids)
            byte += len(blob)
    total = byte + first * columns * 2
    index = {"key": key, "k": k, "bits": bits, "columns": columns, "shared": shared, "positions": first,
             "bytes": total, "bytes_per_token": round(total / max(first, 1), 2), "examples": entries}
    (stage / INDEX).write_text(json.dumps(index) + "\n")
