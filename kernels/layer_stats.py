"""Launchers of the fused layer-statistics kernels: top-k and lower median of |h|, with masks.

What is computed is defined by massact/stats/_reference.py (the oracle); results are bit-identical.

One call, three launches, each element of h read once in the common path:
1. a fill of the small scratch (counters and histograms start at zero);
2. `layer_stats_sample_kernel` (kernels/_sample.py): a sample of each slice sets the window that
   holds its median and the top-k threshold t;
3. `layer_stats_pass_kernel` (kernels/_pass.py): one read of every slice, counting around the
   window and keeping the candidates; the last program of each slice finishes it
   (kernels/_finish.py), falling back to exact scans of the slice where the sample misled.
Sizes and costs come from `plan` (kernels/_plan.py); `LaunchTrace` reports which path each
slice took.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import dataclass

import torch
import triton

from ..stats._result import INF_BITS, LayerStats
from ._pass import layer_stats_pass_kernel
from ._plan import (
    MAX_K,
    MAX_N,
    STATUS,
    Plan,
    ballot_histogram,
    cuda_launch_config,
    launch_config,
    plan,
    supported,
)
from ._sample import layer_stats_sample_kernel

__all__ = [
    "MAX_K",
    "MAX_N",
    "LaunchTrace",
    "Plan",
    "cuda_launch_config",
    "group_key",
    "launch_config",
    "plan",
    "supported",
    "triton_layer_stats",
    "triton_layer_stats_many",
]

PLAN_OPTIONS = ("block_d", "tiles", "cap_median", "cap_top", "sample_chunks", "chunks_per_program")
PLAN_OPTIONS += ("window", "z_pilot", "z_sample")


@dataclass
class LaunchTrace:
    """What one call did, for tests and benchmarks: its plan and each slice's STATUS flags
    (kernels/_plan.py: 0 = the one-read path answered everything)."""

    plan: Plan | None = None
    status: torch.Tensor | None = None  # [B] int32, slices of all tensors in order
    scratch: torch.Tensor | None = None  # [B, plan.scratch_words] int32 counters (kernels/_plan)


def group_key(h: torch.Tensor) -> tuple:
    """Tensors with equal keys can share one launch of triton_layer_stats_many."""
    return (h.device, h.dtype, h.shape[-2], h.shape[-1], h.stride(-2), h.stride(-1))


def triton_layer_stats(
    h: torch.Tensor, k: int = 3, mask: torch.Tensor | None = None, **options
) -> LayerStats:
    """LayerStats of h [..., S, d] (validated by the caller) with the fused kernels.

    mask: None or bool [..., S] on h's device (validated by the caller; True = a real token).
    """
    return triton_layer_stats_many([h], k, mask, **options)[0]


def triton_layer_stats_many(
    hs: list[torch.Tensor],
    k: int = 3,
    mask: torch.Tensor | list[torch.Tensor] | None = None,
    *,
    empty=torch.empty,
    trace: LaunchTrace | None = None,
    tile: int | None = None,
    **plan_options,
) -> list[LayerStats]:
    """LayerStats of each h [..., S, d] in hs, all slices of all tensors in one set of launches.

    hs: validated tensors with one group_key (device, dtype, S, d and the strides of the last
    two dims); leading dims and their strides may differ. mask: one bool mask broadcast to each
    h.shape[:-1] (or one per tensor), True = a real token. empty: allocator of the outputs (tests
    pass one that fills NaN / -1, so an element a kernel forgets to write is caught). trace:
    filled with the plan and the per-slice path flags. tile / plan_options: size overrides for
    tests (see `plan`).
    """
    h = hs[0]
    if any(group_key(x) != group_key(h) for x in hs):
        raise ValueError("triton_layer_stats_many: tensors differ in device/dtype/S/d/strides")
    unknown = set(plan_options) - set(PLAN_OPTIONS)
    if unknown:
        raise TypeError(f"triton_layer_stats_many: unknown options {sorted(unknown)}")
    S, D = h.shape[-2], h.shape[-1]
    if not supported(S * D, k):
        raise ValueError(
            f"the Triton kernels take 1 <= k <= {MAX_K} and S * d <= {MAX_N}; got k={k}, "
            f"S * d={S * D}; use backend='torch' for these"
        )
    masks = _masks(mask, hs)
    base, esize = h.data_ptr(), h.element_size()
    if any((x.data_ptr() - base) % esize for x in hs):  # offsets from h must be whole elements
        opts = dict(empty=empty, tile=tile, **plan_options)
        return [
            triton_layer_stats_many([x], k, None if masks is None else [m], **opts)[0]
            for x, m in zip(hs, masks or [None] * len(hs))
        ]
    dev = h.device
    if dev.type == "cuda":
        warn_if_slow_triton(triton.__version__)
    programs, default_tile, warps = launch_config(dev)
    sizes = [math.prod(x.shape[:-2]) for x in hs]
    p = plan(
        (sum(sizes), S, D),
        (0, h.stride(-2), h.stride(-1)),
        h.dtype,
        k,
        programs=programs,
        tile=tile or default_tile,
        **plan_options,
    )
    strides, table = _addressing(hs, masks)
    B = p.B
    scratch = torch.zeros(B, p.scratch_words, dtype=torch.int32, device=dev)
    buffers = torch.empty(B, max(1, p.buffer_words), dtype=torch.int32, device=dev)
    top = empty((B, k), dtype=torch.float32, device=dev)
    top_token = empty((B, k), dtype=torch.int64, device=dev)
    top_channel = empty((B, k), dtype=torch.int64, device=dev)
    median = empty((B,), dtype=torch.float32, device=dev)
    ratio = empty((B,), dtype=torch.float32, device=dev)

    common = dict(
        h=h,
        mask=masks[0].view(torch.uint8) if masks is not None else h,
        table=table if table is not None else h,
        scratch=scratch,
        S=S,
        D=D,
        stride_s=h.stride(-2),
        stride_d=h.stride(-1),
        SCR=p.scratch_words,
        K=k,
        HAS_MASK=masks is not None,
        HAS_TABLE=table is not None,
        IS_16BIT=esize == 2,
        INF=INF_BITS[h.dtype],
        TOTAL_BITS=31 if esize == 4 else 15,  # INF + 1 < 2**TOTAL_BITS
        **strides,
    )
    outputs = dict(top=top, top_token=top_token, top_channel=top_channel, median=median)
    # with 16-byte aligned slice starts the compiler may use 16-byte loads
    align = 16 // esize if all(_slice_align(x) for x in hs) else 1
    with _interpreter_quiet():
        _launch(p, common, dict(outputs, ratio=ratio, buffers=buffers), align, warps)
    if trace is not None:
        trace.plan, trace.status, trace.scratch = p, scratch[:, STATUS.value], scratch
    out, b0 = [], 0
    for x, size in zip(hs, sizes):
        sl, lead, b0 = slice(b0, b0 + size), x.shape[:-2], b0 + size
        out.append(
            LayerStats(
                top=top[sl].reshape(*lead, k),
                top_token=top_token[sl].reshape(*lead, k),
                top_channel=top_channel[sl].reshape(*lead, k),
                median=median[sl].reshape(lead),
                ratio=ratio[sl].reshape(lead),
            )
        )
    return out


@functools.cache
def warn_if_slow_triton(version: str) -> None:
    """Once per process and version: the kernels are exact on any Triton >= 3.4, but their speed
    assumes the histogram lowering of Triton >= 3.8 (kernels/_plan.py: ballot_histogram)."""
    if ballot_histogram(version):
        warnings.warn(
            f"massact: Triton {version} lowers tl.histogram to warp ballots (~12 instructions "
            "per element); the statistics kernels stay exact but run well below the memory "
            "bandwidth. Triton >= 3.8 (with a torch built for it) restores their speed.",
            RuntimeWarning,
            stacklevel=3,
        )


def _launch(p: Plan, common: dict, outputs: dict, align: int, warps: int) -> None:
    """The sample and the pass kernels of plan p (arguments by name: common to both)."""
    contiguous_len = p.D if p.along_d else p.S
    layer_stats_sample_kernel[(p.B * p.sample_programs,)](
        R=p.S if p.along_d else p.D,
        Q=triton.cdiv(contiguous_len, p.chunk),
        STEP=p.sample_step,
        LC=contiguous_len,
        N_CHUNKS=p.sample_chunks,
        P=p.sample_programs,
        z_pilot=p.z_pilot,
        z_sample=p.z_sample,
        KS=p.ks,
        PP=triton.next_power_of_2(p.sample_programs),
        CPP=p.chunks_per_program,
        CW=p.chunk,
        PILOT=p.pilot_chunks,
        WP=p.window,
        WS=p.sample_bins,
        TOP_OFF=p.sample_top_offset,
        SBIN_OFF=p.sample_bins_offset,
        ALONG_D=p.along_d,
        num_warps=16,  # 8 sampled values per thread
        **common,
    )
    layer_stats_pass_kernel[(p.B * p.nb,)](
        KP=p.kp,
        NB=p.nb,
        NBD=p.nbd,
        NT=p.tiles,
        BUFW=max(1, p.buffer_words),
        CAPM_SUB=p.cap_median // max(1, p.nsub),
        CAPT=p.cap_top,
        BS=p.block_s,
        BD=p.block_d,
        FS=p.block_s if p.block_d > 1 else max(1, p.block_s // 2),
        FD=max(1, p.block_d // 2),
        WP=p.window,
        WIN_OFF=p.window_offset,
        NSUB=p.nsub,
        IS_FP16=common["h"].dtype == torch.float16,
        IS_BF16=common["h"].dtype == torch.bfloat16,
        ALIGN=align,
        num_warps=warps,
        maxnreg=64,
        **outputs,
        **common,
    )


def _interpreter_quiet():
    """The interpreter evaluates IEEE float ops with numpy, which warns on x / 0 where the GPU
    just gives inf / NaN (the ratio of an all-zero slice): silence numpy while interpreting."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return contextlib.nullcontext()
    import numpy as np

    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def _masks(mask, hs: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """None, or one bool mask per tensor broadcast to its h.shape[:-1], sharing one S stride."""
    if mask is None:
        return None
    per_tensor = list(mask) if isinstance(mask, (list, tuple)) else [mask] * len(hs)
    if len(per_tensor) != len(hs):
        raise ValueError(f"got {len(per_tensor)} masks for {len(hs)} tensors")
    out = []
    for m, x in zip(per_tensor, hs):
        if m.dtype != torch.bool or m.device != x.device:
            raise ValueError(f"mask must be bool on {x.device}, got {m.dtype} on {m.device}")
        out.append(m.expand(x.shape[:-1]))
    if len({m.stride(-1) for m in out}) > 1:  # one S stride for all: copy the odd ones out
        out = [m.contiguous() for m in out]
    return out


def _lead_stride(shape: tuple[int, ...], strides: tuple[int, ...]) -> int | None:
    """The one stride that walks the leading dims in order, or None if no single one does."""
    dims = [(n, s) for n, s in zip(shape, strides) if n > 1]
    for (_, s_out), (n_in, s_in) in zip(dims, dims[1:]):
        if s_out != s_in * n_in:
            return None
    return dims[-1][1] if dims else 0


def _addressing(hs, masks) -> tuple[dict, torch.Tensor | None]:
    """Slice addressing: strides (single tensor, collapsible leading dims) or a [B, 2] int64
    table of (h offset in elements from hs[0], mask offset in bytes from masks[0]), built on the
    host and copied once."""
    h = hs[0]
    m = masks[0] if masks is not None else None
    mask_stride_s = m.stride(-1) if m is not None else 0
    stride_b = _lead_stride(h.shape[:-2], h.stride()[:-2])
    mask_stride_b = _lead_stride(m.shape[:-1], m.stride()[:-1]) if m is not None else 0
    if len(hs) == 1 and stride_b is not None and mask_stride_b is not None:
        strides = dict(stride_b=stride_b, mask_stride_b=mask_stride_b)
        return dict(strides, mask_stride_s=mask_stride_s), None
    rows = []
    for i, x in enumerate(hs):
        offs = _offsets(x, h.data_ptr(), x.element_size(), x.dim() - 2)
        if masks is None:
            moffs = [0] * len(offs)
        else:
            mi = masks[i]
            moffs = _offsets(mi, m.data_ptr(), 1, mi.dim() - 1)
        rows += [[a, b] for a, b in zip(offs, moffs)]
    table = torch.tensor(rows, dtype=torch.int64).to(h.device, non_blocking=True)
    strides = dict(stride_b=0, mask_stride_b=0, mask_stride_s=mask_stride_s)
    return strides, table


def _offsets(x: torch.Tensor, base: int, esize: int, lead: int) -> list[int]:
    """Offsets (in elements of esize bytes, from address base) of each leading index of x."""
    offs = [(x.data_ptr() - base) // esize]
    for size, stride in zip(x.shape[:lead], x.stride()[:lead]):
        offs = [o + i * stride for o in offs for i in range(size)]
    return offs


def _slice_align(h: torch.Tensor) -> bool:
    """Whether the start of every slice of h is a multiple of 16 bytes (host-side, no sync)."""
    starts = [h.data_ptr()] + [
        stride * h.element_size() for size, stride in zip(h.shape[:-2], h.stride()[:-2]) if size > 1
    ]
    return all(a % 16 == 0 for a in starts)
