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

Memory traffic of this oracle: abs copy, float32 copy, a full sort with int64 indices, and a
median: several times the input. The fused kernels read the input once (see kernels/).
"""

from __future__ import annotations

import torch

from ._result import LayerStats, validate_input


def reference_layer_stats(h: torch.Tensor, k: int = 3) -> LayerStats:
    """Layer statistics by abs -> stable descending sort / median on each flattened slice.

    h: [..., S, d] bf16, fp16 or fp32, any device, any strides. Returns a LayerStats with
    top/top_token/top_channel [..., k] and median/ratio [...], on h's device.
    """
    k = validate_input(h, k)
    S, d = h.shape[-2], h.shape[-1]
    lead = h.shape[:-2]
    # [B, n] float32 |h|; the cast is exact, so order and ties are those of the input dtype
    x = h.detach().abs().reshape(-1, S * d).to(torch.float32)
    # stable sort: equal |h| (NaNs included, torch treats them as equal) keep index order
    vals, idx = torch.sort(x, dim=-1, descending=True, stable=True)
    top, flat = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    median = torch.median(x, dim=-1).values  # lower median, NaN if the slice holds a NaN
    return LayerStats.from_slices(top, flat // d, flat % d, median, lead)
