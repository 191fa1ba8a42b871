"""CPU path of the layer statistics for large slices: numpy selection, slices in parallel.

Bit-identical to the oracle `_reference` (same patterns as `_patterns`). Per slice [S, d]:

1. one pass writes the patterns of |h| (int32 for fp32, int16 for fp16 / bf16) into a scratch
   buffer of the worker thread, reused from call to call (never part of a result); masked
   tokens' rows then get -1;
2. top-k: the maxima of groups of values bound it (see `_top_k`), so only a few groups' values
   are sorted; NaN patterns are clamped to one (and the top-k redone) only when the top holds
   a NaN;
3. median, the value at the lower median's rank among all n values, the masked ones (-1) at
   the bottom:
   - 32-bit patterns: numpy's in-place selection of the scratch buffer (introselect, SIMD on
     x86 from AVX2 on: ~0.5 ms per 1M values);
   - 16-bit patterns: numpy's selection is SIMD only with AVX512-ICL (used there), and takes
     ~75 ms per 8M values without it, so the median is searched by counting instead: a fixed
     random sample of the slice brackets the rank; the pass of step 1, done chunk by chunk,
     counts the values up to both ends of the bracket while each chunk is in cache and
     gathers the few values between them, from which the median is selected (~10 ms per 8M
     values in all, steps 1-3). Exact whatever the sample holds: where its bracket misses,
     `_search_median` narrows it with a few more counting passes. (For 32-bit patterns such
     passes cost more than numpy's SIMD selection.)

Slices are spread over up to torch.get_num_threads() threads, the calling one included (numpy
releases the GIL). Memory traffic per slice: one read of h, one write and one or two reads of
the scratch buffer (a search that needs further passes: two or three reads and bool writes of
n bytes each, in a second per-thread buffer); no int64 keys, no full-size allocation.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from ._patterns import MASKED, median_rank, stats_from_patterns
from ._result import BIT_PATTERNS, LayerStats

_GROUP = 256  # values per group of the top-k bound (fewer where n is not a multiple)
_SORT_MAX = 4096  # top-k candidates sorted outright up to this many
_KEEP_BYTES = 64 * 2**20  # scratch kept per thread between calls; larger ones are freed
_SAMPLE = 16384  # sampled values that guide the median search (positions fixed per n)
_Z = 2.0  # bracket half-width in binomial deviations of the sample (a miss costs a pass or two)
_GATHER = 32  # gather the values in the bracket once at most n / _GATHER (one round, usually)
_MAX_PASSES = 24  # passes before the search falls back to the full partition (a safety net:
# 16-bit patterns need at most about 20, two sample rounds then bisection)
_CHUNK = 2**18  # values per chunk of the first pass of the search (its flags stay in cache)

try:  # numpy >= 2 selects 16-bit integers with SIMD on AVX512-ICL: faster than the search
    from numpy._core._multiarray_umath import __cpu_features__ as _cpu_features
except ImportError:  # numpy 1.x: no SIMD selection
    _cpu_features = {}
_SEARCH_16 = not _cpu_features.get("AVX512_ICL", False)  # median of 16-bit patterns by search

# a test sets a list here to see the median search's steps ("search", "miss", "gather",
# "fallback"; "pass" for each counting pass over a whole line); None otherwise
_trace: list[str] | None = None

_local = threading.local()  # .scratch, .rows: this thread's uint8 buffers
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _reset_pool() -> None:  # a forked child has none of the parent's threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_reset_pool)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="massact-stats")
        return _pool


def _scratch(nbytes: int, name: str = "scratch") -> np.ndarray:
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


def _bracket(
    s: np.ndarray, a: int, b: int, c_a: int, c_b: int, rank: int
) -> tuple[int | None, int | None]:
    """Patterns (lo, hi) in [a, b - 1], or None, such that the values <= lo should number at
    most `rank` and those <= hi more: the sorted sample s's values around the rank's place
    among its values in [a, b] (of the line's values c_a are < a, c_b <= b), +- _Z binomial
    deviations. None where the bracket reaches a or b, whose counts are known."""
    ka, kb = (int(i) for i in np.searchsorted(s, [a, b + 1]))  # s[ka:kb] lie in [a, b]
    q = kb - ka
    t = (rank - c_a + 0.5) / (c_b - c_a)  # the rank's place among the values in [a, b], 0..1
    half = _Z * math.sqrt(q * t * (1 - t)) + 1
    i_lo, i_hi = math.floor(ka + t * q - half), math.ceil(ka + t * q + half)
    lo = int(s[i_lo]) - 1 if i_lo >= ka else a - 1  # -1: the bracket holds s[i_lo] itself
    hi = int(s[i_hi]) if i_hi < kb else b
    return (lo if lo >= a else None), (hi if hi < b else None)


class _FirstPass(NamedTuple):
    """What the first pass of a 16-bit slice learnt for the search: the sorted sample and,
    where the sample brackets the rank away from the ends, thresholds lo < hi (else None),
    the counts of values <= lo and <= hi, and the values in [lo + 1, hi] (None: not gathered,
    the sample saw too many there)."""

    sample: np.ndarray
    lo: int | None = None
    hi: int | None = None
    c_lo: int = 0
    c_hi: int = 0
    block: np.ndarray | None = None


def _write_patterns(x: np.ndarray, real: np.ndarray | None, bits: np.ndarray, sign_off) -> None:
    """bits [S, d] = the patterns of |x| (x: [S, d] integer view of h), -1 in masked rows."""
    np.bitwise_and(x, sign_off, out=bits)
    if real is not None:
        bits[~real] = MASKED


def _first_pass(x, real, bits, sign_off, inf: int, rank: int, n_masked: int, flags) -> _FirstPass:
    """Writes bits like `_write_patterns` and, in the same pass, counts the values <= the
    thresholds of the sample's bracket of `rank` and gathers the values between them: chunk
    by chunk of rows, so that each chunk's patterns are still in cache for the counts (flags:
    bool scratch of 2 * _CHUNK, or 2 * n if smaller). The thresholds are at most inf, so a
    NaN clamp of the line afterwards leaves the counts as they are."""
    S, d = x.shape
    n = S * d
    pos = _sample_positions(n)
    sample = x[pos // d, pos % d] & sign_off
    if real is not None:
        sample[~real[pos // d]] = MASKED
    s = np.sort(np.minimum(sample, inf + 1).astype(np.int32))  # NaNs as the line will hold them
    lo, hi = _bracket(s, 0, inf + 1, n_masked, n, rank)
    if lo is None or hi is None:  # the rank near an end of the values: the search's first round
        _write_patterns(x, real, bits, sign_off)
        return _FirstPass(s)
    in_bracket = np.searchsorted(s, hi + 1) - np.searchsorted(s, lo + 1)
    gather = in_bracket * _GATHER <= s.size  # few values expected between the thresholds
    rows = max(1, _CHUNK // d)
    below, upto = flags[: 2 * rows * d].reshape(2, -1)
    c_lo = c_hi = 0
    blocks = []
    for r0 in range(0, S, rows):
        _write_patterns(
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
    return _FirstPass(s, lo, hi, c_lo, c_hi, np.concatenate(blocks) if gather else None)


def _select(block: np.ndarray, k: int) -> int:
    """The k-th smallest of a block of patterns (as int32: numpy's SIMD selection)."""
    return int(np.partition(block.astype(np.int32), k)[k])


def _search_median(
    line: np.ndarray, rank: int, n_masked: int, top: int, first: _FirstPass | None = None
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
        first = _FirstPass(np.sort(line[_sample_positions(n)].astype(np.int32)))
    s = first.sample
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
    flags = _scratch(3 * n, "rows").view(np.bool_).reshape(3, n)
    while a < b and c_b - c_a > n // _GATHER:
        if passes >= _MAX_PASSES:
            _note("fallback")
            line.partition(rank)
            return int(line[rank])
        lo, hi = _bracket(s, a, b, c_a, c_b, rank) if misses < 2 else (None, None)
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


def _top_k(line: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (patterns, flat indices) of the real values of one slice's patterns line [n]
    (masked values -1), larger pattern first, then smaller flat index; fewer if fewer are real.

    The bound: split the slice into groups, g values each; k groups hold a value at least as
    large as the k-th largest group maximum, so only groups reaching it can hold a top-k value.
    Group j = values j, j + n / g, ...: one vectorised maximum over a [g, n / g] view.
    """
    n = line.size
    g = math.gcd(n, _GROUP)
    gmax = line.reshape(g, n // g).max(axis=0)  # [n / g]
    kk = min(k, gmax.size)
    bound = max(int(np.partition(gmax, gmax.size - kk)[gmax.size - kk]), 0)  # real: >= 0
    cols = np.flatnonzero(gmax >= bound)
    flat = (np.arange(g)[:, None] * (n // g) + cols).reshape(-1)  # ascending
    vals = line[flat]
    if vals.size > _SORT_MAX:  # many ties at the top (an all-equal slice): select, then sort
        m = min(k, vals.size)
        kth = np.partition(vals, vals.size - m)[vals.size - m]  # the m-th largest pattern
        above = np.flatnonzero(vals > kth)
        equal = np.flatnonzero(vals == kth)[: m - above.size]  # flat order: ties by index
        pick = np.concatenate([above, equal])
        vals, flat = vals[pick], flat[pick]
    order = np.lexsort((flat, -vals.astype(np.int64)))[:k]  # by |h| descending, then index
    return vals[order].astype(np.int64), flat[order]


def _slice_stats(
    x: np.ndarray, real: np.ndarray | None, k: int, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, int]:
    """(top patterns [<= k], their flat indices, median pattern or -1) of one slice x [S, d],
    an integer view of h. real: [S] bool, None = every token."""
    S, d = x.shape
    n = S * d
    _, sign_off, inf = BIT_PATTERNS[dtype]
    search = x.itemsize == 2 and _SEARCH_16  # with bool flags for 2 chunks after the patterns
    chunk_flags = 2 * min(n, max(1, _CHUNK // d) * d) if search else 0
    buf = _scratch(n * x.itemsize + chunk_flags)
    bits = buf[: n * x.itemsize].view(x.dtype).reshape(S, d)
    n_real = n if real is None else int(np.count_nonzero(real)) * d
    if n_real == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), MASKED
    rank = median_rank(n, n_real)
    if search:
        flags = buf[n * x.itemsize :].view(np.bool_)
        first = _first_pass(x, real, bits, sign_off, inf, rank, n - n_real, flags)
    else:
        _write_patterns(x, real, bits, sign_off)
    line = bits.reshape(-1)
    top, flat = _top_k(line, k)
    if top[0] > inf:  # NaNs: one canonical pattern, so they tie like torch's
        np.minimum(line, inf + 1, out=line)
        top, flat = _top_k(line, k)
    if search:
        return top, flat, _search_median(line, rank, n - n_real, int(top[0]), first)
    line.partition(rank)  # in place: the scratch buffer, after the top-k has read it
    return top, flat, int(line[rank])


def cpu_layer_stats(h: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> LayerStats:
    """LayerStats of a CPU tensor h [..., S, d] (validated; mask None or bool h.shape[:-1])."""
    S, d = h.shape[-2], h.shape[-1]
    lead = h.shape[:-2]
    B = math.prod(lead)
    view = BIT_PATTERNS[h.dtype][0]
    # no reshape: merging strided leading dims could copy h; slice b is x[unravel(b)]
    x = h.detach().resolve_neg().view(view).numpy()
    real = None if mask is None else mask.reshape(B, S).numpy()
    top_bits = np.full((B, k), MASKED, dtype=np.int64)
    flat = np.full((B, k), MASKED, dtype=np.int64)
    median = np.empty(B, dtype=np.int64)

    # each thread takes the next slice when done with one: a thread that the OS holds back
    # (a busy shared machine) leaves its share to the others
    next_slice = iter(range(B))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                b = next(next_slice, None)
            if b is None:
                return
            x_b = x[np.unravel_index(b, lead)]
            top, idx, med = _slice_stats(x_b, None if real is None else real[b], k, h.dtype)
            top_bits[b, : top.size], flat[b, : idx.size], median[b] = top, idx, med

    workers = max(1, min(torch.get_num_threads(), B))
    pending = [_executor().submit(run) for _ in range(workers - 1)]
    run()  # this thread works too
    for done in pending:
        done.result()
    patterns = (torch.from_numpy(a) for a in (top_bits, flat, median))
    return stats_from_patterns(*patterns, h.dtype, d, lead)
