"""CPU path of the layer statistics for large slices: one read per slice, slices in parallel.

Bit-identical to the oracle `_reference` (same patterns as `_patterns`). Per slice [S, d]:

1. a fixed random sample of its patterns places two thresholds around the median's rank
   (`_cpu_search.first_bracket`);
2. one read of the slice (`_cpu_scan.scan_rows`, compiled by numba) counts the values up to
   both thresholds, keeps the few between them and collects the top-k candidates;
3. the top-k: the candidates ordered; the median: selected among the values kept, or, where
   the sample misled the thresholds, found by further reads (`_cpu_search.search_median`).

Slices are spread over up to torch.get_num_threads() threads, the calling one included (numba
releases the GIL; a slice read whole does steps 1-2 in one call, `_sample_and_read`); with
fewer slices than threads, each slice's rows are read in ranges on several threads. Nothing
of the slice's size is allocated: the values kept (n / 16 at most) and the candidates are all
a read writes.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numba as nb
import numpy as np
import torch

from ._cpu_scan import sample_patterns, scan_rows
from ._cpu_search import (
    Counted,
    _sample_positions,
    first_bracket,
    gather_capacity,
    search_median,
)
from ._patterns import MASKED, median_rank, stats_from_patterns
from ._result import BIT_PATTERNS, LayerStats

# top-k candidates a read holds before cutting them back to k: 4k (at least 8), small, so that
# the entry threshold (the k-th best so far) keeps up: with 256 for k = 3 it lagged, and rows
# of values below the final top-k were searched for candidates (~30% of a read's time)
_CANDIDATES_PER_K = 4
_PARTS_PER_THREAD = 4  # row ranges per thread where slices are fewer than threads
_NO_MASK = np.empty(0, dtype=np.bool_)

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


def _workers() -> int:
    """Threads a call uses: torch's thread count, at most the CPUs."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _in_parallel(run: Callable, items: Iterable, workers: int) -> None:
    """run(item) for every item, on up to `workers` threads (this one included), each taking
    the next item when done with one: a thread that the OS holds back (a busy shared machine)
    leaves its share to the others."""
    queue = iter(items)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            run(item)

    pending = [_executor().submit(worker) for _ in range(workers - 1)]
    worker()
    for done in pending:
        done.result()


class _Found(NamedTuple):
    """What one read of rows found: the counts of values <= lo and <= hi, the values kept in
    (lo, hi] (None: too many to keep), and the top-k candidates (patterns, flat indices)."""

    c_lo: int
    c_hi: int
    kept: np.ndarray | None
    cand_v: np.ndarray
    cand_i: np.ndarray


@dataclass
class _Slice:
    """One slice's work: its integer view x [S, d], real rows (empty: all), the median's rank,
    the sample and the first read's thresholds, and what the reads of its row ranges found."""

    x: np.ndarray
    real: np.ndarray
    rank: int
    n_masked: int
    sample: np.ndarray
    lo: int
    hi: int
    reads: list[_Found] = field(default_factory=list)


@functools.lru_cache(maxsize=16)
def _sample_rows_cols(S: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the sample's flat positions in a slice [S, d]: no division per
    sampled value (a 64-bit division took longer than the value's read)."""
    return np.divmod(_sample_positions(S * d), d)


def _limits(x: np.ndarray, dtype: torch.dtype, lo: int, hi: int) -> tuple:
    """scan_rows' (sign_off, clamp, lo, hi), in the type of x's values."""
    _, sign_off, inf = BIT_PATTERNS[dtype]
    return tuple(x.dtype.type(v) for v in (sign_off, inf + 1, lo, hi))


def _masked_and_rank(x: np.ndarray, real: np.ndarray) -> tuple[int, int] | None:
    """(masked values, the median's rank) of slice x; None for a slice without a real value."""
    n = x.size
    n_real = n if real.size == 0 else int(np.count_nonzero(real)) * x.shape[1]
    return (n - n_real, median_rank(n, n_real)) if n_real else None


def _prepare(x: np.ndarray, real: np.ndarray, dtype: torch.dtype) -> _Slice | None:
    """The slice's sample and first thresholds; None for a slice without a real value."""
    counted = _masked_and_rank(x, real)
    if counted is None:
        return None
    n_masked, rank = counted
    sign_off, clamp, _, _ = _limits(x, dtype, 0, 0)
    sample = sample_patterns(x, real, *_sample_rows_cols(*x.shape), sign_off, clamp)
    lo, hi = first_bracket(sample, int(clamp), rank, n_masked, x.size)
    return _Slice(x, real, rank, n_masked, sample, lo, hi)


@nb.njit(nogil=True, cache=True)
def _sample_and_read(x, real, rows, cols, limits, n_masked, rank, kept, cand_v, cand_i, k):
    """A slice read whole in one call that holds no GIL: its sample, the first thresholds
    (`first_bracket`) and the first read. Per slice, separate calls from Python cost ~35 us of
    GIL-held glue, which kept a second thread from helping on slices of ~100K values.
    limits: [sign_off, clamp, -, -] in the patterns' type; lo and hi are written to [2:].
    Returns (sample, count <= lo, count <= hi, gathered count or -1, candidates kept)."""
    sample = sample_patterns(x, real, rows, cols, limits[0], limits[1])
    lo, hi = first_bracket(sample, np.int64(limits[1]), rank, n_masked, x.size)
    limits[2] = lo
    limits[3] = hi
    bounds = (limits[0], limits[1], limits[2], limits[3])
    c_lo, c_hi, ng, nc = scan_rows(x, real, 0, bounds, kept, cand_v, cand_i, k)
    return sample, c_lo, c_hi, ng, nc


def _read_whole(x: np.ndarray, real: np.ndarray, dtype: torch.dtype, k: int) -> _Slice | None:
    """A slice sampled and read whole (one numba call); None for a slice without a real value."""
    counted = _masked_and_rank(x, real)
    if counted is None:
        return None
    n_masked, rank = counted
    limits = np.array(_limits(x, dtype, 0, 0), dtype=x.dtype)
    kept, cand_v, cand_i = _buffers(x, k)
    rows, cols = _sample_rows_cols(*x.shape)
    sample, c_lo, c_hi, ng, nc = _sample_and_read(
        x, real, rows, cols, limits, n_masked, rank, kept, cand_v, cand_i, k
    )
    found = _Found(c_lo, c_hi, kept[:ng] if ng >= 0 else None, cand_v[:nc], cand_i[:nc])
    lo, hi = int(limits[2]), int(limits[3])
    return _Slice(x, real, rank, n_masked, sample, lo, hi, [found])


def _buffers(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A read's buffers: values kept between the thresholds, top-k candidates (pattern, index)."""
    kept = np.empty(gather_capacity(x.size), dtype=x.dtype)
    cand_v = np.empty(max(_CANDIDATES_PER_K * k, 8), dtype=x.dtype)
    return kept, cand_v, np.empty(cand_v.size, dtype=np.int64)


def _read(x: np.ndarray, real: np.ndarray, first_flat: int, limits: tuple, k: int) -> _Found:
    """scan_rows over rows x."""
    kept, cand_v, cand_i = _buffers(x, k)
    c_lo, c_hi, ng, nc = scan_rows(x, real, first_flat, limits, kept, cand_v, cand_i, k)
    return _Found(c_lo, c_hi, kept[:ng] if ng >= 0 else None, cand_v[:nc], cand_i[:nc])


def _scan(work: _Slice, r0: int, r1: int, k: int, dtype: torch.dtype) -> None:
    """The first read of rows r0:r1 of the slice (appends to work.reads)."""
    real = work.real[r0:r1] if work.real.size else _NO_MASK
    limits = _limits(work.x, dtype, work.lo, work.hi)
    work.reads.append(_read(work.x[r0:r1], real, r0 * work.x.shape[1], limits, k))


def _finish(work: _Slice, k: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """(top patterns [<= k], their flat indices, median pattern) from the first reads of the
    slice's row ranges, and further reads where they do not settle the median."""
    if len(work.reads) == 1:  # the slice read whole
        c_lo, c_hi, block, values, index = work.reads[0]
    else:  # in row ranges: their counts add up, their kept values and candidates join
        c_lo, c_hi = sum(r.c_lo for r in work.reads), sum(r.c_hi for r in work.reads)
        blocks = [r.kept for r in work.reads]
        block = None if any(b is None for b in blocks) else np.concatenate(blocks)
        values = np.concatenate([r.cand_v for r in work.reads])
        index = np.concatenate([r.cand_i for r in work.reads])
    order = np.lexsort((index, -values.astype(np.int64)))[:k]  # by |h| descending, then index
    top, flat = values[order].astype(np.int64), index[order]
    first = Counted(work.lo, work.hi, c_lo, c_hi, block)

    def read(lo: int, hi: int) -> Counted:
        limits = _limits(work.x, dtype, lo, hi)
        found = _read(work.x, work.real, 0, limits, 0)
        return Counted(lo, hi, found.c_lo, found.c_hi, found.kept)

    n = work.x.size
    median = search_median(read, n, work.rank, work.n_masked, int(top[0]), work.sample, first)
    return top, flat, median


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
    median = np.full(B, MASKED, dtype=np.int64)
    works: list[_Slice | None] = [None] * B

    def slice_of(b: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice b's integer view and its real rows (empty: all)."""
        return x[np.unravel_index(b, lead)], _NO_MASK if real is None else real[b]

    def prepare(b: int) -> None:
        works[b] = _prepare(*slice_of(b), h.dtype)

    def finish(b: int) -> None:
        top, idx, median[b] = _finish(works[b], k, h.dtype)
        top_bits[b, : top.size], flat[b, : idx.size] = top, idx

    def whole_slice(b: int) -> None:
        works[b] = _read_whole(*slice_of(b), h.dtype, k)
        if works[b] is not None:
            finish(b)

    workers = _workers()
    if B >= workers:  # a slice per thread at a time: prepare, scan and finish in one go
        _in_parallel(whole_slice, range(B), workers)
    else:  # few slices: their row ranges scanned in parallel
        _in_parallel(prepare, range(B), min(B, workers))
        parts = min(S, math.ceil(_PARTS_PER_THREAD * workers / B))
        bounds = [S * i // parts for i in range(parts + 1)]
        units = [
            (b, r0, r1)
            for b in range(B)
            if works[b] is not None
            for r0, r1 in zip(bounds[:-1], bounds[1:])
        ]
        _in_parallel(lambda u: _scan(works[u[0]], u[1], u[2], k, h.dtype), units, workers)
        live = [b for b in range(B) if works[b] is not None]
        _in_parallel(finish, live, min(len(live), workers) or 1)
    patterns = (torch.from_numpy(a) for a in (top_bits, flat, median))
    return stats_from_patterns(*patterns, h.dtype, d, lead)
