"""CPU path of the layer statistics for large slices: numpy selection, slices in parallel.

Bit-identical to the oracle `_reference` (same patterns as `_patterns`). Per slice [S, d]:

1. one pass writes the patterns of |h| (int32 for fp32, int16 for fp16 / bf16) into a scratch
   buffer of the worker thread, reused from call to call (never part of a result); masked
   tokens' rows then get -1;
2. top-k: the maxima of groups of values bound it (see `_top_k`), so only a few groups' values
   are sorted; NaN patterns are clamped to one (and the top-k redone) only when the top holds
   a NaN;
3. median, the value at the lower median's rank among all n values, the masked ones (-1) at
   the bottom, by one of two exact methods, whichever is faster on this machine (`_method`):
   numpy's in-place selection of the scratch buffer (`ndarray.partition`), or the counting
   search of `_cpu_search`, fused with step 1 (its docstring says when each one wins). Timed
   once per process and pattern width on a synthetic slice (both exact, so the choice changes
   the time only); $MASSACT_CPU_MEDIAN = partition | search fixes it.

Slices are spread over up to torch.get_num_threads() threads, the calling one included (numpy
releases the GIL). Memory traffic per slice: one read of h, one write and one or two reads of
the scratch buffer (a search that needs further passes: two or three reads and bool writes of
n bytes each, in a second per-thread buffer); no int64 keys, no full-size allocation.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ._cpu_search import first_pass, flag_bytes, scratch, search_median, write_patterns
from ._patterns import MASKED, median_rank, stats_from_patterns
from ._result import BIT_PATTERNS, LayerStats

_GROUP = 256  # values per group of the top-k bound (fewer where n is not a multiple)
_SORT_MAX = 4096  # top-k candidates sorted outright up to this many
_METHODS = ("partition", "search")
# the median's method per pattern width in bytes (2, 4): None until timed (`_method`)
_median_method: dict[int, str | None] = {2: None, 4: None}
_method_lock = threading.Lock()
_CALIBRATION = (1024, 512)  # the synthetic slice that times both methods (normal values)

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
    x: np.ndarray, real: np.ndarray | None, k: int, dtype: torch.dtype, search: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """(top patterns [<= k], their flat indices, median pattern or -1) of one slice x [S, d],
    an integer view of h. real: [S] bool, None = every token. search: the median by counting
    search, else by numpy's partition."""
    S, d = x.shape
    n = S * d
    _, sign_off, inf = BIT_PATTERNS[dtype]
    buf = scratch(n * x.itemsize + (flag_bytes(S, d) if search else 0))  # patterns, flags
    bits = buf[: n * x.itemsize].view(x.dtype).reshape(S, d)
    n_real = n if real is None else int(np.count_nonzero(real)) * d
    if n_real == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), MASKED
    rank = median_rank(n, n_real)
    if search:
        flags = buf[n * x.itemsize :].view(np.bool_)
        first = first_pass(x, real, bits, sign_off, inf, rank, n - n_real, flags)
    else:
        write_patterns(x, real, bits, sign_off)
    line = bits.reshape(-1)
    top, flat = _top_k(line, k)
    if top[0] > inf:  # NaNs: one canonical pattern, so they tie like torch's
        np.minimum(line, inf + 1, out=line)
        top, flat = _top_k(line, k)
    if search:
        return top, flat, search_median(line, rank, n - n_real, int(top[0]), first)
    line.partition(rank)  # in place: the scratch buffer, after the top-k has read it
    return top, flat, int(line[rank])


def _method(dtype: torch.dtype) -> str:
    """The median's method for dtype's pattern width: $MASSACT_CPU_MEDIAN if set, else the
    faster of the two on a synthetic slice (best of 3 each), timed once per process."""
    width = BIT_PATTERNS[dtype][0].itemsize
    with _method_lock:
        if _median_method[width] is None:
            forced = os.environ.get("MASSACT_CPU_MEDIAN", "").strip()
            if forced and forced not in _METHODS:
                raise ValueError(f"MASSACT_CPU_MEDIAN={forced!r}: expected partition or search")
            _median_method[width] = forced or _time_methods(dtype)
        return _median_method[width]


def _time_methods(dtype: torch.dtype) -> str:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(_CALIBRATION, generator=gen).to(dtype)
    x = h.view(BIT_PATTERNS[dtype][0]).numpy()
    best = {}
    for method in _METHODS:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            _slice_stats(x, None, 1, dtype, method == "search")
            times.append(time.perf_counter() - start)
        best[method] = min(times)
    return min(_METHODS, key=best.__getitem__)


def cpu_layer_stats(h: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> LayerStats:
    """LayerStats of a CPU tensor h [..., S, d] (validated; mask None or bool h.shape[:-1])."""
    S, d = h.shape[-2], h.shape[-1]
    lead = h.shape[:-2]
    B = math.prod(lead)
    view = BIT_PATTERNS[h.dtype][0]
    # no reshape: merging strided leading dims could copy h; slice b is x[unravel(b)]
    x = h.detach().resolve_neg().view(view).numpy()
    real = None if mask is None else mask.reshape(B, S).numpy()
    search = _method(h.dtype) == "search"
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
            top, idx, med = _slice_stats(x_b, None if real is None else real[b], k, h.dtype, search)
            top_bits[b, : top.size], flat[b, : idx.size], median[b] = top, idx, med

    workers = max(1, min(torch.get_num_threads(), B))
    pending = [_executor().submit(run) for _ in range(workers - 1)]
    run()  # this thread works too
    for done in pending:
        done.result()
    patterns = (torch.from_numpy(a) for a in (top_bits, flat, median))
    return stats_from_patterns(*patterns, h.dtype, d, lead)
