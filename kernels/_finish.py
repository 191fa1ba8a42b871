"""The finish of one slice, run by the last pass program of that slice: exact top-k and median
from what the pass kept, or, where it could not keep enough, from the slice itself.

Common path (one read of the slice): the top-k are the K largest keys among the candidates
(> t), plus, when fewer than K, the smallest-index elements equal to t (an ordered scan that stops
as soon as it has them); the median is the rank (n - 1) // 2 - below of the pass window histogram:
a bin of one pattern (bf16/fp16) is the answer, a wider bin (fp32) is resolved by radix levels
over the buffered elements of that bin.
Fallback (the sample misled, a buffer overflowed; flagged in STATUS): radix select of the median
and a top-k scan over the whole slice by this one program. Exact, slower, rare.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._bits import KEY_PAD, _bits_to_f32, _pick_bin, _slice_offsets, _tile, _topk_insert
from ._plan import (
    AT_LO,
    BELOW,
    BUFFER_OVERFLOW,
    EMPTY_SLICE,
    GT,
    MEDIAN_FALLBACK,
    N_REAL,
    RADIX_BINS,
    RADIX_BITS,
    STATUS,
    SUB_COUNTS,
    THRESHOLD,
    TIE_SCAN,
    TOPK_FALLBACK,
    WIN_LO,
    WIN_SHIFT,
)

BC = tl.constexpr(1024)  # buffer values per step


@triton.jit
def _load_cg(p, o, m):
    """Another program's results (L2, not this SM's L1)."""
    return tl.load(p + o, mask=m, other=0, cache_modifier=".cg")


@triton.jit
def _merge_candidates(p_pat, p_idx, b_count, b_top, o_k, K: tl.constexpr):
    """Insert the b_count buffered candidates (pattern, flat index) into the running top b_top."""
    for i0 in range(0, b_count, BC):
        o_v = i0 + tl.arange(0, BC)
        m_v = o_v < b_count
        b_pat = tl.where(m_v, _load_cg(p_pat, o_v, m_v), -1)
        b_top = _topk_insert(b_top, b_pat, _load_cg(p_idx, o_v, m_v), o_k)
    return b_top


@triton.jit
def _scan_topk(
    p_h, p_m, b_t, b_need, b_top, o_k, S, D, stride_s, stride_d, mask_stride_s,
    K: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, TIES_ONLY: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_16BIT: tl.constexpr, INF: tl.constexpr,
):  # fmt: skip
    """Top-k over the slice in flat-index order: every real element, or (TIES_ONLY) those equal
    to b_t until b_need of them were seen (complete row blocks only: later blocks hold larger
    indices, so the smallest-index ties are found first)."""
    b_seen = tl.zeros([], dtype=tl.int32)
    i_r = tl.zeros([], dtype=tl.int32)
    while (i_r < tl.cdiv(S, BS)) & (b_seen < b_need):
        for i_c in range(tl.cdiv(D, BD)):
            b_bits, m_h, b_flat = _tile(
                p_h, p_m, i_r, i_c, S, D, stride_s, stride_d, mask_stride_s,
                BS, BD, HAS_MASK, IS_16BIT, INF,
            )  # fmt: skip
            if TIES_ONLY:
                m_h &= b_bits == b_t
                b_seen += tl.sum(m_h.to(tl.int32))
            b_top = _topk_insert(b_top, tl.where(m_h, b_bits, -1), b_flat, o_k)
        i_r += 1
    return b_top


@triton.jit
def _select_slice(
    p_h, p_m, b_rank, S, D, stride_s, stride_d, mask_stride_s,
    BS: tl.constexpr, BD: tl.constexpr, TOTAL_BITS: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_16BIT: tl.constexpr, INF: tl.constexpr,
):  # fmt: skip
    """Pattern of 0-based rank b_rank among the slice's real elements: radix levels of
    RADIX_BITS bits over the TOTAL_BITS of a pattern, one read of the slice per level."""
    b_prefix = tl.zeros([], dtype=tl.int32)
    b_rem = tl.zeros([], dtype=tl.int32) + TOTAL_BITS
    while b_rem > 0:
        b_w = tl.minimum(b_rem, RADIX_BITS)
        b_rem -= b_w
        b_hist = tl.zeros([RADIX_BINS], dtype=tl.int32)
        for i_r in range(tl.cdiv(S, BS)):
            for i_c in range(tl.cdiv(D, BD)):
                b_bits, m_h, _ = _tile(
                    p_h, p_m, i_r, i_c, S, D, stride_s, stride_d, mask_stride_s,
                    BS, BD, HAS_MASK, IS_16BIT, INF,
                )  # fmt: skip
                m_h &= (b_bits >> (b_rem + b_w)) == b_prefix
                b_bin = tl.where(m_h, (b_bits >> b_rem) & ((1 << b_w) - 1), 0)
                b_hist += tl.histogram(
                    tl.reshape(b_bin, [BS * BD]), RADIX_BINS, mask=tl.reshape(m_h, [BS * BD])
                )
        i_bin, b_rank = _pick_bin(b_hist, b_rank)
        b_prefix = (b_prefix << b_w) | i_bin
    return b_prefix


@triton.jit
def _select_buffer(p_med, p_scr, b_low, b_shift, b_rank, CAPM_SUB, NSUB: tl.constexpr):
    """Pattern of 0-based rank b_rank among the buffered values in [b_low, b_low + 2**b_shift):
    radix levels over the low b_shift bits, one read of the fp32 median buffer per level."""
    b_prefix = tl.zeros([], dtype=tl.int32)
    b_rem = b_shift
    while b_rem > 0:
        b_w = tl.minimum(b_rem, RADIX_BITS)
        b_rem -= b_w
        b_hist = tl.zeros([RADIX_BINS], dtype=tl.int32)
        for i_sub in range(NSUB):
            b_count = tl.minimum(_load_cg(p_scr, SUB_COUNTS + i_sub, True), CAPM_SUB)
            for i0 in range(0, b_count, BC):
                o_v = i0 + tl.arange(0, BC)
                m_v = o_v < b_count
                b_d = _load_cg(p_med + i_sub * CAPM_SUB, o_v, m_v) - b_low
                m_v &= (b_d >= 0) & ((b_d >> (b_rem + b_w)) == b_prefix)
                b_bin = tl.where(m_v, (b_d >> b_rem) & ((1 << b_w) - 1), 0)
                b_hist += tl.histogram(b_bin, RADIX_BINS, mask=m_v)
        i_bin, b_rank = _pick_bin(b_hist, b_rank)
        b_prefix = (b_prefix << b_w) | i_bin
    return b_low + b_prefix


@triton.jit
def _finish(
    i_b, h, mask, table, scratch, buffers, top, top_token, top_channel, median, ratio,
    S, D, stride_b, stride_s, stride_d, mask_stride_b, mask_stride_s,
    SCR, BUFW, CAPM_SUB, CAPT, HAS_TABLE: tl.constexpr, ALIGN: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
    WP: tl.constexpr, WIN_OFF: tl.constexpr, NSUB: tl.constexpr, TOTAL_BITS: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_16BIT: tl.constexpr, IS_FP16: tl.constexpr,
    IS_BF16: tl.constexpr, INF: tl.constexpr,
):  # fmt: skip
    """Write top/top_token/top_channel [K], median, ratio and STATUS of slice i_b.

    The pointers are formed again from the kernel's arguments: nothing of the pass loop stays
    live in registers until here."""
    o_h, o_m = _slice_offsets(table, i_b, stride_b, mask_stride_b, HAS_TABLE, ALIGN)
    p_h = h + o_h
    p_m = mask + o_m
    p_scr = scratch + i_b * SCR
    p_med = buffers + i_b.to(tl.int64) * BUFW
    p_pat = p_med + NSUB * CAPM_SUB
    p_idx = p_pat + CAPT
    b_n = _load_cg(p_scr, N_REAL, True)
    b_gt = _load_cg(p_scr, GT, True)
    b_t = _load_cg(p_scr, THRESHOLD, True)
    b_status = tl.where(b_n == 0, EMPTY_SLICE, 0)

    # top-k: [KP] running keys, K real slots (-1 = none yet)
    o_k = tl.arange(0, KP)
    b_top = tl.where(o_k < K, -1, KEY_PAD).to(tl.int64)
    b_need = tl.minimum(b_n, K)
    b_fallback = b_gt > CAPT  # candidates lost
    if not b_fallback:
        b_top = _merge_candidates(p_pat, p_idx, b_gt, b_top, o_k, K)
        if b_gt < b_need:  # the rest are ties at t: the smallest flat indices
            b_status |= TIE_SCAN
            b_top = _scan_topk(
                p_h, p_m, b_t, b_need - b_gt, b_top, o_k, S, D, stride_s, stride_d,
                mask_stride_s, K, BS, BD, True, HAS_MASK, IS_16BIT, INF,
            )  # fmt: skip
            # fewer ties than needed: t was above the K-th value (a sample that saw an element
            # twice): start again from the whole slice
            b_fallback = tl.sum((o_k < K) & (b_top >= 0)) < b_need
    if b_fallback:
        b_status |= TOPK_FALLBACK
        b_top = tl.where(o_k < K, -1, KEY_PAD).to(tl.int64)
        b_top = _scan_topk(
            p_h, p_m, b_t, b_n + 1, b_top, o_k, S, D, stride_s, stride_d, mask_stride_s,
            K, BS, BD, False, HAS_MASK, IS_16BIT, INF,
        )  # fmt: skip

    # median: rank (n - 1) // 2 in the pass window, else the fallback
    b_rank = (b_n - 1) // 2 - _load_cg(p_scr, BELOW, True)
    b_hist = _load_cg(p_scr, WIN_OFF + tl.arange(0, WP), True)
    b_lo = _load_cg(p_scr, WIN_LO, True)
    b_shift = _load_cg(p_scr, WIN_SHIFT, True)
    i_bin, b_in_bin = _pick_bin(b_hist, tl.maximum(b_rank, 0))
    b_med = b_lo + (i_bin << b_shift)  # the bin's lowest pattern
    b_hit = (b_rank >= 0) & (b_rank < tl.sum(b_hist))
    if NSUB > 0:  # fp32: the bin's values are in the median buffer unless it overflowed
        # bin 0 starts with the values equal to lo, counted but not kept
        b_at_lo = tl.where(i_bin == 0, _load_cg(p_scr, AT_LO, True), 0)
        b_scan = b_hit & (b_shift > 0) & (b_in_bin >= b_at_lo)
        b_in_bin -= b_at_lo
        o_sub = tl.arange(0, NSUB)
        b_lost = tl.max(_load_cg(p_scr, SUB_COUNTS + o_sub, o_sub < NSUB)) > CAPM_SUB
        b_status |= tl.where(b_scan & b_lost, BUFFER_OVERFLOW, 0)
        b_hit &= (b_scan & b_lost) == 0
        if b_scan & (b_lost == 0) & (b_n > 0):
            b_med = _select_buffer(p_med, p_scr, b_med, b_shift, b_in_bin, CAPM_SUB, NSUB)
    if (b_hit == 0) & (b_n > 0):
        b_status |= tl.where((b_status & BUFFER_OVERFLOW) != 0, 0, MEDIAN_FALLBACK)
        b_med = _select_slice(
            p_h, p_m, (b_n - 1) // 2, S, D, stride_s, stride_d, mask_stride_s,
            BS, BD, TOTAL_BITS, HAS_MASK, IS_16BIT, INF,
        )  # fmt: skip

    # outputs; NaN is the largest pattern: a NaN in the slice makes the median NaN (torch)
    b_top = tl.where(o_k < K, b_top, -1)
    b_med = tl.where((tl.max(b_top) >> 32) > INF, INF + 1, b_med)
    b_med_f = tl.where(b_n > 0, _bits_to_f32(b_med, IS_FP16, IS_BF16), float("nan"))
    b_first = tl.zeros([], dtype=tl.float32)
    for j in tl.static_range(K):  # descending
        b_key = tl.max(b_top)
        b_top = tl.where(b_top == b_key, -1, b_top)
        b_flat = tl.where(b_key >= 0, 0xFFFFFFFF - (b_key & 0xFFFFFFFF), -1)
        b_val = _bits_to_f32(b_key >> 32, IS_FP16, IS_BF16)
        b_val = tl.where(b_key >= 0, b_val, float("nan"))
        tl.store(top + i_b * K + j, b_val)
        tl.store(top_token + i_b * K + j, tl.where(b_key >= 0, b_flat // D, -1))
        tl.store(top_channel + i_b * K + j, tl.where(b_key >= 0, b_flat % D, -1))
        if j == 0:
            b_first = b_val
    tl.store(median + i_b, b_med_f)
    # the ratio as LayerStats.from_slices defines it: top1 / median, IEEE float32 division
    tl.store(ratio + i_b, tl.math.div_rn(b_first, b_med_f))
    tl.store(p_scr + STATUS, b_status)
