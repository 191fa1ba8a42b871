"""Public layer statistics: `layer_stats(h, k, mask=..., backend=...)` -> `LayerStats`.

Three backends compute the same numbers (the definition, tie rule, NaN and mask semantics are
in massact/stats/_reference.py, the oracle); the mask is checked here, once (validate_mask):

- "triton": fused kernels (kernels/layer_stats.py) that read h once, strided, on CUDA (or on
  CPU tensors under TRITON_INTERPRET=1, slowly: that is how the tests run them).
- "torch": the fast torch path (massact/stats/_torch_path.py), any device; on the CPU, large
  slices go through massact/stats/_cpu_path.py (one read per slice, slices in parallel).
- "reference": the pure-torch oracle (a full sort), any device.
- "auto": triton for CUDA tensors when Triton works and the kernels take the slice size and k
  (`kernels.layer_stats.supported`), otherwise the torch path, quietly. "triton" asked for by
  name never falls back: it raises where the kernels cannot run.

Nothing here queries the device or imports Triton at import time.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence

import torch

from ._result import LayerStats, validate_input, validate_mask

BACKENDS = ("auto", "triton", "torch", "reference")


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of `device` (imports Triton lazily)."""
    return _triton_problem(device) is None


def _triton_problem(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on tensors of `device`, or None where they can."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if device.type != "cuda" and not (interpret and device.type == "cpu"):
        return (
            f"Triton needs a CUDA device (or TRITON_INTERPRET=1 for CPU tensors), "
            f"not a {device.type} tensor"
        )
    try:
        import triton
    except ImportError:
        return "the triton package cannot be imported"
    from ..kernels._plan import OLDEST_TRITON, triton_release

    if triton_release(triton.__version__) < OLDEST_TRITON:
        oldest = ".".join(map(str, OLDEST_TRITON))
        return f"the kernels need Triton >= {oldest}, this is Triton {triton.__version__}"
    return None


def layer_stats(
    h: torch.Tensor,
    k: int = 3,
    *,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> LayerStats:
    """Top-k and median of |h| over the last two dims of h [..., S, d], per leading index.

    h: bf16, fp16 or fp32, CUDA or CPU, any strides (slices, transposed views, hook outputs).
    mask: None (every token counts) or a bool / integer tensor broadcastable to [..., S], True
    or nonzero = a real token (e.g. a padded batch's attention mask; moved to h's device). Only
    real tokens' values count; top_token/top_channel stay positions in h. A slice with no real
    token gets NaN top, median and ratio and token/channel -1; one with fewer than k real values
    gets NaN (and -1) in the missing top entries. Float masks are refused (ValueError).
    Returns LayerStats on h's device: top/top_token/top_channel [..., k], median/ratio [...].
    backend: "auto" (Triton on CUDA when it works and takes this k and S * d, else the torch
    path), "triton" (raises ValueError/RuntimeError if the kernels cannot run this input),
    "torch" (fast torch path) or "reference" (the sorting oracle).
    Results are bit-identical across backends.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    k = validate_input(h, k)
    mask = validate_mask(h, mask)
    h = h.detach()  # statistics only: hooks may hand over tensors that require grad
    if h.numel() == 0:  # a zero-size leading dim: nothing to reduce, empty results
        return _empty_stats(h, k)
    if backend == "reference":
        from ._reference import reference_layer_stats

        return reference_layer_stats(h, k, mask=mask)
    if backend == "triton" or (backend == "auto" and _triton_takes(h, k)):
        _check_triton(h, k)
        from ..kernels.layer_stats import triton_layer_stats

        return triton_layer_stats(h, k, mask)
    from ._torch_path import torch_layer_stats

    return torch_layer_stats(h, k, mask)


def _triton_takes(h: torch.Tensor, k: int) -> bool:
    """Whether "auto" sends h to the Triton kernels: CUDA, Triton works, size and k supported."""
    if h.device.type != "cuda":
        return False
    problem = _triton_problem(h.device)
    if problem:
        if "need Triton" in problem:  # a GPU user would want to know why it is slower
            _warn_once(f"massact: {problem}; layer_stats uses the torch path on CUDA")
        return False
    from ..kernels.layer_stats import supported

    return supported(h.shape[-2] * h.shape[-1], k)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _check_triton(h: torch.Tensor, k: int) -> None:
    """Raise a clear error where backend='triton' cannot run h with this k."""
    problem = _triton_problem(h.device)
    if problem:
        raise RuntimeError(
            f"backend='triton' cannot run here: {problem}; use backend='auto' or 'torch'"
        )
    from ..kernels.layer_stats import MAX_K, MAX_N, supported

    n = h.shape[-2] * h.shape[-1]
    if not supported(n, k):
        raise ValueError(
            f"backend='triton' takes k <= {MAX_K} and S * d <= {MAX_N}, got k={k}, "
            f"S * d={n}; use backend='auto' or 'torch' (the torch path takes any k and size)"
        )


def layer_stats_many(
    hs: Sequence[torch.Tensor],
    k: int = 3,
    *,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> list[LayerStats]:
    """layer_stats of each tensor of hs (e.g. every layer's output of one forward pass).

    Same results as [layer_stats(h, k, mask=mask, backend=backend) for h in hs]: one mask for
    every tensor (the layers of one forward pass share the batch's attention mask). On the
    Triton backend the tensors that share device, dtype, S, d and the strides of the last two
    dims (and, with a mask, the leading dims) go through one kernel launch per pass together.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    hs = list(hs)
    masks = []
    for h in hs:
        k = validate_input(h, k)
        masks.append(validate_mask(h, mask))
    out: list[LayerStats | None] = [None] * len(hs)
    groups: dict[tuple, list[int]] = {}
    for i, h in enumerate(hs):
        triton = backend == "triton" or (backend == "auto" and _triton_takes(h, k))
        if h.numel() > 0 and triton:
            _check_triton(h, k)
            from ..kernels.layer_stats import group_key

            # one mask per launch: with a mask, a group also shares its leading dims
            key = group_key(h) if mask is None else (*group_key(h), h.shape[:-2])
            groups.setdefault(key, []).append(i)
        else:
            out[i] = layer_stats(h, k, mask=masks[i], backend=backend)
    if groups:
        from ..kernels.layer_stats import triton_layer_stats_many

        for idx in groups.values():
            group = [hs[i].detach() for i in idx]
            for i, st in zip(idx, triton_layer_stats_many(group, k, masks[idx[0]])):
                out[i] = st
    return out


def _empty_stats(h: torch.Tensor, k: int) -> LayerStats:
    lead = h.shape[:-2]
    f = torch.empty(*lead, k, dtype=torch.float32, device=h.device)
    i = torch.empty(*lead, k, dtype=torch.int64, device=h.device)
    m = torch.empty(lead, dtype=torch.float32, device=h.device)
    return LayerStats(top=f, top_token=i, top_channel=i.clone(), median=m, ratio=m.clone())
