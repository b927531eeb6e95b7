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
# Elements per block of the TIES reference: its temporaries fit in a core's cache.
_BLOCK = 1 << 16


def philox4x32(counter, seed: int):
    """The four 32-bit Philox4x32-10 words (numpy uint32 arrays) for a uint64 array of ``counter``s."""
    even, odd = philox_pairs(counter, seed)
    return even[0], odd[0], even[1], odd[1]


def philox_pairs(counter, seed: int):
    """Philox4x32-10 of each counter as two (2, n) uint32 arrays: words (0, 2) and words (1, 3).

    Counter words are (counter lo, counter hi, 0, 0) and the key is (seed lo, seed hi), as
    ``tl.randint4x(seed, counter)`` builds them. Words 0 and 2 are the round's two multiplicands,
    kept stacked so that both 32x32-bit products are one numpy call (exact in uint64, against a
    (2, 1) column of the two multipliers), and both xors another two: numpy's per-call cost is a
    third of a round at these sizes, so stacking makes the stream about 15% faster than two
    separate lanes. A product's low and high halves are read as strided uint32 views of it
    (little-endian), with no masking or shifting; rounds alternate between two product buffers
    (a round's words 1 and 3 are views of the previous round's products).
    """
    import numpy as np

    n = counter.size
    products = [np.empty((2, n), dtype=np.uint64) for _ in range(2)]
    mul = np.array([[ROUND_A], [ROUND_B]], dtype=np.uint64)
    key = np.empty((2, 1), dtype=np.uint32)
    k0, k1 = seed & M32, (seed >> 32) & M32
    # Round 1: the counter's upper words are zero, so only word 0 is multiplied.
    first = products[1][0]
    np.multiply((counter & np.uint64(M32)).astype(np.uint32), mul[0], out=first)
    even = np.empty((2, n), dtype=np.uint32)
    np.bitwise_xor((counter >> np.uint64(32)).astype(np.uint32), np.uint32(k0), out=even[0])
    np.bitwise_xor(first.view(np.uint32)[1::2], np.uint32(k1), out=even[1])  # hi(0 * b) = 0
    odd = np.zeros((2, n), dtype=np.uint32)
    odd[1] = first.view(np.uint32)[0::2]
    for r in range(1, ROUNDS):
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
        product = products[r & 1]
        np.multiply(even, mul, out=product)  # (w0 * a, w2 * b)
        halves = product.view(np.uint32)[::-1]  # rows (w2 * b, w0 * a), as (lo, hi) pairs
        key[0, 0], key[1, 0] = k0, k1
        np.bitwise_xor(halves[:, 1::2], odd, out=even)  # (hi(w2 b) ^ w1, hi(w0 a) ^ w3)
        even ^= key
        odd = halves[:, 0::2]  # (lo(w2 b), lo(w0 a))
    return even, odd


def _lanes(seed: int, offset: int, n: int, fill):
    """Calls ``fill(even, odd, first, stop)`` per block of counters covering elements
    offset..offset+n-1 (`philox_pairs`' words of counters first..stop-1, relative to the range's
    first counter).

    Returns (first counter, lead): element j of the range is element 4 * (counter - first) + lane - lead
    of the interleaved result.
    """
    import numpy as np

    first, last = offset >> 2, (offset + n - 1) >> 2
    for start in range(first, last + 1, _CHUNK):
        stop = min(start + _CHUNK, last + 1)
        fill(*philox_pairs(np.arange(start, stop, dtype=np.uint64), seed), start - first, stop - first)
    return first, offset & 3


def random_words(seed: int, offset: int, n: int, device=None):
    """32-bit random words (int64 tensor) for elements ``offset .. offset+n-1`` of a stream."""
    import numpy as np
    import torch

    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    count = ((offset + n - 1) >> 2) + 1 - (offset >> 2)
    words = np.empty((count, 4), dtype=np.uint64)

    def fill(even, odd, lo, hi):
        words[lo:hi, 0::2] = even.T
        words[lo:hi, 1::2] = odd.T

    _, lead = _lanes(seed, offset, n, fill)
    return torch.from_numpy(words.reshape(-1).view(np.int64)[lead:lead + n]).to(device)


def keep_bits(seed: int, offset: int, n: int, threshold: int):
    """int32 tensor: -1 (all bits set) where element ``offset + j`` survives (random word >=
    ``threshold``), 0 where it is dropped. ANDed with a float32's bits it keeps or zeroes it."""
    import numpy as np
    import torch

    if n == 0 or threshold <= 0:
        return torch.full((n,), -1, dtype=torch.int32)
    if threshold > M32:
        return torch.zeros(n, dtype=torch.int32)
    count = ((offset + n - 1) >> 2) + 1 - (offset >> 2)
    keep = np.empty((count, 4), dtype=np.int32)
    t = np.uint32(threshold)

    def fill(even, odd, lo, hi):
        np.greater_equal(even, t, out=keep[lo:hi, 0::2].T, casting="unsafe")
        np.greater_equal(odd, t, out=keep[lo:hi, 1::2].T, casting="unsafe")

    _, lead = _lanes(seed, offset, n, fill)
    np.negative(keep, out=keep)
    return torch.from_numpy(keep.reshape(-1)[lead:lead + n])


def drop_threshold(p: float) -> int:
    """Entries whose random word is below this are dropped: round(p * 2**32)."""
    return min(1 << 32, max(0, round(p * 4294967296.0)))


def rescale(p: float) -> float:
    """The survivors' factor 1/(1-p), rounded once to float32 so every device uses the same value."""
    import struct

    return struct.unpack("<f", struct.pack("<f", 1.0 / (1.0 - p)))[0]


def dare_(delta, p: float, seed: int, offset: int = 0):
    """DARE in place on a flat float tensor: drop with probability ``p``, scale survivors by 1/(1-p).

    ``where(words >= threshold, delta * scale, +0)``. For float32 it is done on the bits:
    delta * scale ANDed with `keep_bits` (all ones or +0's zero bits), exact for every value,
    NaN and inf included, and several times faster than torch's CPU where.
    """
    import torch

    scaled = delta.mul_(torch.tensor(rescale(p), dtype=delta.dtype))
    keep = keep_bits(seed, offset, delta.numel(), drop_threshold(p)).to(delta.device)
    if delta.dtype == torch.float32:
        scaled.view(torch.int32).bitwise_and_(keep)
        return delta
    delta.copy_(torch.where(keep != 0, scaled, torch.zeros_like(delta)))
    return delta


def kth_largest_magnitude(chunks, n: int, density: float) -> float:
    """Exact k-th largest |x| over the float tensors ``chunks()`` yields (``n`` elements in all).

    `radix_select` over histograms of the chunks' float32 bit patterns. Memory is one chunk,
    whatever ``n`` is, so a tensor's task vector never has to exist in full. ``chunks`` is called
    twice.
    """
    import torch

    buffer = None

    def bits(chunk):
        """|chunk|'s float32 bit patterns, in one buffer reused for every chunk (fresh ones fault in)."""
        nonlocal buffer
        chunk = chunk.reshape(-1)
        if buffer is None or buffer.numel() < chunk.numel() or buffer.device != chunk.device:
            buffer = torch.empty(chunk.numel(), dtype=torch.float32, device=chunk.device)
        return torch.abs(chunk.float(), out=buffer[:chunk.numel()]).view(torch.int32)

    def count(bucket):
        if bucket is None:
            high = torch.zeros(1 << 16, dtype=torch.int64)
            for chunk in chunks():
                high += torch.bincount(bits(chunk).bitwise_right_shift_(16), minlength=1 << 16).cpu()
            return high
        # Bin 1 + the low 16 bits for the bucket's elements, 0 below it, 2**16 + 1 above: a clamp
        # instead of selecting the bucket's elements, which costs several times more.
        low = torch.zeros((1 << 16) + 2, dtype=torch.int64)
        for chunk in chunks():
            b = bits(chunk).sub_(bucket << 16).clamp_(-1, 1 << 16).add_(1)
            low += torch.bincount(b, minlength=(1 << 16) + 2).cpu()
        return low[1:-1]

    return radix_select(count, n, density)


def radix_select(count, n: int, density: float) -> float:
    """The k-th largest of ``n`` non-negative float32 values, from two histograms of their bits.

    Non-negative floats order like their bit patterns, so a two-pass radix select finds it:
    ``count(None)`` gives the (int64, 2**16) counts of the upper 16 bits, and ``count(bucket)``
    the counts of the lower 16 bits among the values whose upper bits are ``bucket``.

    k = max(1, floor(density * n)), mergekit's count; TIES keeps every |x| >= the result.
    """
    import torch

    if n == 0:
        return math.inf
    k = min(n, max(1, math.floor(density * n)))
    if k == n:
        return 0.0
    bucket, rank = _from_top(count(None), k)
    sub, _ = _from_top(count(bucket), rank)
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

    Worked in cache-sized blocks. Each block first takes `_ties_block_arith`, which gives the
    same bits with float arithmetic only (torch's CPU where/compare kernels are several times
    slower than its arithmetic ones); a block it cannot vouch for (non-finite values, negative
    weights, thresholds that are not float32) takes `_ties_block_where`, the definition as written.
    """
    import numpy as np
    import torch

    k, n = deltas.shape
    w = [torch.tensor(float(weights[i]), dtype=deltas.dtype, device=deltas.device) for i in range(k)]
    arith = deltas.dtype == torch.float32 and all(math.isfinite(float(x)) and float(x) >= 0 for x in w)
    shrink = []  # hardshrink's lambda: zeroes -l <= d <= l, i.e. |d| < t for l = the float32 below t
    for t in thresholds:
        t = float(t)
        arith = arith and t >= 0 and float(np.float32(t)) == t
        shrink.append(None if not arith or t == 0 else float(np.nextafter(np.float32(t), np.float32(0))))
    out = torch.empty(n, dtype=deltas.dtype, device=deltas.device)
    for start in range(0, n, _BLOCK):
        rows = deltas[:, start:start + _BLOCK]
        block = _ties_block_arith(rows, shrink, w, normalize) if arith else None
        out[start:start + _BLOCK] = block if block is not None else _ties_block_where(rows, thresholds, w, normalize)
    return out


def _ties_block_where(rows, thresholds, w, normalize: bool):
    """One block of `ties_combine`, written as the definition (sums start at +0, inputs in order)."""
    import torch

    k = rows.shape[0]
    trimmed = [torch.where(rows[i].abs() >= float(thresholds[i]), rows[i], 0.0) for i in range(k)]
    weighted = [w[i] * trimmed[i] for i in range(k)]
    total = torch.zeros_like(trimmed[0])
    for x in weighted:
        total.add_(x)
    sign = total.sign_()
    num = torch.zeros_like(total)
    den = torch.zeros_like(total)
    for i in range(k):
        agree = torch.mul(trimmed[i], sign) > 0
        num.add_(torch.where(agree, weighted[i], 0.0))
        den.add_(torch.where(agree, w[i], 0.0))
    if not normalize:
        return num
    none = ~(den > 0)
    return num.div_(den.masked_fill_(none, 1.0)).masked_fill_(none, 0.0)


def _ties_block_arith(rows, shrink, w, normalize: bool):
    """`_ties_block_where`'s bits from arithmetic alone, or None where that is not guaranteed.

    For finite task vectors and weights w_i >= 0 (checked: the weighted total must be finite):
    hardshrink(d, l) is the trim; r_i = max(d_i * s, 0) is |d_i| where d_i agrees with s and
    +-0 elsewhere, so w_i * (r_i * s) is w_i d_i or +-0 and w_i * sign(r_i) is w_i or +-0; a sum
    from +0 of terms of one sign never becomes -0, so adding +-0 changes nothing, as the where
    form's +0 does not. den >= 0, so den + (1 - sign(den)) is den, or 1 where den is 0 (and num
    is +0 there, which num / 1 keeps).
    """
    import torch
    import torch.nn.functional as F

    trimmed = [row if lam is None else F.hardshrink(row, lam) for row, lam in zip(rows, shrink)]
    total = torch.zeros_like(trimmed[0])
    for i, t in enumerate(trimmed):
        total.add_(w[i] * t)
    if not math.isfinite(float(total.sum())):
        return None
    sign = total.sign_()
    num = torch.zeros_like(total)
    den = torch.zeros_like(total) if normalize else None
    for i, t in enumerate(trimmed):
        r = torch.mul(t, sign).clamp_min_(0)
        if normalize:
            den.add_(torch.sign(r).mul_(w[i]))
        num.add_(r.mul_(sign).mul_(w[i]))
    if not normalize:
        return num
    return num.div_(torch.sign(den).neg_().add_(1).add_(den))
