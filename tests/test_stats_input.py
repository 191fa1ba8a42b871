"""validate_input, the one check of what layer_stats accepts: inputs that cannot be reduced get
an error naming the problem; numpy integers are accepted as k (issue 14, item 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from massact.stats._dispatch import layer_stats, layer_stats_many
from massact.stats._reference import reference_layer_stats
from massact.stats._result import validate_input


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda h: h.to("meta"), ValueError, "meta device"),
        (lambda h: h[0].to_sparse(), TypeError, "dense.*sparse_coo.*to_dense"),
        (lambda h: h[0].to_sparse_csr(), TypeError, "dense.*sparse_csr.*to_dense"),
    ],
    ids=["meta", "sparse-coo", "sparse-csr"],
)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_tensors_without_dense_data_are_refused_by_name(make, error, match):
    h = make(torch.randn(2, 5, 8))
    with pytest.raises(error, match=match):
        validate_input(h, 3)
    for backend in ("torch", "reference"):
        with pytest.raises(error, match=match):
            layer_stats(h, 3, backend=backend)
    with pytest.raises(error, match=match):
        layer_stats_many([h], 3, backend="torch")


@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), np.uint8(3)], ids=["i64", "i32", "u8"])
def test_numpy_integer_k_is_an_int(k):
    h = torch.randn(2, 5, 8)
    assert validate_input(h, k) == 3 and type(validate_input(h, k)) is int
    want = layer_stats(h, 3, backend="torch")
    for got in (layer_stats(h, k, backend="torch"), reference_layer_stats(h, k)):
        assert got.k == 3
        assert torch.equal(got.top, want.top) and torch.equal(got.median, want.median)


@pytest.mark.parametrize("k", [True, np.bool_(True), 3.0, np.float64(3), "3", torch.tensor(3)])
def test_non_integer_k_is_still_refused(k):
    with pytest.raises(TypeError, match="k must be an int"):
        validate_input(torch.randn(2, 5, 8), k)


def test_range_of_numpy_k_is_checked():
    with pytest.raises(ValueError, match=r"1 <= k <= S \* d = 40, got k=41"):
        validate_input(torch.randn(2, 5, 8), np.int64(41))


def test_numpy_integer_k_on_the_triton_kernels():
    """The kernels take k as a compile-time constant: dispatch passes the validated int on."""
    h = torch.randn(2, 5, 8)
    want = reference_layer_stats(h, 3)
    for got in (
        layer_stats(h, np.int64(3), backend="triton"),
        layer_stats_many([h, h], np.int32(3), backend="triton")[1],
    ):
        assert torch.equal(got.top, want.top) and torch.equal(got.median, want.median)
