"""The CPU path's one read of a slice: numba kernels, compiled on first use (cached on disk).

`scan_rows` reads rows of a slice's integer view once and, per block of 64 values, from
vector code: the counts of patterns <= lo and <= hi (the sample's bracket of the median's
rank), a flag byte per value in (lo, hi] (packed into a 64-bit mask whose few set bits are
then gathered), and the block's maximum, which decides whether the block can hold a top-k
candidate. So the common case needs nothing but this pass: the median is selected from the
gathered values (`select_kth`), the top-k from the candidates. numpy could not fuse these
(each step a pass of its own over the slice).

Patterns: the sign bit of the integer view cleared (ordered like |h|), every NaN clamped to one
pattern (`clamp`, INF + 1: NaNs tie, as torch's do), a masked row's values -1 (never a
candidate, counted below both thresholds).
"""

from __future__ import annotations

import numba as nb
import numpy as np

BLOCK = 64  # values per block: one uint64 mask of those in the bracket
_DIGIT_BITS = 11  # bins per round of `select_kth`: 2048
# lowest set bit -> its index, by de Bruijn multiplication (numba has no public count-trailing-
# zeros); 0x03F79D71B4CB0A89 is a de Bruijn sequence B(2, 6)
_DEBRUIJN = 0x03F79D71B4CB0A89
_BIT_INDEX = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _BIT_INDEX[(((1 << _i) * _DEBRUIJN) % 2**64) >> 58] = _i
_DEBRUIJN = np.uint64(_DEBRUIJN)
_PACK = np.uint64(0x0102040810204080)  # 8 bytes of 0/1 -> 8 bits in the top byte


@nb.njit(nogil=True, cache=True)
def sample_patterns(x, real, rows, cols, sign_off, clamp):
    """int32 patterns of slice x [S, d] at (rows[i], cols[i]) (-1: a masked row).
    real: [S] bool, or empty for every row real."""
    out = np.empty(rows.size, dtype=np.int32)
    for i in range(rows.size):
        r = rows[i]
        if real.size and not real[r]:
            out[i] = -1
        else:
            out[i] = min(x[r, cols[i]] & sign_off, clamp)
    return out


@nb.njit(nogil=True, cache=True)
def _compact(cand_v, cand_i, nc, k):
    """Keeps the k best of the first nc candidates (largest pattern, then smallest index: the
    candidates are in index order, and stay so), returns (their number, the k-th pattern)."""
    kth = np.sort(cand_v[:nc])[nc - k]
    above = 0
    for t in range(nc):
        above += cand_v[t] > kth
    ties = k - above  # of the candidates equal to kth, the first `ties` stay
    w = 0
    for t in range(nc):
        v = cand_v[t]
        if v > kth or (v == kth and ties > 0):
            ties -= v == kth
            cand_v[w] = v
            cand_i[w] = cand_i[t]
            w += 1
    return w, kth


@nb.njit(nogil=True, inline="always")
def _add_candidates(row, j0, w, flat0, sign_off, clamp, thr, cand_v, cand_i, nc, k):
    """Appends the values of row[j0:j0 + w] above thr (flat index of row[0]: flat0) to the
    nc candidates, compacting them when full; returns (their number, the new thr)."""
    for j in range(w):
        p = min(row[j0 + j] & sign_off, clamp)
        if p > thr:
            cand_v[nc] = p
            cand_i[nc] = flat0 + j0 + j
            nc += 1
            if nc == cand_v.size:
                nc, thr = _compact(cand_v, cand_i, nc, k)
    return nc, thr


@nb.njit(nogil=True, cache=True)
def scan_rows(x, real, first_flat, limits, gather, cand_v, cand_i, k):
    """One read of rows x [R, d] (flat index of x[0, 0] in its slice: first_flat).

    real: [R] bool, or empty for every row real. limits: (sign_off, clamp, lo, hi) in the
    patterns' type, lo < hi. gather: buffer for the values in (lo, hi], in row order; once
    they would overflow it, the gather stops (returned count -1; the counts stay exact).
    cand_v / cand_i (size >= 2k): buffers of top-k candidates (pattern, flat index), compacted
    to the best k when full (k = 0: none, for reads that only count). Returns (count <= lo,
    count <= hi, gathered count or -1, candidates kept).

    Written as one flat loop on purpose: the same steps behind inlined helpers, or blocks up
    to d rather than to the last whole block, compiled to code 2-3x slower.
    """
    sign_off, clamp, lo, hi = limits
    R, d = x.shape
    whole = d - d % BLOCK  # whole blocks (vector code), then the rest value by value
    c_lo = c_hi = ng = nc = 0
    # a value enters the candidates only above thr (ties: the earlier index wins); k = 0: none
    thr = -1 if k > 0 else np.int64(clamp)
    flags = np.zeros(BLOCK, dtype=np.uint8)  # 1 where a block's value lies in (lo, hi]
    words = flags.view(np.uint64)
    for r in range(R):
        if real.size and not real[r]:
            c_lo += d
            c_hi += d
            continue
        row = x[r]
        flat0 = first_flat + r * d
        for j0 in range(0, whole, BLOCK):
            a = b = 0
            m = -1
            for j in range(BLOCK):  # vector code: counts, maximum, flags
                p = min(row[j0 + j] & sign_off, clamp)
                a += p <= lo
                b += p <= hi
                m = max(m, p)
                flags[j] = (p > lo) & (p <= hi)
            c_lo += a
            c_hi += b
            if b > a and ng >= 0:
                if ng + (b - a) > gather.size:
                    ng = -1  # overflow: the search takes it from the counts
                else:  # the flags as bits (8 bytes into 8 bits per multiplication), then
                    bits = np.uint64(0)  # the set bits' values, lowest first
                    for i in range(BLOCK // 8):
                        bits |= ((words[i] * _PACK) >> np.uint64(56)) << np.uint64(8 * i)
                    while bits:
                        low = bits & (~bits + np.uint64(1))
                        j = j0 + _BIT_INDEX[(low * _DEBRUIJN) >> np.uint64(58)]
                        gather[ng] = min(row[j] & sign_off, clamp)
                        ng += 1
                        bits ^= low
            if m > thr:
                nc, thr = _add_candidates(
                    row, j0, BLOCK, flat0, sign_off, clamp, thr, cand_v, cand_i, nc, k
                )
        for j in range(whole, d):
            p = min(row[j] & sign_off, clamp)
            c_lo += p <= lo
            c_hi += p <= hi
            if p > lo and p <= hi and ng >= 0:
                if ng == gather.size:
                    ng = -1
                else:
                    gather[ng] = p
                    ng += 1
        if whole < d:
            nc, thr = _add_candidates(
                row, whole, d - whole, flat0, sign_off, clamp, thr, cand_v, cand_i, nc, k
            )
    return c_lo, c_hi, ng, nc


@nb.njit(nogil=True, inline="always")
def _shift(span):
    """Bits to drop from offsets up to span so that they fit 2**_DIGIT_BITS bins."""
    shift = 0
    while (span >> shift) >= (1 << _DIGIT_BITS):
        shift += 1
    return shift


@nb.njit(nogil=True, inline="always")
def _bin_of(counts, k):
    """(bin holding the k-th value, values in the bins before it)."""
    below = 0
    digit = 0
    while below + counts[digit] <= k:
        below += counts[digit]
        digit += 1
    return digit, below


@nb.njit(nogil=True, cache=True)
def select_kth(values, k):
    """The k-th smallest (0-based) of an integer array, by histograms of the values' offsets
    from the smallest, _DIGIT_BITS at a time from the top: each round keeps one bin's values.
    Spans of at most 2**_DIGIT_BITS take one round (16-bit brackets do), 32-bit ones three at
    most. 16K int32: ~40 us, where numpy's partition took ~100 on a Zen 4 (AVX-512 path)."""
    while True:
        lo = np.int64(values.min())
        span = np.int64(values.max()) - lo
        shift = _shift(span)
        counts = np.zeros((span >> shift) + 1, dtype=np.int64)
        for v in values:
            counts[(v - lo) >> shift] += 1
        digit, below = _bin_of(counts, k)
        k -= below
        if shift == 0:
            return lo + digit
        kept = np.empty(counts[digit], dtype=values.dtype)
        i = 0
        for v in values:
            if (v - lo) >> shift == digit:
                kept[i] = v
                i += 1
        values = kept


@nb.njit(nogil=True, cache=True)
def count_in(values, a, b):
    """How many values lie in [a, b]."""
    q = 0
    for v in values:
        q += (v >= a) & (v <= b)
    return q


@nb.njit(nogil=True, cache=True)
def select_two(values, a, b, i, j):
    """The i-th and j-th smallest (0-based, i <= j) of the values in [a, b], the others left
    out: one histogram round over all of them keeps the bins from i's to j's (close ranks: a
    few bins), then `select_kth` on those."""
    lo = np.int64(b)
    hi = np.int64(a)
    for v in values:
        if v >= a and v <= b:
            lo = min(lo, np.int64(v))
            hi = max(hi, np.int64(v))
    shift = _shift(hi - lo)
    counts = np.zeros(((hi - lo) >> shift) + 1, dtype=np.int64)
    for v in values:
        if v >= a and v <= b:
            counts[(v - lo) >> shift] += 1
    d_i, below_i = _bin_of(counts, i)
    d_j, below_j = _bin_of(counts, j)
    kept = np.empty(below_j + counts[d_j] - below_i, dtype=values.dtype)
    n = 0
    for v in values:
        if v >= a and v <= b and d_i <= (v - lo) >> shift <= d_j:
            kept[n] = v
            n += 1
    return select_kth(kept, i - below_i), select_kth(kept, j - below_i)
