"""Fused Triton kernels for the layer statistics (top-k and lower median of |h|) + launchers.

What is computed is defined by massact/stats/_reference.py (the oracle); results are bit-identical.

All kernels work on the bit pattern of |h|: an integer view of h with the sign bit cleared is
monotone in |h| (+0 == -0, +inf above every finite value), and mapping every NaN to the one
pattern just above +inf makes NaN the largest value with NaNs equal to each other, as torch does.
Top-k uses int64 keys `bits << 32 | (2**32 - 1 - flat_index)`: distinct, ordered by |h| and then
by smaller flat index (the tie rule).

Passes, each one launch over the whole batch (grid = slices x blocks):
1. `layer_stats_pass_kernel(TOPK=True)`: reads every element once, strided, 64-bit offsets;
   per block the k largest keys -> cand [B, NB, k]; a histogram of the top bits of |h| ->
   hist level 0 (block histogram in registers, then one atomic add per bin).
2. `layer_stats_select_kernel`: per slice, the bin holding the median rank (n - 1) // 2; keeps
   (prefix of selected bits, rank left inside the bin) in state [B, 2].
3. `layer_stats_pass_kernel(TOPK=False)`: histogram of the next bits, only of elements whose
   high bits equal the prefix; then select again ... until all value bits are known
   (16-bit dtypes: 15 bits in 2 levels, fp32: 31 bits in 3 levels).
4. `layer_stats_finalize_kernel`: the last selection (the median's exact bit pattern) and the
   merge of the block top-k candidates, written as float32 / int64.
Extra memory: hist [B, sum(bins)] int32 + cand [B, NB, k] int64 + state [B, 2] int64.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..stats._result import INF_BITS, LayerStats

# dtype -> bit widths of the radix levels, most significant first (sum = value bits)
LEVELS = {torch.float32: (11, 10, 10), torch.float16: (8, 7), torch.bfloat16: (8, 7)}
MAX_K = 64  # the running top-k lives in registers
MAX_N = 2**31 - 1  # histogram counts are int32


def supported(n: int, k: int) -> bool:
    """Whether the kernels handle slices of n = S * d values with this k (else: the torch path)."""
    return k <= MAX_K and n <= MAX_N


IDX_MASK = 0xFFFFFFFF


@triton.jit
def _topk_update(b_top, b_key, o_k, K: tl.constexpr):
    """Insert the largest keys of b_key (any shape, -1 = empty) into the running top b_top [KP].

    b_top holds K real slots (padding slots hold INT64_MAX, never replaced). Keys are distinct.
    """
    b_max = tl.max(b_key)
    if b_max > tl.min(b_top):  # rare after the first blocks: most tiles skip the extraction
        for _ in tl.static_range(K):
            b_max = tl.max(b_key)
            b_lo = tl.min(b_top)
            i_lo = tl.argmin(b_top, 0)
            b_top = tl.where((o_k == i_lo) & (b_max > b_lo), b_max, b_top)
            b_key = tl.where(b_key == b_max, -1, b_key)
    return b_top


@triton.jit
def layer_stats_pass_kernel(
    h,  # the first input tensor (base pointer and element type)
    table,  # [B] int64 offset in elements from h of element (0, 0) of each slice: h[b, s, c]
    # at h + table[b] + s * stride_s + c * stride_d (slices may come from several tensors)
    hist,  # [B, BINS] int32 histogram of this level (zeroed)
    state,  # [B, 2] int64 (prefix, rank) from the previous level (unused when TOPK)
    cand,  # [B, NB, K] int64 block top-k keys (written when TOPK)
    S,
    D,
    stride_s,
    stride_d,
    NB,  # blocks per slice
    NBD,  # blocks along D
    NT,  # tiles per block along S
    hist_stride,  # elements between slices in hist
    K: tl.constexpr,
    KP: tl.constexpr,
    BS: tl.constexpr,
    BD: tl.constexpr,
    BINS: tl.constexpr,
    BITS: tl.constexpr,  # BINS = 2**BITS
    SHIFT: tl.constexpr,  # bin = (bits >> SHIFT) & (BINS - 1)
    TOPK: tl.constexpr,  # first pass: also the block top-k, and no prefix match
    IS_16BIT: tl.constexpr,
    INF: tl.constexpr,
    ALIGN: tl.constexpr,  # every table entry is a multiple of ALIGN (16 bytes: vector loads)
):
    i_p = tl.program_id(0)
    i_b, i_n = i_p // NB, i_p % NB
    i_r, i_c = i_n // NBD, i_n % NBD
    o_slice = tl.load(table + i_b)
    if ALIGN > 1:  # an offset loaded from memory has unknown alignment: scalar loads otherwise
        o_slice = tl.multiple_of(o_slice, ALIGN)
    p_slice = h + o_slice
    # [BD]
    o_c = (i_c * BD + tl.arange(0, BD)).to(tl.int64)
    m_c = o_c < D
    o_k = tl.arange(0, KP)
    # [KP] running top-k keys; padding slots are never the minimum
    b_top = tl.where(o_k < K, -1, 0x7FFFFFFFFFFFFFFF).to(tl.int64)
    b_hist = tl.zeros([BINS], dtype=tl.int32)
    if not TOPK:  # < 2**31: int32 keeps the per-element prefix test 32-bit
        b_prefix = tl.load(state + i_b * 2).to(tl.int32)
    for i_t in range(NT):
        # [BS]
        o_s = ((i_r * NT + i_t) * BS + tl.arange(0, BS)).to(tl.int64)
        # [BS, BD]
        m_h = (o_s < S)[:, None] & m_c[None, :]
        p_h = p_slice + o_s[:, None] * stride_s + o_c[None, :] * stride_d
        b_h = tl.load(p_h, mask=m_h, other=0)
        # |h| as non-negative int32 bit patterns, every NaN mapped to INF + 1 (inlined: nested
        # jit calls are slow under the interpreter)
        if IS_16BIT:
            b_bits = b_h.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
        else:
            b_bits = b_h.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        b_bits = tl.where(b_bits > INF, INF + 1, b_bits)
        if TOPK:
            m_bin = m_h
        else:
            m_bin = m_h & ((b_bits >> (SHIFT + BITS)) == b_prefix)
        b_bin = (b_bits >> SHIFT) & (BINS - 1)
        # histogram wants 1-D input; bins and mask are flattened alike
        b_hist += tl.histogram(
            tl.reshape(b_bin, [BS * BD]), BINS, mask=tl.reshape(m_bin, [BS * BD])
        )
        if TOPK:
            # cheap int32 test first: only a tile that can enter the top-k builds its keys.
            # Strict: later tiles of a block have larger flat indices, so they lose value ties.
            b_mx = tl.max(tl.where(m_h, b_bits, -1))
            if b_mx > (tl.min(b_top) >> 32):
                b_i = o_s[:, None] * D + o_c[None, :]
                # [BS, BD]
                b_key = tl.where(m_h, (b_bits.to(tl.int64) << 32) | (0xFFFFFFFF - b_i), -1)
                for _ in tl.static_range(K):  # insert the K largest keys (same as _topk_update)
                    b_max = tl.max(b_key)
                    b_lo = tl.min(b_top)
                    i_lo = tl.argmin(b_top, 0)
                    b_top = tl.where((o_k == i_lo) & (b_max > b_lo), b_max, b_top)
                    b_key = tl.where(b_key == b_max, -1, b_key)
    o_bin = tl.arange(0, BINS)
    # relaxed: the next launch reads the histogram; no ordering inside this one is needed
    tl.atomic_add(hist + i_b * hist_stride + o_bin, b_hist, mask=b_hist != 0, sem="relaxed")
    if TOPK:
        tl.store(cand + (i_b * NB + i_n) * K + o_k, b_top, mask=o_k < K)


@triton.jit
def _select(hist, i_b, hist_stride, b_prefix, b_rank, BINS: tl.constexpr, BITS: tl.constexpr):
    """The bin of this level holding rank b_rank; returns (new prefix, rank inside the bin)."""
    o_bin = tl.arange(0, BINS)
    b_hist = tl.load(hist + i_b * hist_stride + o_bin).to(tl.int64)
    b_cum = tl.cumsum(b_hist, 0)
    # first bin whose inclusive count exceeds the rank
    i_bin = tl.sum((b_cum <= b_rank).to(tl.int64))
    b_below = tl.sum(tl.where(o_bin < i_bin, b_hist, 0))
    return (b_prefix << BITS) | i_bin, b_rank - b_below


@triton.jit
def layer_stats_select_kernel(
    hist, state, N, hist_stride, BINS: tl.constexpr, BITS: tl.constexpr, FIRST: tl.constexpr
):
    i_b = tl.program_id(0)
    if FIRST:
        b_prefix = tl.zeros([], dtype=tl.int64)
        b_rank = (tl.zeros([], dtype=tl.int64) + N - 1) // 2  # lower median, 0-based
    else:
        b_prefix = tl.load(state + i_b * 2)
        b_rank = tl.load(state + i_b * 2 + 1)
    b_prefix, b_rank = _select(hist, i_b, hist_stride, b_prefix, b_rank, BINS, BITS)
    tl.store(state + i_b * 2, b_prefix)
    tl.store(state + i_b * 2 + 1, b_rank)


@triton.jit
def _bits_to_f32(b_bits, IS_FP16: tl.constexpr, IS_BF16: tl.constexpr):
    if IS_FP16:
        return b_bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    elif IS_BF16:  # bf16 is the top half of fp32 (exact, subnormals included)
        return (b_bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return b_bits.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def layer_stats_finalize_kernel(
    hist,  # [B, BINS] int32, the last level
    state,  # [B, 2] int64 (prefix, rank) before the last level
    cand,  # [B, NC] int64 candidate keys
    top,  # [B, K] float32
    top_token,  # [B, K] int64
    top_channel,  # [B, K] int64
    median,  # [B] float32
    D,
    NC,  # candidates per slice
    hist_stride,
    K: tl.constexpr,
    KP: tl.constexpr,
    BC: tl.constexpr,
    BINS: tl.constexpr,
    BITS: tl.constexpr,
    IS_FP16: tl.constexpr,
    IS_BF16: tl.constexpr,
    INF: tl.constexpr,
):
    i_b = tl.program_id(0)
    b_prefix = tl.load(state + i_b * 2)
    b_rank = tl.load(state + i_b * 2 + 1)
    b_med, _ = _select(hist, i_b, hist_stride, b_prefix, b_rank, BINS, BITS)

    o_k = tl.arange(0, KP)
    b_top = tl.where(o_k < K, -1, 0x7FFFFFFFFFFFFFFF).to(tl.int64)
    for i_c in range(0, NC, BC):
        # [BC]
        o_c = i_c + tl.arange(0, BC)
        b_key = tl.load(cand + i_b.to(tl.int64) * NC + o_c, mask=o_c < NC, other=-1)
        b_top = _topk_update(b_top, b_key, o_k, K)
    b_top = tl.where(o_k < K, b_top, -1)
    b_nan = tl.max(b_top) >> 32 > INF  # torch.median propagates NaN; NaN is the largest value
    for j in tl.static_range(K):  # descending
        b_key = tl.max(b_top)
        b_top = tl.where(b_top == b_key, -1, b_top)
        b_i = 0xFFFFFFFF - (b_key & 0xFFFFFFFF)
        tl.store(top + i_b * K + j, _bits_to_f32(b_key >> 32, IS_FP16, IS_BF16))
        tl.store(top_token + i_b * K + j, b_i // D)
        tl.store(top_channel + i_b * K + j, b_i % D)
    b_med = tl.where(b_nan, INF + 1, b_med)
    tl.store(median + i_b, _bits_to_f32(b_med, IS_FP16, IS_BF16))


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def cuda_launch_config(sm_count: int) -> tuple[int, int, int]:
    """(pass programs, elements per tile, warps) on a GPU with sm_count SMs."""
    return 8 * sm_count, 4096, 8


def launch_config(device: torch.device) -> tuple[int, int, int]:
    """(pass programs, elements per tile, warps) for tensors on device (the interpreter: small)."""
    if device.type == "cuda":
        return cuda_launch_config(_sm_count(device.index or 0))
    return 4, 2048, 1


def plan(
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: torch.dtype,
    k: int,
    *,
    programs: int,
    tile: int = 4096,
    block_d: int | None = None,
    tiles: int | None = None,
) -> dict:
    """Block sizes and scratch sizes for h of `shape`/`strides` (no device access).

    programs: about how many pass programs to launch (a few per SM); tile: elements per tile;
    block_d / tiles: force the tile width and tiles per block (tests use tiny ones).
    """
    S, D = shape[-2], shape[-1]
    B = 1
    for n in shape[:-2]:
        B *= n
    stride_s, stride_d = strides[-2], strides[-1]
    if block_d is None:  # the contiguous axis is the wide side of the tile
        if abs(stride_d) <= abs(stride_s) or D == 1:
            block_d = min(triton.next_power_of_2(D), 1024, tile)
        else:
            block_d = max(1, tile // min(triton.next_power_of_2(S), 1024))
    block_s = max(1, tile // block_d)
    nbd = triton.cdiv(D, block_d)
    tiles_s = triton.cdiv(S, block_s)
    if tiles is None:  # enough tiles per block to keep the candidate buffer small; rounded
        # up so the grid stays within `programs` (rounding down overshoots it: with one
        # resident wave of `programs` blocks, a second, nearly empty wave)
        tiles = max(1, min(tiles_s, triton.cdiv(B * tiles_s * nbd, max(1, programs))))
    nbs = triton.cdiv(tiles_s, tiles)
    nb = nbs * nbd
    bins = [2**w for w in LEVELS[dtype]]
    return dict(
        B=B,
        S=S,
        D=D,
        block_s=block_s,
        block_d=block_d,
        tiles=tiles,
        nb=nb,
        nbd=nbd,
        bins=bins,
        scratch_bytes=B * (4 * sum(bins) + 8 * nb * k + 16 + 8),
    )


def _slice_table(h: torch.Tensor, base: int) -> torch.Tensor:
    """[B] int64 offset in elements from address base of element (0, 0) of each slice of h."""
    off = torch.zeros((), dtype=torch.int64, device=h.device)
    for size, stride in zip(h.shape[:-2], h.stride()[:-2]):
        idx = torch.arange(size, dtype=torch.int64, device=h.device) * stride
        off = off.unsqueeze(-1) + idx
    return off.reshape(-1) + (h.data_ptr() - base) // h.element_size()


def _slice_align(h: torch.Tensor) -> bool:
    """Whether the start of every slice of h is a multiple of 16 bytes (host-side, no sync)."""
    starts = [h.data_ptr()] + [
        stride * h.element_size() for size, stride in zip(h.shape[:-2], h.stride()[:-2]) if size > 1
    ]
    return all(a % 16 == 0 for a in starts)


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
    mask: torch.Tensor | None = None,
    *,
    empty=torch.empty,
    tile: int | None = None,
    block_d: int | None = None,
    tiles: int | None = None,
) -> list[LayerStats]:
    """LayerStats of each h [..., S, d] in hs, all slices of all tensors in one launch per pass.

    hs: validated tensors with one group_key (device, dtype, S, d and the strides of the last
    two dims); leading dims and their strides may differ. empty: allocator of the outputs
    (tests pass one that fills NaN / -1, so an element a kernel forgets to write is caught).
    tile/block_d/tiles: block-size overrides for tests.
    """
    if mask is not None:
        raise NotImplementedError("triton_layer_stats_many: mask= is not implemented yet")
    h = hs[0]
    if any(group_key(x) != group_key(h) for x in hs):
        raise ValueError("triton_layer_stats_many: tensors differ in device/dtype/S/d/strides")
    S, D = h.shape[-2], h.shape[-1]
    n = S * D
    if not supported(n, k):
        raise ValueError(
            f"the Triton kernels take k <= {MAX_K} and S * d <= {MAX_N}; got k={k}, "
            f"S * d={n} (layer_stats falls back to the torch path for these)"
        )
    dev = h.device
    programs, default_tile, warps = launch_config(dev)
    tile = tile or default_tile
    sizes = [math.prod(x.shape[:-2]) for x in hs]
    cfg = plan(
        (sum(sizes), S, D),
        (0, h.stride(-2), h.stride(-1)),
        h.dtype,
        k,
        programs=programs,
        tile=tile,
        block_d=block_d,
        tiles=tiles,
    )
    B, nb, bins = cfg["B"], cfg["nb"], cfg["bins"]
    base, esize = h.data_ptr(), h.element_size()
    if any((x.data_ptr() - base) % esize for x in hs):  # offsets from h must be whole elements
        opts = dict(empty=empty, tile=tile, block_d=block_d, tiles=tiles)
        return [triton_layer_stats_many([x], k, **opts)[0] for x in hs]
    table = torch.cat([_slice_table(x, base) for x in hs])
    # with 16-byte aligned slice starts the compiler may use 16-byte loads
    align = 16 // esize if all(_slice_align(x) for x in hs) else 1
    hist_stride = sum(bins)
    hist = torch.zeros(B, hist_stride, dtype=torch.int32, device=dev)
    state = torch.empty(B, 2, dtype=torch.int64, device=dev)
    cand = torch.empty(B, nb, k, dtype=torch.int64, device=dev)
    top = empty((B, k), dtype=torch.float32, device=dev)
    top_token = empty((B, k), dtype=torch.int64, device=dev)
    top_channel = empty((B, k), dtype=torch.int64, device=dev)
    median = empty((B,), dtype=torch.float32, device=dev)

    is_16 = h.dtype != torch.float32
    inf = INF_BITS[h.dtype]
    kp = triton.next_power_of_2(k)
    widths = LEVELS[h.dtype]
    shifts = [sum(widths[i + 1 :]) for i in range(len(widths))]
    offsets = [sum(bins[:i]) for i in range(len(bins))]
    for lvl in range(len(widths)):
        if lvl > 0:
            layer_stats_select_kernel[(B,)](
                hist[:, offsets[lvl - 1] :],
                state,
                n,
                hist_stride,
                BINS=bins[lvl - 1],
                BITS=widths[lvl - 1],
                FIRST=lvl == 1,
            )
        layer_stats_pass_kernel[(B * nb,)](
            h,
            table,
            hist[:, offsets[lvl] :],
            state,
            cand,
            S,
            D,
            h.stride(-2),
            h.stride(-1),
            nb,
            cfg["nbd"],
            cfg["tiles"],
            hist_stride,
            K=k,
            KP=kp,
            BS=cfg["block_s"],
            BD=cfg["block_d"],
            BINS=bins[lvl],
            BITS=widths[lvl],
            SHIFT=shifts[lvl],
            TOPK=lvl == 0,
            IS_16BIT=is_16,
            INF=inf,
            ALIGN=align,
            num_warps=warps,
        )
    layer_stats_finalize_kernel[(B,)](
        hist[:, offsets[-1] :],
        state,
        cand,
        top,
        top_token,
        top_channel,
        median,
        D,
        nb * k,
        hist_stride,
        K=k,
        KP=kp,
        BC=min(1024, triton.next_power_of_2(nb * k)),
        BINS=bins[-1],
        BITS=widths[-1],
        IS_FP16=h.dtype == torch.float16,
        IS_BF16=h.dtype == torch.bfloat16,
        INF=inf,
    )
    out, b0 = [], 0
    for x, size in zip(hs, sizes):
        sl = slice(b0, b0 + size)
        b0 += size
        parts = top[sl], top_token[sl], top_channel[sl], median[sl]
        out.append(LayerStats.from_slices(*parts, x.shape[:-2]))
    return out
