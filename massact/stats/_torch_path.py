"""Fast torch path of the layer statistics (any device), bit-identical to the oracle `_reference`.

Works on the bit patterns of |h| (`_patterns`: ordered like |h|, NaN canonical, -1 for a masked
token's values). CPU tensors with large slices go to `_cpu_path` (one read per slice, slices in
parallel); everything else runs here, batched over the B slices of n = S * d:

- top-k: the per-token maxima [B, S] bound the k-th largest value from below (k tokens hold an
  element at least as large as the k-th largest token maximum), so only tokens whose maximum
  reaches that bound can hold a top-k element: exact (value, index) keys are built for those
  rows only (all rows in the worst case, e.g. an all-equal slice). Masked rows (maximum -1)
  sort below every real row; a selected -1 pattern means "fewer than k real values".
- median: torch.kthvalue at rank (n - 1) // 2 without a mask; with one the rank differs per
  slice (masked values sit at the bottom), so a sort per slice and a gather at each rank.
Published recipe for comparison: abs -> full sort -> torch.median per sequence.
"""

from __future__ import annotations

import math

import torch

from ._patterns import MASKED, abs_bits, median_rank, stats_from_patterns
from ._result import BIT_PATTERNS, LayerStats

_KEY_INDEX_BITS = 32  # (value, index) keys: the index in the low 32 bits
# smaller CPU slices take the batched path: the CPU path's per-call cost (threads, a sample per
# slice) made it slower up to ~12K values (8 slices of 128 x 64: 1.3 ms there, 0.9 here)
_CPU_MIN_N = 16384


def _keys(bits: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered by |h|, then by smaller flat index (all distinct for n <= 2**32)."""
    return (bits.to(torch.int64) << _KEY_INDEX_BITS) | (0xFFFFFFFF - flat)


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
    cand = torch.full((B, S, kd), MASKED, dtype=torch.int64, device=dev)
    cand[i_b, i_s] = row_top
    return cand.reshape(B, S * kd).topk(k, dim=-1).values


def _median_bits(bits: torch.Tensor, real_tokens: torch.Tensor | None, d: int) -> torch.Tensor:
    """[B] int64 median pattern of each row of bits [B, n] (-1 where a row has no real value).

    real_tokens: [B] number of real tokens per slice, None without a mask.
    """
    B, n = bits.shape
    if real_tokens is None:
        return bits.kthvalue(median_rank(n, n) + 1, dim=-1).values.to(torch.int64)
    n_real = real_tokens * d
    rank = median_rank(n, n_real).clamp(min=0)  # no real value: any rank, overwritten below
    med = bits.sort(dim=-1).values.gather(-1, rank[:, None])[:, 0].to(torch.int64)
    return med.masked_fill(n_real == 0, MASKED)


def torch_layer_stats(h: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> LayerStats:
    """LayerStats of h [..., S, d], on h's device. h, k and mask are validated by the caller
    (mask: None or bool of shape h.shape[:-1], on h's device)."""
    S, d = h.shape[-2], h.shape[-1]
    n, lead = S * d, h.shape[:-2]
    if n > 2**_KEY_INDEX_BITS:
        from ._reference import reference_layer_stats

        return reference_layer_stats(h, k, mask=mask)
    if h.device.type == "cpu" and n >= _CPU_MIN_N:
        from ._cpu_path import cpu_layer_stats

        return cpu_layer_stats(h, k, mask)
    B = math.prod(lead)
    bits = abs_bits(h.detach()).reshape(B, S, d)
    tmax = bits.amax(dim=-1)  # [B, S]
    inf = BIT_PATTERNS[h.dtype][2]
    if bool((tmax > inf).any()):  # NaNs: one canonical pattern, so they tie like torch's
        bits.clamp_(max=inf + 1)
        tmax.clamp_(max=inf + 1)
    real_tokens = None
    if mask is not None:
        real = mask.reshape(B, S)
        bits.masked_fill_(~real[..., None], MASKED)
        tmax.masked_fill_(~real, MASKED)
        real_tokens = real.sum(dim=-1)
    top_key = _top_keys(bits, tmax, k)  # [B, k]
    flat = 0xFFFFFFFF - (top_key & 0xFFFFFFFF)
    median = _median_bits(bits.reshape(B, n), real_tokens, d)
    return stats_from_patterns(top_key >> _KEY_INDEX_BITS, flat, median, h.dtype, d, lead)
