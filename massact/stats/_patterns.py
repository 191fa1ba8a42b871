"""Bit patterns of |h|: what the fast torch path and the CPU path select on, and back to numbers.

Clearing the sign bit of an integer view of h gives integers whose order is the order of |h|
(+0 == -0, +inf above every finite value, NaN above +inf once every NaN payload is clamped to
one pattern, INF + 1, as torch treats NaNs as equal). Every such pattern is >= 0, so a masked
token's values get the pattern -1: below every real value, never selected before one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._result import BIT_PATTERNS, LayerStats

MASKED = -1  # the pattern of a masked token's values; also "no value" in the results below


def abs_bits(h: torch.Tensor) -> torch.Tensor:
    """[..., S, d] int32 patterns of |h| in a new contiguous buffer (NaN not yet canonical)."""
    view, sign_off, _ = BIT_PATTERNS[h.dtype]
    bits = torch.empty(h.shape, dtype=torch.int32, device=h.device)
    torch.bitwise_and(h.view(view), sign_off, out=bits)
    return bits


def bits_to_float(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int patterns of |h| -> float32 values (the canonical NaN pattern becomes NaN)."""
    view = BIT_PATTERNS[dtype][0]
    return bits.to(view).view(dtype).to(torch.float32)


def median_rank(n: int, n_real):
    """0-based ascending rank of the lower median of the n_real real values among all n values
    of a slice, masked ones (pattern -1, the smallest) included. n_real: int or int tensor."""
    return (n - n_real) + (n_real - 1) // 2


def stats_from_patterns(
    top_bits: torch.Tensor,
    flat: torch.Tensor,
    median_bits: torch.Tensor,
    dtype: torch.dtype,
    d: int,
    lead: Sequence[int],
) -> LayerStats:
    """LayerStats from the selected patterns of B slices, with the contract's missing values.

    top_bits [B, k] and flat [B, k] int64: patterns and flat indices s * d + c of the top-k, a
    pattern < 0 where the slice has fewer than k real values (-> NaN, token and channel -1).
    median_bits [B] int64: the median's pattern, < 0 for a slice without a real value (-> NaN).
    A NaN among the real values makes the median NaN, as torch.median does: it is then top 1.
    """
    missing = top_bits < 0
    top = bits_to_float(top_bits.clamp(min=0), dtype).masked_fill(missing, float("nan"))
    token = torch.where(missing, MASKED, flat // d)
    channel = torch.where(missing, MASKED, flat % d)
    median = bits_to_float(median_bits.clamp(min=0), dtype)
    median = median.masked_fill(median_bits < 0, float("nan"))
    median = torch.where(torch.isnan(top[:, 0]), top[:, 0], median)
    return LayerStats.from_slices(top, token, channel, median, lead)
