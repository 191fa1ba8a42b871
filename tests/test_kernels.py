"""The fused Triton kernels against the reference oracle, bit for bit.

Without CUDA the kernels run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets
it): slow, so shapes are small and tiny tile sizes force the multi-block / multi-tile paths.
With CUDA the same tests run on the GPU. Outputs are allocated filled with NaN / -1 so that an
element a kernel forgets to write is caught.
"""

from __future__ import annotations

import pytest
import torch
from _cases import (
    DTYPE_IDS,
    DTYPES,
    HAS_CUDA,
    INTERPRET,
    SHAPES,
    SPECIAL,
    assert_stats_equal,
    nan_empty,
    special,
    strided_views,
)
from massact.kernels.layer_stats import (
    LEVELS,
    MAX_K,
    plan,
    triton_layer_stats,
    triton_layer_stats_many,
)

from massact import layer_stats, layer_stats_many, reference_layer_stats

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="CUDA")]),
]


def run(h: torch.Tensor, k: int = 3, **overrides):
    return triton_layer_stats(h, k, empty=nan_empty, **overrides)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_kernel_shapes(shape, dtype, device):
    h = torch.randn(shape, device=device).to(dtype)
    k = min(3, shape[-1] * shape[-2])
    assert_stats_equal(run(h, k), reference_layer_stats(h, k))


# tiny tiles: (tile elements, tile width, tiles per block) -> many blocks and loop iterations
TILINGS = {
    "rows": dict(tile=16, block_d=4, tiles=2),  # [4, 4] tiles, 2 column blocks, 2 tiles/block
    "one_row": dict(tile=8, block_d=8, tiles=3),  # [1, 8] tiles, 3 row blocks
    "one_col": dict(tile=8, block_d=1, tiles=2),  # [8, 1] tiles (transposed orientation), masked
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("tiling", TILINGS.values(), ids=TILINGS.keys())
def test_kernel_many_blocks(tiling, dtype, device):
    h = special("ties", dtype, (2, 7, 6)).to(device)  # ties across blocks test the merge
    cfg = plan(tuple(h.shape), h.stride(), dtype, 5, programs=1, **tiling)
    assert cfg["nb"] > 1
    for view in (h, h.transpose(-1, -2)):
        assert_stats_equal(run(view, 5, **tiling), reference_layer_stats(view, 5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SPECIAL)
def test_kernel_special_values(case, dtype, device):
    h = special(case, dtype, (2, 9, 11)).to(device)
    for v in strided_views(h).values():
        assert_stats_equal(run(v, 4), reference_layer_stats(v, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_non_collapsible_leading_dims(device):
    """Leading dims that no single stride describes: per-slice base offsets."""
    h = torch.randn(3, 4, 6, 5, device=device).to(torch.bfloat16)
    for v in (h.permute(2, 0, 3, 1), h[::2, 1:, :, ::2]):  # [6, 3, 5, 4], [2, 3, 6, 3]
        assert_stats_equal(run(v, 3), reference_layer_stats(v, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 8, 20])
def test_kernel_k(k, device):
    h = special("ties", torch.float16, (2, 4, 5)).to(device)  # n = 20: k = 20 takes everything
    assert_stats_equal(run(h, k), reference_layer_stats(h, k))


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_through_public_api(device):
    h = torch.randn(2, 8, 12, device=device)
    got = layer_stats(h, backend="triton")
    assert_stats_equal(got, reference_layer_stats(h))
    assert got.top.device == h.device
    # k above the register-resident limit: served by the torch path, same numbers
    h = torch.randn(1, 10, 10, device=device)
    assert_stats_equal(layer_stats(h, MAX_K + 1, backend="triton"), reference_layer_stats(h, 65))


def test_scratch_memory_within_one_percent():
    """Extra memory for the bench shapes with a realistic grid (132 SMs x 8 programs)."""
    for shape in [(8, 2048, 4096), (10, 2048, 5120), (1, 2048, 512)]:
        for dtype in LEVELS:
            h = torch.empty(shape, dtype=dtype, device="meta")
            cfg = plan(shape, h.stride(), dtype, 3, programs=8 * 132)
            in_bytes = h.numel() * h.element_size()
            assert cfg["scratch_bytes"] <= 0.01 * in_bytes, (shape, dtype, cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="CUDA")
def test_kernel_more_than_2_31_elements():
    """64-bit offsets: 3 * 2**30 bf16 elements (6 GiB); values planted past offset 2**31."""
    need = 9 * 2**30  # input 6 GiB + temporaries of the setup
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip("needs ~9 GiB free GPU memory")
    S, D = 2**20, 1024
    h = torch.ones(3, S, D, dtype=torch.bfloat16, device="cuda")
    h[2, -1, -1] = -9.0  # flat offset 3 * 2**30 - 1
    h[2, : S // 2 + 1] = 2.0 * torch.sign(h[2, : S // 2 + 1])  # more than half: median 2
    st = run(h, 3)
    assert st.top[2].tolist() == [9.0, 2.0, 2.0]
    assert st.top_token[2].tolist() == [S - 1, 0, 0] and st.top_channel[2].tolist() == [D - 1, 0, 1]
    assert st.median.tolist() == [1.0, 1.0, 2.0]
    assert st.top[0].tolist() == [1.0, 1.0, 1.0] and st.top_channel[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_many_tensors_one_launch(device):
    """Several layers' tensors (different leading dims, same [S, d] strides) in one launch."""
    base = torch.randn(4, 9, 11, device=device).to(torch.float16)
    hs = [base[0], base[1:3], base[::2], base.unsqueeze(0)[:, 1:]]  # [9,11] [2,9,11] ...
    for got, h in zip(triton_layer_stats_many(hs, 3, empty=nan_empty), hs):
        assert_stats_equal(got, reference_layer_stats(h, 3))
    # the public API groups by layout: the transposed view goes in its own launch
    mixed = [*hs, base.transpose(-1, -2), base[:, :5].float()]
    for got, h in zip(layer_stats_many(mixed, 2, backend="triton"), mixed):
        assert_stats_equal(got, reference_layer_stats(h, 2))
