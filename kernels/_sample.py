"""The sample kernel: per slice, the pass window (where the median lies) and the top-k threshold,
from chunks of the slice at spread, distinct positions.

Each chunk is `CW` contiguous values of one row (32 bytes: one DRAM sector); chunk j is cell
(j * STEP) mod cells of the R x Q cells (rows x chunks along the contiguous axis), STEP close to
cells / golden ratio and coprime to it: a permutation of the cells whose first j are spread
like a low-discrepancy sequence, so the first `cells` chunks are distinct elements. Program q of
a slice reads chunks q * CPP ... (a [CPP, CW] block; the pilot is the first PILOT chunks) and
- writes its KS largest patterns (the threshold t is the (k+2)-th largest over all programs: at
  least k + 2 distinct sampled elements, hence elements of the slice, are >= t; the 2 spare keep
  the k largest strictly above t even where the sample holds the slice's largest values);
- fp32: counts its patterns in SAMPLE_BINS bins over the pilot window (every program reads the
  pilot and selects its ranks alike, so that all use the same bins).
The last program of the slice (a counter, zeroed by the launcher) turns these into the pass
window: bf16/fp16: WINDOW patterns around the pilot's median; fp32: the bracket of sample ranks
m/2 +- z * sqrt(m)/2, which holds the median unless the sample misled (then: the fallback), or
the one value of the pilot's bracket when the pilot saw nothing else there (an atom: zeros,
clipped values), counted exactly.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._bits import _abs_bits, _pick_bin, _shift_for, _slice_offsets
from ._plan import (
    RADIX_BINS,
    RADIX_BITS,
    SAMPLE_BELOW,
    SAMPLE_DONE,
    SAMPLE_TOTAL,
    THRESHOLD,
    WIN_HI,
    WIN_LO,
    WIN_SHIFT,
)


@triton.jit
def _chunks(
    p_h,
    p_m,
    j0,
    j_end,
    S,
    D,
    stride_s,
    stride_d,
    mask_stride_s,
    R,
    Q,
    STEP,
    LC,
    NCH: tl.constexpr,
    CW: tl.constexpr,
    ALONG_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_16BIT: tl.constexpr,
    INF: tl.constexpr,
):
    """Patterns [NCH, CW] of chunks j0 .. j0 + NCH - 1 (those < j_end) and their real mask.

    Chunk j: cell (j * STEP) mod (R * Q), i.e. one of the R rows across the contiguous axis and
    one of the Q chunks along it (LC values long).
    """
    # [NCH]
    o_j = j0 + tl.arange(0, NCH).to(tl.int64)
    b_cell = (o_j * STEP) % (R.to(tl.int64) * Q)
    b_row = b_cell // Q
    b_chunk = b_cell % Q
    # [NCH, CW]
    o_along = b_chunk[:, None] * CW + tl.arange(0, CW)[None, :]
    m_x = (o_j < j_end)[:, None] & (o_along < LC)
    if ALONG_D:  # rows are tokens (full shape: Triton < 3.5 broadcasts no pointer to its mask)
        o_s = b_row[:, None] + tl.zeros_like(o_along)
        o_c = o_along
    else:  # rows are channels, chunks run along the tokens
        o_s = o_along
        o_c = b_row[:, None]
    if HAS_MASK:
        m_x &= tl.load(p_m + o_s * mask_stride_s, mask=m_x, other=0) != 0
    b_h = tl.load(p_h + o_s * stride_s + o_c * stride_d, mask=m_x, other=0)
    return _abs_bits(b_h, IS_16BIT, INF), m_x


@triton.jit
def _ranks(b_count, z):
    """0-based sample ranks (lo, hi) around the median: count/2 -+ z * sqrt(count)/2, clipped."""
    b_half = b_count.to(tl.float32) * 0.5
    b_dev = tl.sqrt(b_count.to(tl.float32)) * 0.5 * z
    b_lo = tl.maximum(b_half - b_dev, 0.0).to(tl.int32)
    b_hi = tl.minimum((b_half + b_dev).to(tl.int32) + 1, b_count - 1)
    return b_lo, tl.maximum(b_hi, 0)


@triton.jit
def _select_block(b_bits, m_v, b_rank, TOTAL_BITS: tl.constexpr):
    """Pattern of 0-based rank b_rank among the values b_bits [N] where m_v: radix levels of
    RADIX_BITS bits (histograms: a sort is slow in the interpreter and no faster here)."""
    b_prefix = tl.zeros([], dtype=tl.int32)
    b_rem = tl.zeros([], dtype=tl.int32) + TOTAL_BITS
    while b_rem > 0:
        b_w = tl.minimum(b_rem, RADIX_BITS)
        b_rem -= b_w
        m_lvl = m_v & ((b_bits >> (b_rem + b_w)) == b_prefix)
        b_bin = tl.where(m_lvl, (b_bits >> b_rem) & ((1 << b_w) - 1), 0)
        b_hist = tl.histogram(b_bin, RADIX_BINS, mask=m_lvl)
        i_bin, b_rank = _pick_bin(b_hist, b_rank)
        b_prefix = (b_prefix << b_w) | i_bin
    return b_prefix


@triton.jit
def _pilot(
    p_h,
    p_m,
    S,
    D,
    stride_s,
    stride_d,
    mask_stride_s,
    R,
    Q,
    STEP,
    LC,
    z,
    PILOT: tl.constexpr,
    CW: tl.constexpr,
    ALONG_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_16BIT: tl.constexpr,
    INF: tl.constexpr,
    TOTAL_BITS: tl.constexpr,
):
    """Patterns (lo, hi) of the pilot's ranks around its median; (0, INF + 1) without values."""
    b_bits, m_x = _chunks(
        p_h, p_m, 0, PILOT, S, D, stride_s, stride_d, mask_stride_s, R, Q, STEP, LC,
        PILOT, CW, ALONG_D, HAS_MASK, IS_16BIT, INF,
    )  # fmt: skip
    b_bits = tl.reshape(b_bits, [PILOT * CW])
    m_x = tl.reshape(m_x, [PILOT * CW])
    b_count = tl.sum(m_x.to(tl.int32))
    r_lo, r_hi = _ranks(b_count, z)
    b_lo = _select_block(b_bits, m_x, r_lo, TOTAL_BITS)
    b_hi = _select_block(b_bits, m_x, r_hi, TOTAL_BITS)
    return tl.where(b_count > 0, b_lo, 0), tl.where(b_count > 0, b_hi, INF + 1)


@triton.jit
def _rank_bounds(b_hist, b_rank, b_below, b_base, b_shift, INF: tl.constexpr):
    """(lowest, highest) pattern of the bin holding sample rank b_rank, where the bins are
    [0, base), the histogram's bins of 2**shift patterns from base, and the rest up to INF + 1."""
    b_in = tl.sum(b_hist)
    b_r = b_rank - b_below
    i_bin, _ = _pick_bin(b_hist, tl.maximum(b_r, 0))
    b_lo = b_base.to(tl.int64) + (i_bin.to(tl.int64) << b_shift)
    b_hi = b_lo + (1 << b_shift.to(tl.int64)) - 1
    # past the histogram i_bin = WS: b_lo is the first pattern above it
    b_lo = tl.minimum(tl.where(b_r < 0, 0, b_lo), INF + 1)
    b_hi = tl.where(b_r < 0, b_base.to(tl.int64) - 1, tl.where(b_r >= b_in, INF + 1, b_hi))
    return b_lo, tl.minimum(b_hi, INF + 1)


@triton.jit
def layer_stats_sample_kernel(
    h,  # the first input tensor (base pointer and element type)
    mask,  # uint8 real-token mask (or any pointer when not HAS_MASK)
    table,  # [B, 2] int64 slice offsets (h elements, mask bytes) when HAS_TABLE
    scratch,  # [B, SCR] int32, zeroed: counters, windows, histograms (see _plan)
    S,
    D,
    stride_b,
    stride_s,
    stride_d,
    mask_stride_b,
    mask_stride_s,
    R,  # rows across the contiguous axis
    Q,  # chunks along the contiguous axis
    STEP,  # chunk j is cell (j * STEP) mod (R * Q)
    LC,  # length of the contiguous axis
    N_CHUNKS,  # sampled chunks per slice (distinct while <= R * Q)
    P,  # programs per slice
    SCR,  # scratch words per slice
    z_pilot,
    z_sample,
    K: tl.constexpr,
    KS: tl.constexpr,  # sampled values kept per program: next power of 2 of K + 2
    PP: tl.constexpr,  # next power of 2 of P
    CPP: tl.constexpr,  # chunks per program
    CW: tl.constexpr,  # values per chunk
    PILOT: tl.constexpr,  # pilot chunks
    WP: tl.constexpr,  # pass window bins
    WS: tl.constexpr,  # sample histogram bins (fp32), 0: none
    TOP_OFF: tl.constexpr,  # scratch word of the programs' top-k values
    SBIN_OFF: tl.constexpr,  # scratch word of the sample histogram
    ALONG_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_TABLE: tl.constexpr,
    IS_16BIT: tl.constexpr,
    INF: tl.constexpr,
    TOTAL_BITS: tl.constexpr,  # bits of a pattern
):
    i_p = tl.program_id(0)
    i_b, i_q = i_p // P, i_p % P
    o_h, o_m = _slice_offsets(table, i_b, stride_b, mask_stride_b, HAS_TABLE, 1)
    p_h = h + o_h
    p_m = mask + o_m
    p_scr = scratch + i_b * SCR
    if WS > 0:  # fp32: the pilot window first (fewer values live across its selection)
        b_base, b_top = _pilot(
            p_h, p_m, S, D, stride_s, stride_d, mask_stride_s, R, Q, STEP, LC, z_pilot,
            PILOT, CW, ALONG_D, HAS_MASK, IS_16BIT, INF, TOTAL_BITS,
        )  # fmt: skip
        b_shift = _shift_for(b_top.to(tl.int64) - b_base, WS)
    j0 = i_q * CPP  # the pilot is the first PILOT of these chunks
    b_bits, m_x = _chunks(
        p_h, p_m, j0, N_CHUNKS, S, D, stride_s, stride_d, mask_stride_s, R, Q, STEP, LC,
        CPP, CW, ALONG_D, HAS_MASK, IS_16BIT, INF,
    )  # fmt: skip
    if WS > 0:  # fp32: histogram over the pilot window, the same bins in every program
        b_bin = (b_bits - b_base) >> b_shift
        m_in = m_x & (b_bits >= b_base) & (b_bin < WS)
        b_hist = tl.histogram(
            tl.reshape(tl.where(m_in, b_bin, 0), [CPP * CW]), WS, mask=tl.reshape(m_in, [CPP * CW])
        )
        o_bin = tl.arange(0, WS)
        tl.atomic_add(p_scr + SBIN_OFF + o_bin, b_hist, mask=b_hist != 0, sem="relaxed")
        b_below = tl.sum((m_x & (b_bits < b_base)).to(tl.int32))
        tl.atomic_add(p_scr + SAMPLE_BELOW, b_below, sem="relaxed")
        tl.atomic_add(p_scr + SAMPLE_TOTAL, tl.sum(m_x.to(tl.int32)), sem="relaxed")
    # this program's KS largest patterns (-1: no value)
    b_vals = tl.reshape(tl.where(m_x, b_bits, -1), [CPP * CW])
    o_v = tl.arange(0, CPP * CW)
    for j in tl.static_range(KS):
        tl.store(p_scr + TOP_OFF + i_q * KS + j, tl.max(b_vals))
        b_vals = tl.where(o_v == tl.argmax(b_vals, 0), -1, b_vals)
    # the last program of the slice sees every other program's writes (release / acquire)
    tl.debug_barrier()
    if tl.atomic_add(p_scr + SAMPLE_DONE, 1, sem="acq_rel") == P - 1:
        # t: the (K+2)-th largest sampled pattern over all programs (0 if fewer values)
        o_t = tl.arange(0, PP * KS)
        b_all = tl.load(p_scr + TOP_OFF + o_t, mask=o_t < P * KS, other=-1, cache_modifier=".cg")
        for _ in tl.static_range(K + 1):
            b_all = tl.where(o_t == tl.argmax(b_all, 0), -1, b_all)
        b_t = tl.maximum(tl.max(b_all), 0)
        if WS > 0:
            b_hist = tl.load(p_scr + SBIN_OFF + tl.arange(0, WS), cache_modifier=".cg")
            b_total = tl.load(p_scr + SAMPLE_TOTAL, cache_modifier=".cg")
            b_below = tl.load(p_scr + SAMPLE_BELOW, cache_modifier=".cg")
            r_lo, r_hi = _ranks(b_total, z_sample)
            b_lo, _ = _rank_bounds(b_hist, r_lo, b_below, b_base, b_shift, INF)
            _, b_hi = _rank_bounds(b_hist, r_hi, b_below, b_base, b_shift, INF)
            b_lo = tl.where(b_total > 0, b_lo, 0)
            b_hi = tl.where(b_total > 0, b_hi, INF + 1)
            b_atom = b_base == b_top  # the pilot's bracket is one value: count just it
            b_lo = tl.where(b_atom, b_base, b_lo)
            b_hi = tl.where(b_atom, b_base, b_hi)
            b_wshift = _shift_for(b_hi - b_lo, WP)
        else:  # bf16/fp16: WP consecutive patterns centred on the pilot's median
            b_mid, _ = _pilot(
                p_h, p_m, S, D, stride_s, stride_d, mask_stride_s, R, Q, STEP, LC, 0.0,
                PILOT, CW, ALONG_D, HAS_MASK, IS_16BIT, INF, TOTAL_BITS,
            )  # fmt: skip
            b_lo = tl.maximum(b_mid - WP // 2, 0).to(tl.int64)
            b_hi = b_lo + WP - 1
            b_wshift = tl.zeros([], dtype=tl.int32)
        tl.store(p_scr + WIN_LO, b_lo.to(tl.int32))
        tl.store(p_scr + WIN_HI, b_hi.to(tl.int32))
        tl.store(p_scr + WIN_SHIFT, b_wshift)
        tl.store(p_scr + THRESHOLD, b_t)
