"""Pure-torch oracle of the layer statistics: the definition every backend must match bit for bit.

For a hidden state `h` of shape `[..., S, d]`, each leading index is one slice of `n = S * d`
scalars, flattened in row-major order (flat index `i = s * d + c`). Per slice:

- `top`: the k largest `|h|`, descending, as float32 (exact: |x| of a bf16/fp16 value is exact
  in float32).
- `top_token`, `top_channel`: `s = i // d` and `c = i % d` of each of them.
  Tie rule: among equal `|h|` the smaller flat index comes first (a stable descending sort).
  `-0` and `+0` are equal (`|-0| = +0`).
- `median`: the lower median of `|h|`, i.e. the value of 0-based rank `(n - 1) // 2` in
  ascending order (torch.median's convention for an even count).
- `ratio`: `top[..., 0] / median` in float32. An all-zero slice gives `0 / 0 = nan`; a slice
  whose median is 0 but whose top is not gives `inf`; an all-equal nonzero slice gives 1.

NaN follows torch: NaN is larger than every number, including +inf (so NaNs come first in
`top`, in flat-index order among themselves, whatever their payload or sign), and one NaN makes
the slice's median NaN (torch.median propagates NaN), hence its ratio NaN.

Masks (`mask`: [..., S] broadcast to h.shape[:-1], True = a real token, e.g. the attention mask
of a padded batch): only the values of real tokens count, `n_real = S_real * d` per slice. The
top-k, its tie rule and the NaN rules above apply to those values alone; `top_token` and
`top_channel` stay positions in the unmasked tensor; the median is the value of rank
`(n_real - 1) // 2` among them. Fewer than k real values: the missing top entries are NaN with
token and channel -1. No real token: top, median and ratio are NaN, token and channel -1.
`mask=None` counts every token.

Memory traffic of this oracle: abs copy, float32 copy, a full sort with int64 indices, and a
median: several times the input. The fused kernels read the input once (see kernels/).
"""

from __future__ import annotations

import torch

from ._result import LayerStats, validate_input, validate_mask


def reference_layer_stats(
    h: torch.Tensor, k: int = 3, *, mask: torch.Tensor | None = None
) -> LayerStats:
    """Layer statistics by abs -> stable descending sort / median of each slice's real values.

    h: [..., S, d] bf16, fp16 or fp32, any device, any strides. mask: None or [..., S] bool /
    integer, True = real token. Returns a LayerStats with top/top_token/top_channel [..., k]
    and median/ratio [...], on h's device.
    """
    k = validate_input(h, k)
    mask = validate_mask(h, mask)
    S, d = h.shape[-2], h.shape[-1]
    lead = h.shape[:-2]
    # [B, n] float32 |h|; the cast is exact, so order and ties are those of the input dtype
    x = h.detach().abs().reshape(-1, S * d).to(torch.float32)
    B = x.shape[0]
    real = torch.ones(B, S, dtype=torch.bool, device=h.device) if mask is None else mask
    real = real.reshape(B, S).repeat_interleave(d, dim=-1)  # [B, n]: one flag per value
    top = torch.full((B, k), float("nan"), device=h.device)
    flat = torch.full((B, k), -1, dtype=torch.int64, device=h.device)
    median = torch.full((B,), float("nan"), device=h.device)
    for b in range(B):
        idx = real[b].nonzero().squeeze(-1)  # flat indices s * d + c of the real values
        if idx.numel() == 0:
            continue
        vals = x[b, idx]
        # stable sort: equal |h| (NaNs included, torch treats them as equal) keep index order
        ordered, order = torch.sort(vals, descending=True, stable=True)
        m = min(k, idx.numel())
        top[b, :m], flat[b, :m] = ordered[:m], idx[order[:m]]
        median[b] = torch.median(vals)  # lower median, NaN if a real value is NaN
    token = torch.where(flat < 0, -1, flat // d)
    channel = torch.where(flat < 0, -1, flat % d)
    return LayerStats.from_slices(top, token, channel, median, lead)
