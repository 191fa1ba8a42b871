"""Fast torch path of the layer statistics (any device), bit-identical to the oracle `_reference`.

Works on the bit pattern of |h|: clearing the sign bit of an integer view of h gives integers
whose order is the order of |h| (+0 == -0, +inf above every finite value, NaN above +inf once
all NaN payloads are clamped to one pattern, as torch treats NaNs as equal).

Per slice (B slices of n = S * d values), after one pass that writes the int32 patterns:
- top-k: the per-token maxima [B, S] bound the k-th largest value from below (k tokens hold an
  element at least as large as the k-th largest token maximum), so only tokens whose maximum
  reaches that bound can hold a top-k element: exact (value, index) keys are built for those
  rows only (all rows in the worst case, e.g. an all-equal slice).
- median: an in-place selection (numpy's SIMD introselect on int32) on CPU, torch.kthvalue on
  other devices.
Published recipe for comparison: abs -> full sort -> torch.median per sequence.
"""

from __future__ import annotations

import math

import torch

from ._result import BIT_PATTERNS, LayerStats

_NUMPY_MIN_N = 2048  # smaller slices: one batched kthvalue beats a Python loop


def abs_bits(h: torch.Tensor) -> torch.Tensor:
    """[..., S, d] int32 patterns of |h| in a new contiguous buffer (NaN not yet canonical)."""
    view, mask, _ = BIT_PATTERNS[h.dtype]
    bits = torch.empty(h.shape, dtype=torch.int32, device=h.device)
    torch.bitwise_and(h.view(view), mask, out=bits)
    return bits


def bits_to_float(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int patterns of |h| -> float32 values (the canonical NaN pattern becomes NaN)."""
    view = BIT_PATTERNS[dtype][0]
    return bits.to(view).view(dtype).to(torch.float32)


def _keys(bits: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered by |h|, then by smaller flat index (all distinct for n <= 2**32)."""
    return (bits.to(torch.int64) << 32) | (0xFFFFFFFF - flat)


def _top_keys(bits: torch.Tensor, tmax: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] largest keys, descending. bits [B, S, d] int32, tmax [B, S] per-token maxima."""
    B, S, d = bits.shape
    dev = bits.device
    if k > S:  # the token bound needs k tokens: keys of everything
        flat = torch.arange(S * d, device=dev)
        return _keys(bits.reshape(B, S * d), flat).topk(k, dim=-1).values
    bound = tmax.topk(k, dim=-1).values[:, -1:]  # [B, 1]
    i_b, i_s = (tmax >= bound).nonzero(as_tuple=True)  # candidate tokens, M >= B * k
    flat = i_s[:, None] * d + torch.arange(d, device=dev)  # [M, d]
    kd = min(k, d)
    row_top = _keys(bits[i_b, i_s], flat).topk(kd, dim=-1).values  # [M, kd]
    cand = torch.full((B, S, kd), -1, dtype=torch.int64, device=dev)
    cand[i_b, i_s] = row_top
    return cand.reshape(B, S * kd).topk(k, dim=-1).values


def _median_bits(bits: torch.Tensor) -> torch.Tensor:
    """[B] pattern of rank (n - 1) // 2 of each row of bits [B, n] (may reorder bits)."""
    B, n = bits.shape
    rank = (n - 1) // 2
    if bits.device.type != "cpu" or n < _NUMPY_MIN_N:
        return bits.kthvalue(rank + 1, dim=-1).values
    rows = bits.numpy()
    out = torch.empty(B, dtype=torch.int32)
    for b in range(B):
        rows[b].partition(rank)  # in place: bits is our own buffer
        out[b] = int(rows[b, rank])
    return out


def torch_layer_stats(h: torch.Tensor, k: int) -> LayerStats:
    """LayerStats of h [..., S, d] (validated by the caller), on h's device."""
    S, d = h.shape[-2], h.shape[-1]
    n, lead = S * d, h.shape[:-2]
    if n > 2**32:  # the (value, index) keys have 32 index bits
        from ._reference import reference_layer_stats

        return reference_layer_stats(h, k)
    B = math.prod(lead)
    bits = abs_bits(h.detach()).reshape(B, S, d)
    tmax = bits.amax(dim=-1)  # [B, S]
    inf = BIT_PATTERNS[h.dtype][2]
    if bool((tmax > inf).any()):  # NaNs: one canonical pattern, so they tie like torch's
        bits.clamp_(max=inf + 1)
        tmax.clamp_(max=inf + 1)
    top_key = _top_keys(bits, tmax, k)  # [B, k]
    flat = 0xFFFFFFFF - (top_key & 0xFFFFFFFF)
    top = bits_to_float(top_key >> 32, h.dtype)
    median = bits_to_float(_median_bits(bits.reshape(B, n)), h.dtype)
    median = torch.where(torch.isnan(top[:, 0]), top[:, 0], median)  # torch.median: NaN wins
    return LayerStats.from_slices(top, flat // d, flat % d, median, lead)
