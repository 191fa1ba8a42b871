"""The CPU path's median search (`_cpu_search.search_median` over reads by
`_cpu_scan.scan_rows`): adversarial slices for its sample bracket, each bit-identical to the
oracle, and which steps each one took; the top-k candidates' compaction; the selection
helpers against a sort.

The search counts values against thresholds placed by a fixed random sample of the slice; it
must stay exact when the sample misleads it (ties, skewed layouts, a sample that sees only
large values), and the tests see through `_cpu_search._trace` whether the first read settled
the median ("gather") or its bracket missed ("miss") and further reads ("read") narrowed it.
Slices hold more values than the sample (n > sample_size(n)), so the sample is a real subset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cases import DTYPE_IDS, DTYPES, assert_stats_equal

from massact import layer_stats, reference_layer_stats
from massact.stats import _cpu_path, _cpu_scan, _cpu_search
from massact.stats._patterns import median_rank

SLICE = (160, 128)  # n = 20480: the sample (2048, drawn with replacement) sees about a tenth
WIDE = (512, 256)  # n = 131072: the sample sees about one value in sixty-four
assert _cpu_search.sample_size(SLICE[0] * SLICE[1]) < SLICE[0] * SLICE[1]
MAX_READS = 24  # reads after the first one a slice may take (thirds of 31-bit patterns: ~20)


@pytest.fixture
def trace(monkeypatch) -> list[str]:
    """The search's steps."""
    events: list[str] = []
    monkeypatch.setattr(_cpu_search, "_trace", events)
    return events


def adversarial(kind: str) -> torch.Tensor:
    """float32 [2, *SLICE] slices that stress the sample bracket (cast to the test's dtype)."""
    g = torch.Generator().manual_seed(0)
    S, d = SLICE
    x = torch.randn(2, S, d, generator=g)
    token = torch.arange(S, dtype=torch.float32)[:, None]
    channel = torch.arange(d, dtype=torch.float32)
    if kind == "all_equal":
        x = torch.full_like(x, -3.0)
    elif kind == "two_values":  # half 1, half 2 (n even): the lower median is the last 1
        x = torch.ones(2, S * d)
        for row in x:
            row[torch.randperm(S * d, generator=g)[: S * d // 2]] = -2.0
        x = x.reshape(2, S, d)
    elif kind == "zero_heavy":  # 99% zeros, half of them -0
        x = x * (torch.rand(x.shape, generator=g) < 0.01)
        x[torch.rand(x.shape, generator=g) < 0.5] *= -1
    elif kind == "clipped":  # about a third of |h| equal to the maximum
        x = x.clamp(-1.0, 1.0)
    elif kind == "sorted_up":  # ascending along the flat index (tokens, then channels)
        x = x.reshape(2, -1).abs().sort(dim=-1).values.reshape(x.shape)
    elif kind == "sorted_down":
        x = x.reshape(2, -1).abs().sort(dim=-1, descending=True).values.reshape(x.shape)
    elif kind == "by_token":  # scale grows with the token: a token-strided sample is biased
        x = x * (1 + token) ** 2
    elif kind == "by_channel":  # every 16th channel huge, others scaled by channel
        x = x * (1 + channel)
        x[..., ::16] *= 1e3
    elif kind == "few_values":  # 5 values with uneven counts: the median sits on a tie edge
        vals = torch.tensor([0.5, 1.0, 1.5, 2.0, 4.0])
        x = vals[torch.randint(0, 5, x.shape, generator=g)]
    elif kind == "nan_inf":
        x.view(-1)[torch.randint(0, x.numel(), (40,), generator=g)] = float("inf")
        x[1].view(-1)[torch.randint(0, x[1].numel(), (3,), generator=g)] = float("nan")
    return x


KINDS = [
    "all_equal",
    "two_values",
    "zero_heavy",
    "clipped",
    "sorted_up",
    "sorted_down",
    "by_token",
    "by_channel",
    "few_values",
    "nan_inf",
]


def masks() -> dict[str, torch.Tensor | None]:
    """[2, S] token masks of SLICE by name."""
    S = SLICE[0]
    g = torch.Generator().manual_seed(1)
    one = torch.zeros(2, S, dtype=torch.bool)
    one[:, S // 3] = True  # one real token: fewer real values than the gather threshold
    return {"none": None, "random": torch.rand(2, S, generator=g) < 0.6, "one_token": one}


@pytest.mark.parametrize("mask_kind", ["none", "random", "one_token"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_adversarial_slices_match_the_oracle(kind, dtype, mask_kind, trace):
    h = adversarial(kind).to(dtype)
    mask = masks()[mask_kind]
    got = layer_stats(h, 3, mask=mask, backend="torch")
    assert_stats_equal(got, reference_layer_stats(h, 3, mask=mask))
    assert trace.count("search") == 2  # once per slice
    assert trace.count("read") <= 2 * MAX_READS


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "row_ranges"])
def test_plain_slices_hit_the_first_bracket(dtype, split, trace, monkeypatch):
    """Random data: the sample's bracket holds the rank and the first read, which counted it
    and kept the values in it, settles the median: no miss, no further read. row_ranges:
    more threads than slices, so each slice's rows are read in ranges on several threads."""
    if split:
        monkeypatch.setattr(_cpu_path, "_workers", lambda: 3)
    h = torch.randn(2, *WIDE, generator=torch.Generator().manual_seed(3)).to(dtype)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert trace == ["search", "gather"] * 2


def sample_biased(side: str, dtype: torch.dtype) -> torch.Tensor:
    """[S, d] random slice whose sampled positions hold 1000 (side "low": the sample places
    the median far above the true one) or 0 (side "high": far below)."""
    h = torch.randn(WIDE, generator=torch.Generator().manual_seed(4))
    pos = torch.from_numpy(_cpu_search._sample_positions(h.numel()).copy())
    h.view(-1)[pos] = 1000.0 if side == "low" else 0.0
    return h.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("side", ["low", "high"])
def test_a_missed_bracket_stays_exact(side, dtype, trace):
    h = sample_biased(side, dtype)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert "miss" in trace and 1 <= trace.count("read") <= MAX_READS


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_thirds_by_value_when_the_sample_cannot_place_the_rank(dtype, trace, monkeypatch):
    """No sample bracket after the first read: the search cuts [a, b] into thirds by value,
    each read keeping one, and ends on the exact median."""
    monkeypatch.setattr(_cpu_search, "_GUIDED_MISSES", 1)
    h = sample_biased("low", dtype)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert trace.count("miss") == 1 and 2 <= trace.count("read") <= MAX_READS


@pytest.mark.parametrize("k", [1, 7, 64])
@pytest.mark.parametrize("kind", ["sorted_up", "all_equal", "clipped", "nan_inf"])
def test_top_k_candidates_compacted_many_times(kind, k):
    """Ascending values (each one a new candidate), all equal and a third tied at the top:
    the candidates' buffer fills and is cut back to the best k again and again, ties kept in
    index order. d = 100 leaves a partial block at each row's end; the view is strided."""
    h = adversarial(kind)[:, :, :100]
    assert not h.is_contiguous()
    for mask in (None, masks()["random"]):
        got = layer_stats(h, k, mask=mask, backend="torch")
        assert_stats_equal(got, reference_layer_stats(h, k, mask=mask))


# ---- the search alone, on integer lines (int16 as in use, int32 as the helper allows) ---------


def read_line(line: np.ndarray):
    """read(lo, hi) for search_median: the real scan over an integer line as one row, its
    values taken as they are (no sign bit cleared, no clamp)."""
    x = line.reshape(1, -1)
    top = np.iinfo(line.dtype).max

    def read(lo: int, hi: int) -> _cpu_search.Counted:
        limits = tuple(line.dtype.type(v) for v in (-1, top, lo, hi))
        found = _cpu_path._read(x, _cpu_path._NO_MASK, 0, limits, 0)
        return _cpu_search.Counted(lo, hi, found.c_lo, found.c_hi, found.kept)

    return read


def search(line: np.ndarray, first: _cpu_search.Counted | None = None) -> int:
    """search_median of line (masked values -1) against numpy's partition; the first read at
    the sample's bracket unless given."""
    n = line.size
    n_masked = int(np.count_nonzero(line < 0))
    rank = median_rank(n, n - n_masked)
    want = int(np.partition(line, rank)[rank])
    top = int(line.max())
    sample = line[_cpu_search._sample_positions(n)].astype(np.int32)
    read = read_line(line)
    if first is None:
        first = read(*_cpu_search.first_bracket(sample, top, rank, n_masked, n))
    got = _cpu_search.search_median(read, n, rank, n_masked, top, sample, first)
    assert got == want, (got, want)
    return got


# the median's place around the sample's first bracket [lo + 1, hi]: (pattern, "first" or
# "last" value of that pattern); "below" and "above" miss the bracket by one value
EDGES = {
    "first_in": (lambda lo, hi: lo + 1, "first"),
    "last_in": (lambda lo, hi: hi, "last"),
    "below": (lambda lo, hi: lo, "last"),
    "above": (lambda lo, hi: hi + 1, "first"),
}


def edge_line(edge: str, dtype) -> np.ndarray:
    """A patterns line [n] whose median sits on an edge of the sample's first bracket: the
    sampled positions hold 1000..1999, the others 7 or 30000 in such numbers that the rank
    falls on the first or last value of the edge's pattern (one of them set to it)."""
    n = WIDE[0] * WIDE[1]
    rank = median_rank(n, n)
    pos = np.unique(_cpu_search._sample_positions(n))
    line = np.zeros(n, dtype=dtype)
    line[pos] = 1000 + np.arange(pos.size) % 1000
    s = line[_cpu_search._sample_positions(n)].astype(np.int32)
    lo, hi = _cpu_search._bracket(s, 0, 30000, 0, n, rank)  # the same with any b > 1999
    assert 1000 <= lo + 1 and hi <= 1999  # between sampled values
    pattern, place = EDGES[edge]
    target = pattern(lo, hi)
    free = np.setdiff1d(np.arange(n), pos)  # the others: small, then target, then large
    if place == "first":  # rank values below target, the next one is target
        small = rank - int(np.count_nonzero(line[pos] < target))
    else:  # rank + 1 values up to target, the last one is target
        small = rank + 1 - int(np.count_nonzero(line[pos] <= target))
    assert 0 < small < free.size
    line[free[:small]] = 7
    line[free[small:]] = 30000
    line[free[small] if place == "first" else free[small - 1]] = target
    return line


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("edge", list(EDGES))
def test_median_on_the_bracket_edge(edge, dtype, trace):
    search(edge_line(edge, dtype))
    assert ("miss" in trace) == (edge in ("below", "above"))


@pytest.mark.parametrize("edge", list(EDGES))
def test_median_on_the_bracket_edge_through_the_first_read(edge, trace):
    """The same lines as bf16 slices (patterns <= 30000: finite values): the first read counts
    the bracket, and either settles the median or hands the search a miss."""
    line = edge_line(edge, np.int16)
    h = torch.from_numpy(line).view(torch.bfloat16).reshape(WIDE)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert ("miss" in trace) == (edge in ("below", "above"))
    assert ("read" in trace) == (edge in ("below", "above"))  # a hit needs no further read


def test_a_first_read_that_kept_nothing(trace):
    """A first read that counted its bracket but could not keep its values (too many): the
    search reads again, keeping the values of the rank's range once they are few."""
    rng = np.random.default_rng(6)
    n = WIDE[0] * WIDE[1]
    line = rng.integers(0, 20000, n).astype(np.int16)
    rank = median_rank(n, n)
    ordered = np.sort(line)
    lo, hi = int(ordered[rank - 100]) - 1, int(ordered[rank])  # the median: hi's pattern
    c_lo, c_hi = (int(np.count_nonzero(line <= p)) for p in (lo, hi))
    assert search(line, _cpu_search.Counted(lo, hi, c_lo, c_hi, None)) == int(ordered[rank])
    assert trace == ["search", "read", "gather"]


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_search_on_integer_lines(dtype, trace):
    rng = np.random.default_rng(5)
    n = WIDE[0] * WIDE[1]
    top = np.iinfo(dtype).max
    lines = [
        rng.integers(0, top, n),  # spread over the whole range
        np.full(n, 9),  # all equal
        np.where(rng.random(n) < 0.99, 0, rng.integers(0, top, n)),  # zero-heavy
        np.repeat(rng.integers(0, 50, n // 64), 64),  # runs of ties
        np.sort(rng.integers(0, 1000, n)),  # sorted
        np.where(rng.random(n) < 0.7, -1, rng.integers(0, top, n)),  # 70% masked
        np.where(np.arange(n) < n - 5, -1, 4),  # five real values
    ]
    for line in lines:
        search(line.astype(dtype))
    assert trace.count("search") == len(lines)


# ---- the selection helpers -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("spread", ["one", "few", "at_limit", "wide", "full"])
def test_select_in_a_gathered_block(dtype, spread):
    """select_kth (histogram rounds) and select_two (two ranks of the values in a range)
    against a sort, at every rank of small blocks and at sampled ranks of larger ones."""
    rng = np.random.default_rng(7)
    n = 3000
    top = int(np.iinfo(dtype).max)
    width = {"one": 1, "few": 7, "at_limit": 2049, "wide": 10**5, "full": top}[spread]
    width = min(width, top)
    block = (top - width + rng.integers(0, width, n)).astype(dtype)
    ordered = np.sort(block)
    for k in [0, 1, n // 2, n - 2, n - 1, *rng.integers(0, n, 20)]:
        assert _cpu_scan.select_kth(block, int(k)) == int(ordered[k])
    a, b = int(ordered[n // 5]), int(ordered[4 * n // 5])  # a range inside the block
    inside = np.sort(block[(block >= a) & (block <= b)])
    for i, j in [(0, 0), (0, inside.size - 1), (inside.size // 2, inside.size // 2 + 9)]:
        assert _cpu_scan.select_two(block, a, b, i, j) == (int(inside[i]), int(inside[j]))


# ---- random cases: shapes, dtypes, data, masks, k and thread counts drawn together -----------


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_the_oracle(seed, monkeypatch):
    """Slices of 16K-300K values in odd shapes (d = 1 to 20000: whole blocks, partial ones,
    rows shorter than a block), strided leading dims, random masks, k up to 64, and 2 to 8
    threads (row ranges where slices are fewer), on Gaussian, tied, zero-heavy, per-token
    scaled, sorted, NaN and massive-activation data."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < 6:
        S, d = (
            int(rng.choice([1, 3, 64, 300, 20000])),
            int(rng.choice([1, 63, 65, 128, 333, 20000])),
        )
        if not 16384 <= S * d <= 300_000:
            continue
        B = int(rng.integers(1, 4))
        x = torch.randn(B, S, d, generator=g)
        kind = rng.choice(["randn", "ties", "zeros", "scaled", "sorted", "nan", "massive"])
        if kind == "ties":
            x = torch.randint(-3, 4, (B, S, d), generator=g).float()
        elif kind == "zeros":
            x = x * (torch.rand(B, S, d, generator=g) < 0.3)
        elif kind == "scaled":
            x = x * torch.exp(2 * torch.randn(B, S, 1, generator=g))
        elif kind == "sorted":
            x = x.abs().reshape(B, -1).sort(dim=-1).values.reshape(B, S, d)
        elif kind == "nan":
            x.view(-1)[torch.randint(0, x.numel(), (5,), generator=g)] = float("nan")
        elif kind == "massive":
            x[:, 0, int(rng.integers(d))] = 5000.0
        h = x.to(DTYPES[int(rng.integers(3))])
        if rng.random() < 0.3:
            h = h.transpose(0, 1).contiguous().transpose(0, 1)  # leading dim strided
        mask = None if rng.random() < 0.5 else torch.rand(B, S, generator=g) < rng.random()
        k = int(rng.choice([1, 3, 8, 64]))
        workers = int(rng.choice([2, 3, 8]))
        monkeypatch.setattr(_cpu_path, "_workers", lambda w=workers: w)
        got = layer_stats(h, k, mask=mask, backend="torch")
        assert_stats_equal(got, reference_layer_stats(h, k, mask=mask))
        done += 1
