"""Plain-torch references for the merge kernels: the definitions the Triton code must match.

The DARE random stream is Philox4x32-10 (Salmon et al. 2011), computed here
with 64-bit integer arithmetic exactly as Triton's ``tl.randint4x`` computes
it on the GPU, so the same seed drops the same entries on CPU and GPU.
Element ``g`` of a tensor takes word ``g % 4`` of the Philox output for
counter ``g // 4`` (key = the 64-bit seed), and is dropped iff that 32-bit
word is below ``round(p * 2**32)``.
"""

from __future__ import annotations

import math

M32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
# Counters per step: the temporaries stay in cache. numpy rather than torch: torch would split
# these small integer ops across threads, and spinning workers make that 10-100x slower on a
# busy machine; numpy runs them on one thread.
_CHUNK = 1 << 13


def philox4x32(counter, seed: int):
    """The four 32-bit Philox4x32-10 words for a numpy uint64 array of ``counter``s and a 64-bit ``seed``.

    Counter words are (counter lo, counter hi, 0, 0) and the key is (seed lo, seed hi), as
    ``tl.randint4x(seed, counter)`` builds them. uint64 products of two 32-bit values are exact.
    """
    import numpy as np

    m32, s32 = np.uint64(M32), np.uint64(32)
    a, b = np.uint64(ROUND_A), np.uint64(ROUND_B)
    c0, c1 = counter & m32, counter >> s32
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(ROUNDS):
        p0, p2 = c0 * a, c2 * b
        c0, c1, c2, c3 = (p2 >> s32) ^ c1 ^ np.uint64(k0), p2 & m32, (p0 >> s32) ^ c3 ^ np.uint64(k1), p0 & m32
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
    return c0, c1, c2, c3


def random_words(seed: int, offset: int, n: int, device=None):
    """32-bit random words (int64 tensor) for elements ``offset .. offset+n-1`` of a stream."""
    import numpy as np
    import torch

    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    first, last = offset >> 2, (offset + n - 1) >> 2
    words = np.empty((last + 1 - first, 4), dtype=np.uint64)
    for start in range(first, last + 1, _CHUNK):
        stop = min(start + _CHUNK, last + 1)
        counters = np.arange(start, stop, dtype=np.uint64)
        for lane, w in enumerate(philox4x32(counters, seed)):
            words[start - first:stop - first, lane] = w
    lead = offset & 3
    return torch.from_numpy(words.reshape(-1).view(np.int64)[lead:lead + n]).to(device)


def drop_threshold(p: float) -> int:
    """Entries whose random word is below this are dropped: round(p * 2**32)."""
    return min(1 << 32, max(0, round(p * 4294967296.0)))


def rescale(p: float) -> float:
    """The survivors' factor 1/(1-p), rounded once to float32 so every device uses the same value."""
    import struct

    return struct.unpack("<f", struct.pack("<f", 1.0 / (1.0 - p)))[0]


def dare_(delta, p: float, seed: int, offset: int = 0):
    """DARE in place on a flat float tensor: drop with probability ``p``, scale survivors by 1/(1-p)."""
    import torch

    words = random_words(seed, offset, delta.numel(), delta.device)
    keep = words >= drop_threshold(p)
    scaled = delta * torch.tensor(rescale(p), dtype=delta.dtype)
    delta.copy_(torch.where(keep, scaled, torch.zeros_like(delta)))
    return delta


def kth_largest_magnitude(chunks, n: int, density: float) -> float:
    """Exact k-th largest |x| over the float tensors ``chunks()`` yields (``n`` elements in all).

    A two-pass radix select on the float32 bit patterns, which order like the values for
    non-negative floats: count the upper 16 bits, find the bucket holding the k-th largest,
    then count the lower 16 bits inside it. Memory is one chunk, whatever ``n`` is, so a
    tensor's task vector never has to exist in full. ``chunks`` is called twice.

    k = max(1, floor(density * n)), mergekit's count; TIES keeps every |x| >= the result.
    """
    import torch

    if n == 0:
        return math.inf
    k = min(n, max(1, math.floor(density * n)))
    if k == n:
        return 0.0

    def bits(chunk):
        return chunk.float().abs().view(torch.int32)

    high = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in chunks():
        high += torch.bincount((bits(chunk) >> 16).reshape(-1), minlength=1 << 16).cpu()
    bucket, rank = _from_top(high, k)
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in chunks():
        b = bits(chunk).reshape(-1)
        low += torch.bincount(b[(b >> 16) == bucket] & 0xFFFF, minlength=1 << 16).cpu()
    sub, _ = _from_top(low, rank)
    return float(torch.tensor([(bucket << 16) | sub], dtype=torch.int32).view(torch.float32))


def _from_top(counts, k: int) -> tuple[int, int]:
    """The bucket holding the k-th largest element, and that element's rank inside the bucket."""
    import torch

    above = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])  # elements in buckets >= i
    bucket = int(torch.nonzero(above >= k).max())
    beyond = int(above[bucket + 1]) if bucket + 1 < len(counts) else 0
    return bucket, k - beyond


def ties_combine(deltas, thresholds, weights, normalize: bool):
    """TIES on stacked flat task vectors ``deltas[K, n]`` (Yadav et al. 2023).

    trim: d_i = delta_i where |delta_i| >= thresholds[i], else 0;
    elect: s = sign(sum_i w_i d_i) (the sign with the larger total weighted magnitude);
    disjoint merge: sum of w_i d_i over the i whose d_i has sign s, divided by the sum
    of those w_i when ``normalize`` (0 where no input agrees).
    """
    import torch

    k = deltas.shape[0]
    trimmed = [torch.where(deltas[i].abs() >= float(thresholds[i]), deltas[i], torch.zeros_like(deltas[i]))
               for i in range(k)]
    w = [torch.tensor(float(weights[i]), dtype=deltas.dtype) for i in range(k)]
    total = torch.zeros_like(deltas[0])
    for i in range(k):
        total = total + w[i] * trimmed[i]
    sign = torch.sign(total)
    num = torch.zeros_like(total)
    den = torch.zeros_like(total)
    for i in range(k):
        agree = (trimmed[i] * sign) > 0
        num = num + torch.where(agree, w[i] * trimmed[i], torch.zeros_like(num))
        den = den + torch.where(agree, w[i], torch.zeros_like(den))
    if not normalize:
        return num
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
