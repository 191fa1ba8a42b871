"""The fused Triton kernels against the reference oracle, bit for bit, on every path they have.

Without CUDA the kernels run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it):
slow, so shapes are small and tiny tile / buffer / sample sizes force the multi-block paths and
the fallbacks. With CUDA the same tests run on the GPU. Outputs are allocated filled with NaN / -1
so that an element a kernel forgets to write is caught. `LaunchTrace.status` says which path
each slice took (kernels/_plan.py STATUS flags), so every path is asserted to have run.
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
from massact.kernels import _plan as flags
from massact.kernels.layer_stats import (
    MAX_K,
    LaunchTrace,
    plan,
    triton_layer_stats,
    triton_layer_stats_many,
)

from massact import layer_stats, layer_stats_many, reference_layer_stats

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="CUDA")]),
]
HIT = 0  # STATUS of a slice the one-read path answered
MEDIAN_MISS = flags.MEDIAN_FALLBACK.value | flags.BUFFER_OVERFLOW.value


def run(h: torch.Tensor, k: int = 3, mask=None, **overrides) -> tuple:
    """(kernel LayerStats, per-slice STATUS flags as a list) with poisoned outputs."""
    trace = LaunchTrace()
    got = triton_layer_stats(h, k, mask, empty=nan_empty, trace=trace, **overrides)
    return got, trace.status.tolist()


def check(h: torch.Tensor, k: int = 3, mask=None, **overrides) -> list[int]:
    """Assert the kernels equal the oracle; return the STATUS flags."""
    got, status = run(h, k, mask, **overrides)
    assert_stats_equal(got, reference_layer_stats(h, k, mask=mask))
    return status


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_kernel_shapes(shape, dtype, device):
    h = torch.randn(shape, device=device).to(dtype)
    status = check(h, min(3, shape[-1] * shape[-2]))
    if shape[-1] * shape[-2] >= 64:  # random values: the sample brackets the median
        assert all(s & MEDIAN_MISS == 0 for s in status), status


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
    assert plan(tuple(h.shape), h.stride(), dtype, 5, programs=1, **tiling).nb > 1
    for view in (h, h.transpose(-1, -2)):
        check(view, 5, **tiling)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", SPECIAL)
def test_kernel_special_values(case, dtype, device):
    h = special(case, dtype, (2, 9, 11)).to(device)
    for v in strided_views(h).values():
        check(v, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_non_collapsible_leading_dims(device):
    """Leading dims that no single stride describes: a table of slice offsets."""
    h = torch.randn(3, 4, 6, 5, device=device).to(torch.bfloat16)
    for v in (h.permute(2, 0, 3, 1), h[::2, 1:, :, ::2]):  # [6, 3, 5, 4], [2, 3, 6, 3]
        check(v, 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 8, 20])
def test_kernel_k(k, device):
    h = special("ties", torch.float16, (2, 4, 5)).to(device)  # n = 20: k = 20 takes everything
    check(h, k)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_through_public_api(device):
    h = torch.randn(2, 8, 12, device=device)
    got = layer_stats(h, backend="triton")
    assert_stats_equal(got, reference_layer_stats(h))
    assert got.top.device == h.device
    with pytest.raises(ValueError, match=f"k <= {MAX_K}"):  # named backend: no silent fallback
        layer_stats(torch.randn(1, 10, 10, device=device), MAX_K + 1, backend="triton")
    with pytest.raises(ValueError, match=f"1 <= k <= {MAX_K}"):  # the launcher says it too
        triton_layer_stats(h, MAX_K + 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernel_masks(dtype, device):
    """Masked tokens do not count: original positions, per-slice median rank, NaN / -1 where a
    slice has no real token or fewer real values than k."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, 13, 7, generator=g).to(device, dtype)
    h[0, 3, 2] = 50.0  # a masked massive activation must not be the top
    mask = torch.rand(4, 13, generator=g) < 0.6
    mask[0, 3] = False
    mask[1] = False  # no real token
    mask[2] = False
    mask[2, 5] = True  # 7 real values < k = 8
    mask = mask.to(device)
    for k in (3, 8):
        status = check(h, k, mask)
        assert status[1] == flags.EMPTY_SLICE.value
    transposed = h.transpose(-1, -2).contiguous().transpose(-1, -2)  # S contiguous
    check(transposed, 3, mask)
    check(h, 3, torch.tensor([True] * 5 + [False] * 8, device=device).expand(4, 13))  # [S] bcast
    check(h[:, ::2], 3, mask[:, ::2])  # strided view and mask
    check(h, 3, mask, **TILINGS["rows"])  # many blocks, masked rows inside tiles


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_masks_table_and_many(device):
    """A mask with non-collapsible leading dims, and one mask shared by several tensors."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 4, 9, 6, generator=g).to(device, torch.float16)
    mask = (torch.rand(3, 4, 9, generator=g) < 0.7).to(device)
    check(h.permute(1, 0, 2, 3), 3, mask.permute(1, 0, 2))
    hs = [h[:, 0], h[:, 1], h[:, 2].contiguous()]
    for got, x in zip(triton_layer_stats_many(hs, 4, mask[:, 0], empty=nan_empty), hs):
        assert_stats_equal(got, reference_layer_stats(x, 4, mask=mask[:, 0]))
    for got, x in zip(layer_stats_many(hs, 2, mask=mask[:, 1], backend="triton"), hs):
        assert_stats_equal(got, reference_layer_stats(x, 2, mask=mask[:, 1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kernel_paths(dtype, device):
    """Each path, forced by tiny sizes, and what it is exact on."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 40, 24, generator=g).to(device, dtype)
    assert check(h, 3) == [HIT, HIT]  # one read answers everything
    # median outside the window (one pattern, no margin, few samples): radix over the slice
    status = check(h, 3, window=1, z_pilot=0.0, z_sample=0.0, sample_chunks=8)
    assert all(s & MEDIAN_MISS for s in status), status
    # candidate buffer of one entry, threshold from one chunk: top-k scan of the slice
    status = check(h, 3, cap_top=1, sample_chunks=1)
    assert all(s & flags.TOPK_FALLBACK.value for s in status), status
    # few distinct values: fewer than k above t, the rest found in index order
    status = check(special("ties", dtype, (2, 40, 24)).to(device), 5)
    assert all(s & flags.TIE_SCAN.value for s in status), status
    if dtype == torch.float32:  # median buffer of 16 values: overflow, radix over the slice
        status = check(h, 3, cap_median=16, z_sample=8.0)
        assert all(s & flags.BUFFER_OVERFLOW.value for s in status), status


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_sample_repeats_an_element(device):
    """More sampled chunks than the slice has: the k + 2 largest sampled values can be copies of
    a few elements, so t sits above the k-th value; the tie scan finds too few, the scan answers."""
    h = torch.tensor([[[1.0, -3.0, 2.0]]], device=device)  # one chunk
    assert check(h, 3) == [HIT]  # sampled once: fewer than k + 2 values, t = 0
    status = check(h, 3, sample_chunks=4)  # t = 2, the 5th of 3, 3, 3, 3, 2, ...
    assert status == [flags.TIE_SCAN.value | flags.TOPK_FALLBACK.value], status


ADVERSARIAL = {
    # every value equal: one window bin, the k smallest indices by the tie scan
    "all_equal": lambda g, shape: torch.full(shape, -1.5),
    # a clipped tail: a tenth of the values at the clip level
    "clipped": lambda g, shape: torch.randn(shape, generator=g).clamp(-1.2, 1.2),
    # most values zero: median 0, window at the bottom
    "zero_heavy": lambda g, shape: torch.randn(shape, generator=g) * (torch.rand(shape) < 0.3),
    # sorted by flat index: position tells the value
    "sorted": lambda g, shape: (
        torch.linspace(-3, 5, shape[-2] * shape[-1]).reshape(shape[-2:]).expand(shape)
    ),
    # one scale per token (massive-activation tokens, padding-like tokens)
    "token_scaled": lambda g, shape: (
        torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[-2])[:, None]
    ),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ADVERSARIAL)
def test_kernel_adversarial_brackets(case, dtype, device):
    """Inputs built against a sampled bracket: exact whatever path they take."""
    g = torch.Generator().manual_seed(4)
    h = ADVERSARIAL[case](g, (2, 48, 20)).to(device, dtype)
    check(h, 3)
    check(h, 3, sample_chunks=2, cap_median=64)  # a poor sample and a small buffer


def test_scratch_memory_within_one_percent():
    """Extra memory for the bench shapes with a realistic grid (132 SMs x 8 programs)."""
    for shape in [(8, 2048, 4096), (10, 2048, 5120), (1, 2048, 512)]:
        for dtype in DTYPES:
            h = torch.empty(shape, dtype=dtype, device="meta")
            p = plan(shape, h.stride(), dtype, 3, programs=8 * 132, tile=1024)
            assert p.scratch_bytes <= 0.01 * p.input_bytes, (shape, dtype, p)


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
    st, _ = run(h, 3)
    assert st.top[2].tolist() == [9.0, 2.0, 2.0]
    assert st.top_token[2].tolist() == [S - 1, 0, 0] and st.top_channel[2].tolist() == [D - 1, 0, 1]
    assert st.median.tolist() == [1.0, 1.0, 2.0]
    assert st.top[0].tolist() == [1.0, 1.0, 1.0] and st.top_channel[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_many_tensors_one_launch(device):
    """Several layers' tensors (different leading dims, same [S, d] strides) in one launch."""
    base = torch.randn(4, 9, 11, device=device).to(torch.float16)
    hs = [base[0], base[1:3], base[::2], base.unsqueeze(0)[:, 1:]]  # [9,11] [2,9,11] ...
    trace = LaunchTrace()
    for got, h in zip(triton_layer_stats_many(hs, 3, empty=nan_empty, trace=trace), hs):
        assert_stats_equal(got, reference_layer_stats(h, 3))
    assert trace.plan.B == 1 + 2 + 2 + 3 and trace.status.shape == (8,)
    # the public API groups by layout: the transposed view goes in its own launch
    mixed = [*hs, base.transpose(-1, -2), base[:, :5].float()]
    for got, h in zip(layer_stats_many(mixed, 2, backend="triton"), mixed):
        assert_stats_equal(got, reference_layer_stats(h, 2))
