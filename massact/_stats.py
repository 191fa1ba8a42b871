"""Public layer statistics: `layer_stats(h, k, backend=...)` -> `LayerStats`.

Three backends compute the same numbers (the definition, tie rule and NaN semantics are in
massact/_reference.py, the oracle):

- "triton": fused kernels (kernels/layer_stats.py) that read h once, strided, on CUDA (or on
  CPU tensors under TRITON_INTERPRET=1, slowly: that is how the tests run them).
- "torch": the fast torch path (massact/_cpu_stats.py), any device.
- "reference": the pure-torch oracle (a full sort), any device.
- "auto": triton for CUDA tensors when Triton works, otherwise the torch path, quietly.

Nothing here queries the device or imports Triton at import time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "triton", "torch", "reference")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def validate_input(h: torch.Tensor, k: int) -> None:
    """Raise a clear TypeError/ValueError for input layer_stats cannot reduce."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"layer_stats expects a torch.Tensor [..., S, d], got {type(h).__name__}")
    if h.dtype not in DTYPES:
        raise TypeError(
            f"layer_stats needs a floating hidden state (bfloat16, float16 or float32), "
            f"got {h.dtype}; convert it with h.float() first"
        )
    if h.ndim < 2:
        raise ValueError(
            f"layer_stats needs h with at least 2 dims [..., S, d], got shape {tuple(h.shape)}; "
            f"use h.reshape(1, -1) for a single vector"
        )
    n = h.shape[-2] * h.shape[-1]
    if n == 0:
        raise ValueError(f"layer_stats got an empty slice: S * d = 0 for shape {tuple(h.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= S * d = {n}, got k={k}")


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of `device` (imports Triton lazily)."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if device.type != "cuda" and not (interpret and device.type == "cpu"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def layer_stats(h: torch.Tensor, k: int = 3, *, backend: str = "auto") -> LayerStats:
    """Top-k and median of |h| over the last two dims of h [..., S, d], per leading index.

    h: bf16, fp16 or fp32, CUDA or CPU, any strides (slices, transposed views, hook outputs).
    Returns LayerStats on h's device: top/top_token/top_channel [..., k], median/ratio [...].
    backend: "auto" (Triton on CUDA when it works, else the torch path), "triton" (raises if
    Triton cannot run here), "torch" (fast torch path) or "reference" (the sorting oracle).
    Results are bit-identical across backends.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    validate_input(h, k)
    h = h.detach()  # statistics only: hooks may hand over tensors that require grad
    if h.numel() == 0:  # a zero-size leading dim: nothing to reduce, empty results
        return _empty_stats(h, k)
    if backend == "reference":
        from ._reference import reference_layer_stats

        return reference_layer_stats(h, k)
    if backend == "auto":
        use_triton = h.device.type == "cuda" and triton_available(h.device)
        backend = "triton" if use_triton else "torch"
    if backend == "triton":
        if not triton_available(h.device):
            raise RuntimeError(
                f"backend='triton' cannot run on a {h.device.type} tensor here: Triton needs a "
                f"CUDA device (or TRITON_INTERPRET=1 for CPU tensors) and an importable triton "
                f"package; use backend='auto' or 'torch'"
            )
        from .kernels.layer_stats import triton_layer_stats

        return triton_layer_stats(h, k)
    from ._cpu_stats import torch_layer_stats

    return torch_layer_stats(h, k)


def layer_stats_many(
    hs: Sequence[torch.Tensor], k: int = 3, *, backend: str = "auto"
) -> list[LayerStats]:
    """layer_stats of each tensor of hs (e.g. every layer's output of one forward pass).

    Same results as [layer_stats(h, k, backend=backend) for h in hs]; on the Triton backend the
    tensors that share device, dtype, S, d and the strides of the last two dims go through one
    kernel launch per pass together.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    hs = list(hs)
    for h in hs:
        validate_input(h, k)
    out: list[LayerStats | None] = [None] * len(hs)
    groups: dict[tuple, list[int]] = {}
    for i, h in enumerate(hs):
        cuda_auto = backend == "auto" and h.device.type == "cuda" and triton_available(h.device)
        if h.numel() > 0 and (backend == "triton" or cuda_auto):
            if not triton_available(h.device):
                layer_stats(h, k, backend="triton")  # raises the clear error
            from .kernels.layer_stats import group_key

            groups.setdefault(group_key(h), []).append(i)
        else:
            out[i] = layer_stats(h, k, backend=backend)
    if groups:
        from .kernels.layer_stats import triton_layer_stats_many

        for idx in groups.values():
            for i, st in zip(idx, triton_layer_stats_many([hs[i].detach() for i in idx], k)):
                out[i] = st
    return out


def _empty_stats(h: torch.Tensor, k: int) -> LayerStats:
    lead = h.shape[:-2]
    f = torch.empty(*lead, k, dtype=torch.float32, device=h.device)
    i = torch.empty(*lead, k, dtype=torch.int64, device=h.device)
    m = torch.empty(lead, dtype=torch.float32, device=h.device)
    return LayerStats(top=f, top_token=i, top_channel=i.clone(), median=m, ratio=m.clone())
