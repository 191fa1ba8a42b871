"""Hidden-state test cases and comparison helpers shared by the layer-stats tests.

Used by test_layer_stats.py (torch path), test_kernels.py and test_kernels_compile.py (Triton
kernels). Import after tests/conftest.py has run (pytest sees to it): INTERPRET reads the
TRITON_INTERPRET it sets. Nothing here imports massact at run time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from massact import LayerStats

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
FIELDS = ("top", "top_token", "top_channel", "median", "ratio")

# id -> shape [..., S, d]; the comment says which code path it exercises
SHAPES = {
    "S1_d1": (1, 1),  # one element: top = median
    "S1": (1, 37),  # one token
    "d1": (23, 1),  # one channel
    "odd_d": (3, 5, 7),  # d not a power of two, 3-D input
    "2d": (64, 48),  # no leading dim
    "4d": (2, 3, 4, 6),  # two leading dims
    "big_slice": (2, 130, 67),  # larger than one kernel block (many blocks), odd sizes
}

# adversarial value patterns for selection, built by special()
SPECIAL = ["ties", "signed_zeros", "subnormals", "inf", "all_equal", "all_zero", "half_zero", "nan"]


def assert_stats_equal(got: LayerStats, want: LayerStats) -> None:
    """Bit-identical comparison (float fields via their int32 views; NaN only where expected)."""
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape)
        assert a.device == b.device, name
        a, b = a.cpu(), b.cpu()
        if a.is_floating_point():
            assert torch.equal(a.isnan(), b.isnan()), (name, a, b)
            a, b = a.nan_to_num(0.5).view(torch.int32), b.nan_to_num(0.5).view(torch.int32)
        assert torch.equal(a, b), (name, a, b)


def nan_empty(shape, *, dtype, device):
    """torch.empty that poisons: NaN for floats, -1 for ints (never a valid index).

    Passed as the kernels' `empty=` allocator, so that an output element a kernel forgets to
    write is caught by assert_stats_equal.
    """
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(shape, fill, dtype=dtype, device=device)


def bits_tensor(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Integer bit patterns reinterpreted as `dtype` (int32 for fp32, int16 for fp16 / bf16)."""
    view = torch.int32 if dtype == torch.float32 else torch.int16
    return bits.to(view).view(dtype)


def special(case: str, dtype: torch.dtype, shape=(3, 9, 11), seed: int = 0) -> torch.Tensor:
    """Adversarial inputs for selection: ties, signed zeros, subnormals, inf, NaN."""
    g = torch.Generator().manual_seed(seed)
    randn = torch.randn(shape, generator=g)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    if case == "ties":  # few distinct values, many equal |h| with both signs
        return torch.randint(-3, 4, shape, generator=g).to(dtype)
    if case == "signed_zeros":  # +0/-0 among small integers: -0 == +0
        x = torch.randint(0, 2, shape, generator=g).float() * sign
        return x.to(dtype)
    if case == "subnormals":  # subnormal patterns of the dtype, with zeros
        top = {torch.float32: 0x007FFFFF, torch.float16: 0x03FF, torch.bfloat16: 0x007F}[dtype]
        bits = torch.randint(0, top + 1, shape, generator=g)
        return bits_tensor(bits, dtype) * sign.to(dtype)
    if case == "inf":  # +-inf tie with each other and sit above every finite value
        x = randn.clone()
        x.view(-1)[::7] = float("inf")
        x.view(-1)[3::11] = -float("inf")
        return x.to(dtype)
    if case == "all_equal":  # ratio 1; every index ties
        return (torch.full(shape, 2.5) * sign).to(dtype)
    if case == "all_zero":  # ratio 0/0 = nan
        return (torch.zeros(shape) * sign).to(dtype)
    if case == "half_zero":  # median 0, ratio inf
        x = randn.clone()
        x[..., : shape[-2] * 2 // 3, :] = 0.0
        return x.to(dtype)
    if case == "nan":  # NaNs of both signs in the first slice only: its median/ratio are NaN
        x = randn.to(dtype).clone()
        x[0].view(-1)[::5] = float("nan")
        x[0].view(-1)[2::13] = -float("nan")
        x[0].view(-1)[1] = float("inf")
        return x
    raise ValueError(case)


def strided_views(h: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same data as non-contiguous views: a slice and a transposed view."""
    return {
        "contiguous": h,  # dense rows: d is the contiguous axis
        # every other row, from channel 1: row stride 2 * d, a start off the allocation's
        "slice": h[..., ::2, 1:] if h.shape[-1] > 1 else h[..., ::2, :],
        "transposed": h.transpose(-1, -2),  # S is the contiguous axis: tiles wide along S
    }


def ref_stats(h: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch top-k values [..., k] and lower median [...] of |h| over the last two dims."""
    a = h.detach().abs().float().flatten(-2)
    return a.topk(k, dim=-1).values, a.median(dim=-1).values
