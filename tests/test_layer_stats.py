"""layer_stats API, input validation, and the torch path against the reference oracle.

The reference itself is checked against independent computations (numpy lexsort for the tie
rule, the published abs -> sort -> torch.median recipe for the median). Selection results are
compared bit for bit (integer views of the floats; NaN only where NaN is expected).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cases import (
    DTYPE_IDS,
    DTYPES,
    SHAPES,
    SPECIAL,
    assert_stats_equal,
    special,
    strided_views,
)

import massact
from massact import LayerStats, layer_stats, reference_layer_stats
from massact.stats import triton_available
from massact.stats._torch_path import _CPU_MIN_N

# ---- the oracle against independent computations ------------------------------------------


def test_reference_tie_rule_against_numpy_lexsort():
    h = special("ties", torch.float32, (4, 6, 5))
    ref = reference_layer_stats(h, k=7)
    x = h.abs().reshape(4, -1).numpy()
    for b in range(4):
        order = np.lexsort((np.arange(x.shape[1]), -x[b]))[:7]  # by -|h|, then index
        assert np.array_equal(ref.top_token[b].numpy() * 5 + ref.top_channel[b].numpy(), order)
        assert np.array_equal(ref.top[b].numpy(), x[b][order])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reference_matches_published_recipe(dtype):
    h = torch.randn(3, 16, 10).to(dtype)
    ref = reference_layer_stats(h, k=3)
    for b in range(3):  # Sun et al.: abs -> full sort -> torch.median, per sequence
        a = h[b].abs().flatten()
        assert torch.equal(ref.top[b], a.sort(descending=True).values[:3].float())
        assert torch.equal(ref.median[b], torch.median(a).float())
        assert torch.equal(ref.ratio[b], ref.top[b, 0] / ref.median[b])


def test_reference_median_is_lower_median():
    h = torch.tensor([[1.0, -4.0, 3.0, 2.0]])  # even count: lower of 2 and 3
    assert reference_layer_stats(h, k=1).median.item() == 2.0


# ---- the torch path against the oracle ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_torch_path_random(shape, dtype):
    h = torch.randn(shape).to(dtype)
    n = shape[-1] * shape[-2]
    for k in sorted({1, min(3, n), n if n < 40 else 17}):
        assert_stats_equal(layer_stats(h, k, backend="torch"), reference_layer_stats(h, k))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SPECIAL)
def test_torch_path_special_values(case, dtype):
    h = special(case, dtype)
    for v in strided_views(h).values():
        assert_stats_equal(layer_stats(v, k=5, backend="torch"), reference_layer_stats(v, k=5))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SPECIAL)
def test_torch_path_special_values_large_slices(case, dtype):
    """Slices of >= _CPU_MIN_N values take the CPU path (one read per slice, in parallel)."""
    h = special(case, dtype, (3, 128, 144))
    assert 128 * 144 >= _CPU_MIN_N
    for v in strided_views(h).values():
        assert_stats_equal(layer_stats(v, k=3, backend="torch"), reference_layer_stats(v, k=3))


def test_input_that_requires_grad():
    h = torch.randn(2, 50, 60, requires_grad=True)
    for backend in ("torch", "reference"):
        st = layer_stats(h * 2, backend=backend)
        assert not st.top.requires_grad
        assert_stats_equal(st, reference_layer_stats((h * 2).detach()))


def test_special_value_semantics():
    """The documented outcomes: all-zero -> nan ratio, median 0 -> inf, NaN -> NaN first."""
    assert torch.isnan(layer_stats(special("all_zero", torch.float32)).ratio).all()
    assert torch.isinf(layer_stats(special("half_zero", torch.float32)).ratio).all()
    assert torch.equal(layer_stats(special("all_equal", torch.bfloat16)).ratio, torch.ones(3))
    st = layer_stats(special("nan", torch.float16), k=4)
    assert torch.isnan(st.top[0]).all() and torch.isnan(st.median[0]) and torch.isnan(st.ratio[0])
    assert not torch.isnan(st.median[1:]).any()
    assert torch.equal(st.top_token[0] * 11 + st.top_channel[0], torch.tensor([0, 2, 5, 10]))
    st = layer_stats(special("inf", torch.float32), k=2)
    assert torch.isinf(st.top).all()  # slice 0: +inf at flat 0, -inf at flat 3
    assert torch.equal(st.top_channel[0], torch.tensor([0, 3])) and (st.top_token[0] == 0).all()
    st = layer_stats(torch.tensor([[-0.0, 0.0]]), k=2)  # -0 == +0, index order, +0 reported
    assert torch.equal(st.top_channel, torch.tensor([0, 1]))
    assert torch.equal(st.top.view(torch.int32), torch.zeros(2, dtype=torch.int32))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_views(dtype):
    h = torch.randn(2, 3, 20, 13).to(dtype)
    for view in [h[:, 1], h[..., 3:17:2, 2:], h.transpose(-1, -2), h.permute(2, 0, 3, 1)]:
        assert_stats_equal(layer_stats(view, 3, backend="torch"), reference_layer_stats(view, 3))


# ---- the API ---------------------------------------------------------------------------------


def test_api_shapes_and_dtypes():
    h = torch.randn(2, 5, 7, 9, dtype=torch.bfloat16)
    st = massact.layer_stats(h, k=4)
    assert isinstance(st, LayerStats) and st.k == 4
    assert st.top.shape == (2, 5, 4) and st.top.dtype == torch.float32
    assert st.top_token.dtype == st.top_channel.dtype == torch.int64
    assert st.median.shape == st.ratio.shape == (2, 5) and st.median.dtype == torch.float32
    assert (st.top_token < 7).all() and (st.top_channel < 9).all()
    assert torch.equal(st.ratio, st.top[..., 0] / st.median)
    assert_stats_equal(st.cpu(), st)
    assert_stats_equal(st.to("cpu"), st)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_backends_agree_on_cpu(backend):
    h = torch.randn(3, 17, 19)
    assert_stats_equal(layer_stats(h, backend=backend), reference_layer_stats(h))


def test_empty_leading_dim_gives_empty_results():
    st = layer_stats(torch.randn(0, 4, 5), k=2)
    assert st.top.shape == (0, 2) and st.median.shape == (0,)


@pytest.mark.parametrize(
    ("h", "k", "error", "match"),
    [
        (torch.randn(4), 1, ValueError, "at least 2 dims"),
        (torch.randn(()), 1, ValueError, "at least 2 dims"),
        (torch.randn(2, 0, 5), 1, ValueError, "empty slice"),
        (torch.randn(2, 3, 0), 1, ValueError, "empty slice"),
        (torch.ones(2, 3, dtype=torch.int64), 1, TypeError, "floating"),
        (torch.ones(2, 3, dtype=torch.complex64), 1, TypeError, "floating"),
        (torch.ones(2, 3, dtype=torch.float64), 1, TypeError, "float32"),
        (torch.randn(2, 3), 0, ValueError, "1 <= k"),
        (torch.randn(2, 3), 7, ValueError, "1 <= k"),
        (torch.randn(2, 3), 2.0, TypeError, "k must be an int"),
        ([[1.0, 2.0]], 1, TypeError, "torch.Tensor"),
    ],
    ids=["1d", "0d", "S0", "d0", "int", "complex", "fp64", "k0", "k_big", "k_float", "list"],
)
def test_bad_input_raises(h, k, error, match):
    with pytest.raises(error, match=match):
        layer_stats(h, k)
    with pytest.raises(error, match=match):
        reference_layer_stats(h, k)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend must be one of"):
        layer_stats(torch.randn(2, 3), backend="cuda")


def test_triton_backend_raises_where_it_cannot_run(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: Triton can run")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run"):
        layer_stats(torch.randn(2, 3), backend="triton")
    h = torch.randn(2, 3)  # "auto" falls back quietly to the torch path
    assert_stats_equal(layer_stats(h), reference_layer_stats(h))


def test_triton_older_than_the_kernels_is_refused_by_name(monkeypatch):
    """Triton 3.3 lacks what the kernels use (tl.histogram's mask): backend='triton' says so in
    one line, 'auto' serves CUDA tensors from the torch path instead of failing to compile."""
    import triton
    from massact.kernels._plan import triton_release

    assert triton_release("3.10.2+git1a2b") == (3, 10) and triton_release("3.4.0") == (3, 4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.3.1")
    h = torch.randn(2, 4, 5)
    assert not triton_available(h.device) and not triton_available(torch.device("cuda"))
    why = r"^backend='triton' cannot run here: the kernels need Triton >= 3\.4, "
    why += r"this is Triton 3\.3\.1; use backend='auto' or 'torch'$"
    with pytest.raises(RuntimeError, match=why):
        layer_stats(h, backend="triton")
    assert_stats_equal(layer_stats(h), reference_layer_stats(h))


def test_triton_backend_never_falls_back_silently():
    """k above the kernels' limit: backend='triton' raises naming the limit; 'auto' (and the
    torch path) serve it."""
    from massact.kernels.layer_stats import MAX_K

    h = torch.randn(1, 10, 10)
    if not triton_available(h.device):
        pytest.skip("Triton cannot run here")
    for call in (
        lambda: layer_stats(h, MAX_K + 1, backend="triton"),
        lambda: massact.layer_stats_many([h], MAX_K + 1, backend="triton"),
    ):
        with pytest.raises(
            ValueError, match=rf"k <= {MAX_K}.*got k={MAX_K + 1}.*'auto' or 'torch'"
        ):
            call()
    assert_stats_equal(layer_stats(h, MAX_K + 1), reference_layer_stats(h, MAX_K + 1))


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_layer_stats_many(backend):
    hs = [torch.randn(2, 7, 5), torch.randn(7, 5).half(), torch.randn(0, 3, 4), torch.randn(3, 4)]
    out = massact.layer_stats_many(hs, 2, backend=backend)
    assert len(out) == len(hs)
    for got, h in zip(out, hs):
        assert_stats_equal(got, layer_stats(h, 2, backend="reference"))
    with pytest.raises(ValueError, match="1 <= k"):
        massact.layer_stats_many(hs, 13)
