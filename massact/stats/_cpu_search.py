"""The CPU path's median: a counting search over reads of the slice, guided by a sample.

Each read of the slice (`_cpu_scan.scan_rows`) counts the values up to two thresholds lo < hi
and keeps the values between them while they are few. A fixed random sample of the slice
places the thresholds around the median's rank (`first_bracket`), so the first read, which
also collects the top-k, usually settles the median: the rank falls between the thresholds and
the values there are selected (`_cpu_scan.select_kth`). Where the sample misled it (a miss:
the rank lies outside), `search_median` narrows [a, b] with further reads: the sample's
bracket of the rank within [a, b] twice, then splits of [a, b] into thirds by value (each read
keeps a third of the range: about 20 reads for 31-bit patterns, the worst case), and a last
read that gathers [a, b] once it holds few values. Exact whatever the sample holds: the sample
only decides how many reads it takes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numba as nb
import numpy as np

from ._cpu_scan import BLOCK, count_in, select_kth, select_two

_SAMPLE = 8192  # sampled values that place the thresholds (positions fixed per n), from 4M on
_RUN = 4  # adjacent values per sampled position (see _sample_positions)
_Z = 2.0  # bracket half-width in binomial deviations of the sample (a miss costs a read)
_GATHER = 16  # a read keeps at most n / _GATHER values between its thresholds (n / 64 usual)
_GUIDED_MISSES = 2  # sample brackets that may miss before the search splits by value

# a test sets a list here to see the median search's steps ("search", "read" for each read
# after the first, "miss" for a sample bracket that missed, "gather" where selected from the
# values kept between the thresholds); None otherwise
_trace: list[str] | None = None


def _note(event: str) -> None:
    if _trace is not None:
        _trace.append(event)


class Counted(NamedTuple):
    """One read's findings: thresholds lo < hi, the counts of values <= lo and <= hi, and the
    values in (lo, hi] (None: more than the read could keep)."""

    lo: int
    hi: int
    c_lo: int
    c_hi: int
    block: np.ndarray | None


Read = Callable[[int, int], Counted]  # read(lo, hi): one read of the slice


def gather_capacity(n: int) -> int:
    """Values between the thresholds that a read of n values keeps at most."""
    return n // _GATHER + BLOCK


def sample_size(n: int) -> int:
    """Sampled values for a slice of n. The sample's random reads and selection cost ~15 ns a
    value, the values a read keeps (~_Z / sqrt(m) of the slice) ~1 ns each: smaller slices take
    smaller samples (one thread, Zen 4: 90 instead of 125 us for [128, 768] fp16, 236 instead
    of 308 for [512, 768]; [2048, 4096] bf16 is 8% faster with 8192 than with 2048)."""
    return 2048 if n < 2**20 else 4096 if n < 2**22 else _SAMPLE


@functools.lru_cache(maxsize=16)
def _sample_positions(n: int) -> np.ndarray:
    """Sorted positions of the sample of a slice of n values: random with a fixed seed, as a
    strided sample can follow the token / channel layout; all if n is small. Runs of _RUN
    adjacent positions: a cache line's values for the price of one (the sample's random reads
    are its cost, ~40 ns each from memory)."""
    m = sample_size(n)
    if n <= m:
        pos = np.arange(n)
    else:
        starts = np.random.default_rng(0x5EED).integers(0, n - _RUN + 1, m // _RUN)
        pos = (np.sort(starts)[:, None] + np.arange(_RUN)).reshape(-1)
    pos.setflags(write=False)
    return pos


@nb.njit(nogil=True, cache=True)  # numba: also called inside a slice's fused first read
def _bracket(sample: np.ndarray, a: int, b: int, c_a: int, c_b: int, rank: int):
    """Thresholds (lo, hi), a - 1 <= lo < hi <= b, whose counts should enclose `rank`: the
    sample's values around the rank's place among its values in [a, b] (of the slice's values
    c_a are < a, c_b <= b), +- _Z binomial deviations; a - 1 or b where that reaches beyond
    the sample's values there. lo = (a sample value) - 1: the bracket holds the value.
    lo < hi as i_lo < i_hi, and the sample's values in [a, b] keep both in range."""
    q = count_in(sample, a, b)
    if q == 0:
        return np.int64(a) - 1, np.int64(b)
    t = (rank - c_a + 0.5) / (c_b - c_a)  # the rank's place among the values in [a, b], 0..1
    half = _Z * math.sqrt(q * t * (1 - t)) + 1
    i_lo, i_hi = math.floor(t * q - half), math.ceil(t * q + half)  # i_lo <= q - 2, i_hi >= 1
    s_lo, s_hi = select_two(sample, a, b, max(i_lo, 0), min(i_hi, q - 1))
    lo = np.int64(s_lo) - 1 if i_lo >= 0 else np.int64(a) - 1
    hi = np.int64(s_hi) if i_hi < q else np.int64(b)
    return lo, hi


@nb.njit(nogil=True, cache=True)
def first_bracket(sample: np.ndarray, clamp: int, rank: int, n_masked: int, n: int):
    """(lo, hi) of a slice's first read: the sample's bracket of `rank` over every real
    pattern, [0, clamp] (sample: int32 patterns, masked ones -1)."""
    return _bracket(sample, 0, clamp, n_masked, n, rank)


def _split(a: int, b: int) -> tuple[int, int]:
    """Thresholds that cut [a, b] (a < b) into three ranges of values, none empty where
    b - a >= 2."""
    s = b - a + 1
    return a - 1 + s // 3, a - 1 + (2 * s) // 3


def search_median(
    read: Read, n: int, rank: int, n_masked: int, top: int, sample: np.ndarray, first: Counted
) -> int:
    """Pattern at ascending `rank` among a slice's n values (n_masked of them -1, the others
    in [0, top]), from the first read's findings and, where they do not settle it, more reads.

    Keeps a <= b with c_a values < a and c_b values <= b, c_a <= rank < c_b. Each read moves
    a or b to a threshold; ends where a == b or the values in [a, b] were kept.
    """
    _note("search")
    a, b, c_a, c_b = 0, top, n_masked, n
    counted, guided, misses = first, True, 0
    while True:
        lo, hi, c_lo, c_hi, block = counted
        if rank < c_lo:
            b, c_b = lo, c_lo
        elif rank < c_hi:
            a, b, c_a, c_b = lo + 1, hi, c_lo, c_hi
            if block is not None:
                _note("gather")
                return int(select_kth(block, rank - c_a))
        else:
            a, c_a = hi + 1, c_hi
        if guided and not c_lo <= rank < c_hi:
            misses += 1
            _note("miss")
        if a >= b:
            return a
        guided = False
        if c_b - c_a <= gather_capacity(n):  # few values left: keep them all
            lo, hi = a - 1, b
        else:
            sampled = misses < _GUIDED_MISSES
            lo, hi = _bracket(sample, a, b, c_a, c_b, rank) if sampled else (a - 1, b)
            guided = (lo, hi) != (a - 1, b)
            if not guided:  # the sample cannot place the rank (any more): thirds by value
                lo, hi = _split(a, b)
        _note("read")
        counted = read(lo, hi)
