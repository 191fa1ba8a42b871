"""The statistics' result type and input checks: the leaf every statistics path imports.

`LayerStats` is what every backend returns; `validate_input` and `validate_mask` are the one
check of what they accept. This module imports only torch, so the Triton kernels (kernels/)
can import it without pulling in the rest of massact.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# dtype -> (integer view of the same width, mask that clears the sign bit, pattern of +inf).
# Cleared patterns order like |h|; every NaN maps to INF_BITS + 1 (torch: NaN is the largest).
BIT_PATTERNS = {
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
    torch.float16: (torch.int16, 0x7FFF, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
}
INF_BITS = {dtype: inf for dtype, (_, _, inf) in BIT_PATTERNS.items()}


@dataclass(frozen=True)
class LayerStats:
    """Per-slice statistics of |h| over the last two dims of h [..., S, d].

    top: [..., k] float32, the k largest |h|, descending (ties: smaller flat index s*d+c first).
    top_token: [..., k] int64, token (S) index of each.
    top_channel: [..., k] int64, channel (d) index of each.
    median: [...] float32, lower median of |h| over the S*d values (torch.median convention).
    ratio: [...] float32, top[..., 0] / median (inf if median is 0, nan for an all-zero slice).
    """

    top: torch.Tensor
    top_token: torch.Tensor
    top_channel: torch.Tensor
    median: torch.Tensor
    ratio: torch.Tensor

    @property
    def k(self) -> int:
        return self.top.shape[-1]

    @classmethod
    def from_slices(
        cls,
        top: torch.Tensor,
        top_token: torch.Tensor,
        top_channel: torch.Tensor,
        median: torch.Tensor,
        lead: Sequence[int],
    ) -> LayerStats:
        """Results of B flattened slices ([B, k] and [B]) reshaped to the leading dims `lead`.

        The one place the ratio is formed: top1 / median in float32 (inf where the median is 0,
        NaN for 0 / 0), as the oracle defines it.
        """
        k = top.shape[-1]
        return cls(
            top=top.reshape(*lead, k),
            top_token=top_token.reshape(*lead, k),
            top_channel=top_channel.reshape(*lead, k),
            median=median.reshape(lead),
            ratio=(top[:, 0] / median).reshape(lead),
        )

    def to(self, device: torch.device | str) -> LayerStats:
        return LayerStats(
            top=self.top.to(device),
            top_token=self.top_token.to(device),
            top_channel=self.top_channel.to(device),
            median=self.median.to(device),
            ratio=self.ratio.to(device),
        )

    def cpu(self) -> LayerStats:
        return self.to("cpu")


def validate_input(h: torch.Tensor, k: int) -> int:
    """Raise a clear TypeError/ValueError for input layer_stats cannot reduce; return k as int.

    h: a dense (strided) floating tensor with data (not on the meta device) and >= 2 dims.
    k: an integer (Python int or numpy integer; bool refused), 1 <= k <= S * d.
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"layer_stats expects a torch.Tensor [..., S, d], got {type(h).__name__}")
    if h.is_nested:
        raise TypeError("layer_stats needs a dense tensor, got a nested tensor; pad it first")
    if h.layout != torch.strided:
        raise TypeError(
            f"layer_stats needs a dense (strided) tensor, got layout {h.layout}; "
            f"convert it with h.to_dense() first"
        )
    if h.dtype not in DTYPES:
        raise TypeError(
            f"layer_stats needs a floating hidden state (bfloat16, float16 or float32), "
            f"got {h.dtype}; convert it with h.float() first"
        )
    if h.is_meta:
        raise ValueError(
            "layer_stats needs a tensor with data, got one on the meta device (shape and dtype "
            "only); run the model on a real device (cpu or cuda)"
        )
    if h.ndim < 2:
        raise ValueError(
            f"layer_stats needs h with at least 2 dims [..., S, d], got shape {tuple(h.shape)}; "
            f"use h.reshape(1, -1) for a single vector"
        )
    n = h.shape[-2] * h.shape[-1]
    if n == 0:
        raise ValueError(f"layer_stats got an empty slice: S * d = 0 for shape {tuple(h.shape)}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):  # numpy ints are Integral
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= S * d = {n}, got k={k}")
    return k


def validate_mask(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The token mask as bool on h's device, shape h.shape[:-1] (a broadcast view), or None.

    mask: None or a bool / integer tensor broadcastable to h.shape[:-1] ([..., S]); True or
    nonzero = a real token. Floating masks are refused: an additive attention mask holds 0 for
    real tokens, so there is no safe reading of one. Call after validate_input(h, k).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor [..., S] or None, got {type(mask).__name__}")
    if mask.layout != torch.strided or mask.is_nested or mask.is_meta:
        raise ValueError(f"mask must be a dense tensor with data, got layout {mask.layout}")
    if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
        raise ValueError(
            f"mask must be bool or integer (True / nonzero = real token), got {mask.dtype}; "
            f"for a 0/1 float mask pass mask.bool(), for an additive one (0 = real) mask == 0"
        )
    lead = h.shape[:-1]
    try:
        fits = torch.broadcast_shapes(mask.shape, lead) == lead
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to h.shape[:-1] = "
            f"{tuple(lead)} (h is [..., S, d] of shape {tuple(h.shape)}, mask is [..., S])"
        )
    mask = mask.to(h.device)
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask.expand(lead)
