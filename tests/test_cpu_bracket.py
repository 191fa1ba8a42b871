"""The CPU path's median search (`_cpu_search.search_median`): adversarial slices for its
sample bracket, each bit-identical to the oracle, and which path each one took; the choice
between the search and numpy's partition (`_cpu_path._method`).

The search counts values against thresholds taken from a fixed random sample of the slice; it
must stay exact when the sample misleads it (ties, skewed layouts, a sample that sees only
large values), and the tests see through `_cpu_search._trace` that the bracket, its misses, the
gather of the bracket's values and the fallback to the full partition each ran.
Slices hold more values than the sample (n > _SAMPLE), so the sample is a real subset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cases import DTYPE_IDS, DTYPES, assert_stats_equal

from massact import layer_stats, reference_layer_stats
from massact.stats import _cpu_path, _cpu_search
from massact.stats._patterns import median_rank

SLICE = (160, 128)  # n = 20480 > _SAMPLE: the sample (drawn with replacement) sees about half
WIDE = (512, 256)  # n = 131072: the sample sees about one value in eight
assert _cpu_search._SAMPLE < SLICE[0] * SLICE[1]


@pytest.fixture
def trace(monkeypatch) -> list[str]:
    """The search's steps; the search on for every pattern width, whichever method this
    machine's timing would choose."""
    events: list[str] = []
    monkeypatch.setattr(_cpu_search, "_trace", events)
    use_method(monkeypatch, "search")
    return events


def use_method(monkeypatch, method: str) -> None:
    for width in (2, 4):
        monkeypatch.setitem(_cpu_path._median_method, width, method)


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
    assert "fallback" not in trace


@pytest.mark.parametrize("chunk", [_cpu_search._CHUNK, 3000], ids=["one_chunk", "chunks"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_plain_slices_hit_the_first_bracket(dtype, chunk, trace, monkeypatch):
    """Random data: the sample's bracket holds the rank and the first pass, which counted it
    and gathered the values in it (the slice in one chunk, or in chunks of 11 rows and a
    shorter last one), settles the median: no miss, no further pass."""
    monkeypatch.setattr(_cpu_search, "_CHUNK", chunk)
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
    assert "miss" in trace and "fallback" not in trace


def test_the_fallback_partition_after_max_passes(monkeypatch, trace):
    monkeypatch.setattr(_cpu_search, "_MAX_PASSES", 1)
    h = sample_biased("low", torch.bfloat16)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert trace[-1] == "fallback" and trace.count("pass") == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("search", [False, True], ids=["partition", "search"])
def test_both_medians(search, dtype, monkeypatch, trace):
    """numpy's partition and the search agree."""
    use_method(monkeypatch, "search" if search else "partition")
    h = adversarial("by_token").to(dtype)
    mask = masks()["random"]
    got = layer_stats(h, 3, mask=mask, backend="torch")
    assert_stats_equal(got, reference_layer_stats(h, 3, mask=mask))
    assert trace.count("search") == (2 if search else 0)


# ---- the search alone, on integer lines (int16 as in use, int32 as the helper allows) ---------


def search(line: np.ndarray) -> int:
    """search_median of line (masked values -1) against numpy's partition."""
    n = line.size
    n_masked = int(np.count_nonzero(line < 0))
    rank = median_rank(n, n - n_masked)
    want = int(np.partition(line, rank)[rank])
    got = _cpu_search.search_median(line.copy(), rank, n_masked, int(line.max()))
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
    s = np.sort(line[_cpu_search._sample_positions(n)].astype(np.int32))
    lo, hi = _cpu_search._bracket(s, 0, 30000, 0, n, rank)  # the same with any b > 1999
    assert lo is not None and hi is not None
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
def test_median_on_the_bracket_edge_through_the_first_pass(edge, trace):
    """The same lines as bf16 slices (patterns <= 30000: finite values): the fused first pass
    counts the bracket, and either settles the median or hands the search a miss."""
    line = edge_line(edge, np.int16)
    h = torch.from_numpy(line).view(torch.bfloat16).reshape(WIDE)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert ("miss" in trace) == (edge in ("below", "above"))
    assert ("pass" in trace) == (edge in ("below", "above"))  # a hit needs no further pass


def test_gather_after_a_first_pass_without_its_block(trace):
    """A first pass that counted its bracket but did not gather it (the sample expected many
    values there): the search counts the rows of both ends, then gathers."""
    rng = np.random.default_rng(6)
    n = WIDE[0] * WIDE[1]
    line = rng.integers(0, 20000, n).astype(np.int16)
    rank = median_rank(n, n)
    ordered = np.sort(line)
    lo, hi = int(ordered[rank - 100]) - 1, int(ordered[rank])  # the median: hi's pattern
    c_lo, c_hi = (int(np.count_nonzero(line <= p)) for p in (lo, hi))
    s = np.sort(line[_cpu_search._sample_positions(n)].astype(np.int32))
    first = _cpu_search.FirstPass(s, lo, hi, c_lo, c_hi, None)
    got = _cpu_search.search_median(line.copy(), rank, 0, int(line.max()), first)
    assert got == int(ordered[rank]) and trace == ["search", "gather"]


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
    assert trace.count("search") == len(lines) and "fallback" not in trace


# ---- which method: timed once per pattern width, or fixed by $MASSACT_CPU_MEDIAN ------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_the_timed_choice_is_kept_per_width(dtype, monkeypatch):
    monkeypatch.delenv("MASSACT_CPU_MEDIAN", raising=False)
    width = 4 if dtype == torch.float32 else 2
    monkeypatch.setitem(_cpu_path._median_method, width, None)
    chosen = _cpu_path._method(dtype)
    assert chosen in ("partition", "search") and _cpu_path._median_method[width] == chosen
    h = torch.randn(2, *WIDE, generator=torch.Generator().manual_seed(8)).to(dtype)
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))


@pytest.mark.parametrize("method", ["partition", "search"])
def test_the_environment_fixes_the_method(method, monkeypatch):
    monkeypatch.setenv("MASSACT_CPU_MEDIAN", method)
    monkeypatch.setitem(_cpu_path._median_method, 4, None)
    events: list[str] = []
    monkeypatch.setattr(_cpu_search, "_trace", events)
    h = torch.randn(2, *WIDE, generator=torch.Generator().manual_seed(9))
    assert_stats_equal(layer_stats(h, 3, backend="torch"), reference_layer_stats(h, 3))
    assert _cpu_path._median_method[4] == method
    assert events.count("search") == (2 if method == "search" else 0)


def test_a_bad_method_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("MASSACT_CPU_MEDIAN", "quickselect")
    monkeypatch.setitem(_cpu_path._median_method, 2, None)
    with pytest.raises(ValueError, match="MASSACT_CPU_MEDIAN='quickselect': expected"):
        layer_stats(torch.randn(2, *WIDE).to(torch.bfloat16), 3, backend="torch")


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("spread", ["one", "few", "at_limit", "wide", "full"])
def test_select_in_a_gathered_block(dtype, spread):
    """_select (counting where the block spans few patterns, numpy's selection elsewhere)
    against a sort, at every rank of small blocks and at sampled ranks of larger ones."""
    rng = np.random.default_rng(7)
    n = 3000
    top = int(np.iinfo(dtype).max)
    width = {"one": 1, "few": 7, "at_limit": 4 * n + 1025, "wide": 10**5, "full": top}[spread]
    width = min(width, top)
    block = (top - width + rng.integers(0, width, n)).astype(dtype)
    ordered = np.sort(block)
    for k in [0, 1, n // 2, n - 2, n - 1, *rng.integers(0, n, 20)]:
        assert _cpu_search._select(block, int(k)) == int(ordered[k])
