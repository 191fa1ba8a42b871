"""The CPU path's median by counting search (used where it beats numpy's partition).

numpy's in-place selection (`ndarray.partition`) is fast where its SIMD quickselect runs well
(~0.5 ms per 1M int32 on an AVX2 EPYC) and slow elsewhere: scalar for 16-bit integers without
AVX512-ICL (~75 ms per 8M values), and ~5 ms per 1M int32 on a Zen 4 EPYC whose AVX-512
compress-store is microcoded. There the median is searched by counting instead:

- a fixed random sample of the slice brackets the median's rank (`_bracket`);
- the pass that writes the patterns of |h| (`first_pass`), done chunk by chunk, counts the
  values up to both ends of the bracket while each chunk is fresh and gathers the few values
  between them, from which the median is selected (`_select`);
- where the sample's bracket misses, `search_median` narrows [a, b] with a few more counting
  passes: the sample's bracket twice, then bisection, then (a safety net) the full partition.

Exact whatever the sample holds. `_cpu_path` decides per pattern width which method to use.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple

import numpy as np

from ._patterns import MASKED

_SAMPLE = 16384  # sampled values that guide the median search (positions fixed per n)
_Z = 2.0  # bracket half-width in binomial deviations of the sample (a miss costs a pass or two)
_GATHER = 32  # gather the values in the bracket once at most n / _GATHER (one round, usually)
_MAX_PASSES = 24  # passes before the search falls back to the full partition (a safety net:
# 16-bit patterns need at most about 20, two sample rounds then bisection)
_CHUNK = 2**19  # values per chunk of the first pass: large, as each chunk costs ~8 numpy calls
# (2**15-2**21 on a Zen 4: 2**19-2**20 fastest, in-cache 2**15-2**16 1.3-2x slower)

# a test sets a list here to see the median search's steps ("search", "miss", "gather",
# "fallback"; "pass" for each counting pass over a whole line); None otherwise
_trace: list[str] | None = None

_UNSIGNED = {np.dtype(np.int16): np.uint16, np.dtype(np.int32): np.uint32}  # differences >= 0
_local = threading.local()  # .scratch, .rows: this thread's uint8 buffers
_KEEP_BYTES = 64 * 2**20  # scratch kept per thread between calls; larger ones are freed


def scratch(nbytes: int, name: str = "scratch") -> np.ndarray:
    """This thread's reusable uint8 buffer `name` of nbytes (contents undefined)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(nbytes, dtype=np.uint8)
        if nbytes <= _KEEP_BYTES:
            setattr(_local, name, buf)
    return buf[:nbytes]


def _note(event: str) -> None:
    if _trace is not None:
        _trace.append(event)


@functools.lru_cache(maxsize=16)
def _sample_positions(n: int) -> np.ndarray:
    """Sorted positions of the median search's sample of a line of n values: random with a
    fixed seed, as a strided sample can follow the token / channel layout; all if n is small."""
    if n <= _SAMPLE:
        pos = np.arange(n)
    else:
        pos = np.sort(np.random.default_rng(0x5EED).integers(0, n, _SAMPLE))
    pos.setflags(write=False)
    return pos


def _places(ka: int, kb: int, c_a: int, c_b: int, rank: int) -> tuple[int, int]:
    """Indices (i_lo, i_hi) into the sorted sample of the bracket's ends: the rank's place
    among the sample's kb - ka values in [a, b] (of the line's values c_a are < a, c_b <= b),
    +- _Z binomial deviations; outside [ka, kb): the bracket reaches a or b."""
    q = kb - ka
    t = (rank - c_a + 0.5) / (c_b - c_a)  # the rank's place among the values in [a, b], 0..1
    half = _Z * math.sqrt(q * t * (1 - t)) + 1
    return math.floor(ka + t * q - half), math.ceil(ka + t * q + half)


def _ends(s_lo, s_hi, a: int, b: int) -> tuple[int | None, int | None]:
    """(lo, hi) from the sample's values at the bracket's ends (None: beyond [ka, kb)), each
    None where it reaches a or b, whose counts are known. lo = s_lo - 1: the bracket holds
    s_lo itself."""
    lo = a - 1 if s_lo is None else int(s_lo) - 1
    hi = b if s_hi is None else int(s_hi)
    return (lo if lo >= a else None), (hi if hi < b else None)


def _bracket(
    s: np.ndarray, a: int, b: int, c_a: int, c_b: int, rank: int
) -> tuple[int | None, int | None]:
    """Patterns (lo, hi) in [a, b - 1], or None, such that the values <= lo should number at
    most `rank` and those <= hi more: the sorted sample s's values around the rank's place
    among its values in [a, b] (of the line's values c_a are < a, c_b <= b), +- _Z binomial
    deviations. None where the bracket reaches a or b, whose counts are known."""
    ka, kb = (int(i) for i in np.searchsorted(s, [a, b + 1]))  # s[ka:kb] lie in [a, b]
    i_lo, i_hi = _places(ka, kb, c_a, c_b, rank)
    return _ends(s[i_lo] if i_lo >= ka else None, s[i_hi] if i_hi < kb else None, a, b)


class FirstPass(NamedTuple):
    """What the first pass of a slice learnt for the search: its sample (unsorted) and, where
    the sample brackets the rank away from the ends, thresholds lo < hi (else None), the
    counts of values <= lo and <= hi, and the values in [lo + 1, hi] (None: not gathered, the
    sample saw too many there)."""

    sample: np.ndarray
    lo: int | None = None
    hi: int | None = None
    c_lo: int = 0
    c_hi: int = 0
    block: np.ndarray | None = None


def write_patterns(x: np.ndarray, real: np.ndarray | None, bits: np.ndarray, sign_off) -> None:
    """bits [S, d] = the patterns of |x| (x: [S, d] integer view of h), -1 in masked rows."""
    np.bitwise_and(x, sign_off, out=bits)
    if real is not None:
        bits[~real] = MASKED


def flag_bytes(S: int, d: int) -> int:
    """Bytes of the bool scratch that `first_pass` needs for a slice [S, d]."""
    return 2 * min(S * d, max(1, _CHUNK // d) * d)


def first_pass(x, real, bits, sign_off, inf: int, rank: int, n_masked: int, flags) -> FirstPass:
    """Writes bits like `write_patterns` and, in the same pass, counts the values <= the
    thresholds of the sample's bracket of `rank` and gathers the values between them: chunk
    by chunk of rows, so that the bool flags of the counts stay small (flags: bool scratch of
    `flag_bytes`). The thresholds are at most inf, so a NaN clamp of the line afterwards
    leaves the counts as they are."""
    S, d = x.shape
    n = S * d
    pos = _sample_positions(n)
    flat = x.reshape(-1) if x.flags.c_contiguous else None  # a view: one gather, not two
    sample = (flat[pos] if flat is not None else x[pos // d, pos % d]) & sign_off
    if real is not None:
        sample[~real[pos // d]] = MASKED
    sample = np.minimum(sample, inf + 1).astype(np.int32)  # NaNs as the line will hold them
    # the first bracket, over [0, inf + 1]: two order statistics of the sample, not a sort
    ka = int(np.count_nonzero(sample < 0))
    i_lo, i_hi = _places(ka, sample.size, n_masked, n, rank)
    kth = [i for i in (i_lo, i_hi) if ka <= i < sample.size]
    if kth:
        sample.partition(kth)
    s_lo = sample[i_lo] if i_lo >= ka else None
    s_hi = sample[i_hi] if i_hi < sample.size else None
    lo, hi = _ends(s_lo, s_hi, 0, inf + 1)
    if lo is None or hi is None:  # the rank near an end of the values: the search's first round
        write_patterns(x, real, bits, sign_off)
        return FirstPass(sample)
    in_bracket = int(np.count_nonzero((sample > lo) & (sample <= hi)))
    gather = in_bracket * _GATHER <= sample.size  # few values expected between the thresholds
    rows = max(1, _CHUNK // d)
    below, upto = flags[: 2 * rows * d].reshape(2, -1)
    c_lo = c_hi = 0
    blocks = []
    for r0 in range(0, S, rows):
        write_patterns(
            x[r0 : r0 + rows],
            None if real is None else real[r0 : r0 + rows],
            bits[r0 : r0 + rows],
            sign_off,
        )
        chunk = bits[r0 : r0 + rows].reshape(-1)
        le_lo, le_hi = below[: chunk.size], upto[: chunk.size]
        np.less_equal(chunk, chunk.dtype.type(lo), out=le_lo)
        np.less_equal(chunk, chunk.dtype.type(hi), out=le_hi)
        c_lo += int(np.count_nonzero(le_lo))
        c_hi += int(np.count_nonzero(le_hi))
        if gather:
            np.not_equal(le_hi, le_lo, out=le_lo)
            blocks.append(chunk[np.flatnonzero(le_lo)])
    return FirstPass(sample, lo, hi, c_lo, c_hi, np.concatenate(blocks) if gather else None)


def _select(block: np.ndarray, k: int) -> int:
    """The k-th smallest (0-based) of a block of patterns: by counting where they span few
    patterns (a 16-bit bracket spans a handful: 0.17 ms for 140K values, where numpy's
    selection took 0.9), else numpy's selection (as int32)."""
    lo, hi = int(block.min()), int(block.max())
    if hi - lo <= 4 * block.size + 1024:
        counts = np.cumsum(np.bincount((block - block.dtype.type(lo)).view(_UNSIGNED[block.dtype])))
        return lo + int(np.searchsorted(counts, k, side="right"))
    return int(np.partition(block.astype(np.int32), k)[k])


def search_median(
    line: np.ndarray, rank: int, n_masked: int, top: int, first: FirstPass | None = None
) -> int:
    """Pattern at ascending `rank` of line (values in [-1, top], n_masked of them -1).

    Keeps a <= b with c_a values < a and c_b values <= b, c_a <= rank < c_b, starting from
    what the first pass counted (`first`; a sample of line alone when None). Each further
    pass counts the values <= a threshold p in [a, b - 1] into a bool row of flags [3, n]
    (this thread's "rows" scratch) and moves a above p or b down to p; the rows of the two
    bounds are kept, so that the values in [a, b], once few, are gathered without another
    pass. The thresholds are the sample's bracket of the rank until it has missed twice, then
    bisection of [a, b] (a biased sample costs a few passes, at most about one per bit).
    Exact whatever the sample says.
    """
    n = line.size
    if first is None:
        first = FirstPass(line[_sample_positions(n)].astype(np.int32))
    s = None  # the sorted sample, once a further bracket needs it
    a, b, c_a, c_b = 0, top, n_masked, n
    below_a = upto_b = None  # rows of flags: line < a, line <= b (None: not counted)
    passes = misses = 0
    _note("search")
    if first.lo is not None:
        if rank < first.c_lo:  # below the bracket
            b, c_b, misses = first.lo, first.c_lo, 1
            _note("miss")
        elif rank < first.c_hi:
            a, b, c_a, c_b = first.lo + 1, first.hi, first.c_lo, first.c_hi
            if first.block is not None and a < b:
                _note("gather")
                return _select(first.block, rank - c_a)
        else:  # above it
            a, c_a, misses = first.hi + 1, first.c_hi, 1
            _note("miss")
    if a == b:
        return a
    flags = scratch(3 * n, "rows").view(np.bool_).reshape(3, n)
    while a < b and c_b - c_a > n // _GATHER:
        if passes >= _MAX_PASSES:
            _note("fallback")
            line.partition(rank)
            return int(line[rank])
        lo = hi = None
        if misses < 2:
            s = np.sort(first.sample) if s is None else s
            lo, hi = _bracket(s, a, b, c_a, c_b, rank)
        guided = lo is not None or hi is not None
        if not guided:
            lo = (a + b) // 2  # bisection
        for p, low_end in ((lo, True), (hi, False)):
            if p is None:
                continue
            row = next(r for r in range(3) if r not in (below_a, upto_b))
            np.less_equal(line, line.dtype.type(p), out=flags[row])
            count = int(np.count_nonzero(flags[row]))
            passes += 1
            _note("pass")
            if rank < count:
                b, c_b, upto_b = p, count, row
                missed = guided and low_end  # the rank lies below the sample's bracket
                break
            a, c_a, below_a = p + 1, count, row
            missed = guided and not low_end  # above it
        if missed:
            misses += 1
            _note("miss")
    if a == b:
        return a
    _note("gather")  # the c_b - c_a values in [a, b]; rows the passes did not leave: counted
    free = [r for r in range(3) if r not in (below_a, upto_b)]
    if below_a is None and c_a > 0:
        below_a = free.pop()
        np.less(line, line.dtype.type(a), out=flags[below_a])
    if upto_b is None and c_b < n:
        upto_b = free.pop()
        np.less_equal(line, line.dtype.type(b), out=flags[upto_b])
    in_ab = flags[free.pop()]
    if below_a is None:  # nothing below a
        in_ab = flags[upto_b]
    elif upto_b is None:  # nothing above b
        np.logical_not(flags[below_a], out=in_ab)
    else:
        np.not_equal(flags[upto_b], flags[below_a], out=in_ab)
    return _select(line[np.flatnonzero(in_ab)], rank - c_a)
