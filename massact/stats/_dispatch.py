"""Public layer statistics: `layer_stats(h, k, backend=...)` -> `LayerStats`.

Three backends compute the same numbers (the definition, tie rule and NaN semantics are in
massact/stats/_reference.py, the oracle):

- "triton": fused kernels (kernels/layer_stats.py) that read h once, strided, on CUDA (or on
  CPU tensors under TRITON_INTERPRET=1, slowly: that is how the tests run them).
- "torch": the fast torch path (massact/stats/_torch_path.py), any device.
- "reference": the pure-torch oracle (a full sort), any device.
- "auto": triton for CUDA tensors when Triton works, otherwise the torch path, quietly.

Nothing here queries the device or imports Triton at import time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ._result import LayerStats, validate_input

BACKENDS = ("auto", "triton", "torch", "reference")


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
    k = validate_input(h, k)
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
        from ..kernels.layer_stats import supported, triton_layer_stats

        if supported(h.shape[-2] * h.shape[-1], k):
            return triton_layer_stats(h, k)
    from ._torch_path import torch_layer_stats

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
        k = validate_input(h, k)
    out: list[LayerStats | None] = [None] * len(hs)
    groups: dict[tuple, list[int]] = {}
    for i, h in enumerate(hs):
        cuda_auto = backend == "auto" and h.device.type == "cuda" and triton_available(h.device)
        if h.numel() > 0 and (backend == "triton" or cuda_auto):
            if not triton_available(h.device):
                layer_stats(h, k, backend="triton")  # raises the clear error
            from ..kernels.layer_stats import group_key

            groups.setdefault(group_key(h), []).append(i)
        else:
            out[i] = layer_stats(h, k, backend=backend)
    if groups:
        from ..kernels.layer_stats import supported, triton_layer_stats_many

        for idx in groups.values():
            h = hs[idx[0]]
            if not supported(h.shape[-2] * h.shape[-1], k):  # the torch path, one by one
                for i in idx:
                    out[i] = layer_stats(hs[i], k, backend="torch")
                continue
            for i, st in zip(idx, triton_layer_stats_many([hs[i].detach() for i in idx], k)):
                out[i] = st
    return out


def _empty_stats(h: torch.Tensor, k: int) -> LayerStats:
    lead = h.shape[:-2]
    f = torch.empty(*lead, k, dtype=torch.float32, device=h.device)
    i = torch.empty(*lead, k, dtype=torch.int64, device=h.device)
    m = torch.empty(lead, dtype=torch.float32, device=h.device)
    return LayerStats(top=f, top_token=i, top_channel=i.clone(), median=m, ratio=m.clone())
