"""The pass kernel: reads every element of every slice once, then the last program of each slice
runs the finish (kernels/_finish.py).

Per tile of a program (grid = slices x programs per slice, strided, 64-bit offsets):
- counts the real elements below the window [lo, hi] and histograms those inside it in WP bins
  of 2**shift patterns (bf16/fp16: shift 0, one bin per pattern: the count is exact);
- fp32 (NSUB > 0): appends the patterns inside the window to a median sub-buffer
  (one atomic per kept element, on one of NSUB counters taken in turn by the tiles: few
  elements, little contention, even fill),
  except those equal to its lowest pattern, which are counted (an atom there: zeros);
- appends the top-k candidates (pattern > t) with their flat index.
Then a block barrier and a release/acquire counter per slice: the program that finishes last
sees every other program's counts and buffers (read through L2) and finishes the slice.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._bits import _slice_offsets
from ._finish import _finish
from ._plan import (
    AT_LO,
    BELOW,
    GT,
    N_REAL,
    PASS_DONE,
    SUB_COUNTS,
    THRESHOLD,
    WIN_HI,
    WIN_LO,
    WIN_SHIFT,
)


@triton.jit
def layer_stats_pass_kernel(
    h,  # the first input tensor (base pointer and element type)
    mask,  # uint8 real-token mask (or any pointer when not HAS_MASK)
    table,  # [B, 2] int64 slice offsets (h elements, mask bytes) when HAS_TABLE
    scratch,  # [B, SCR] int32: counters, window, histograms (the sample kernel set the window)
    buffers,  # [B, BUFW] int32: median sub-buffers (fp32), candidate patterns, indices
    top,  # [B, K] float32 outputs ...
    top_token,  # [B, K] int64
    top_channel,  # [B, K] int64
    median,  # [B] float32
    ratio,  # [B] float32
    S,
    D,
    stride_b,
    stride_s,
    stride_d,
    mask_stride_b,
    mask_stride_s,
    NB,  # programs per slice
    NBD,  # programs along D
    NT,  # tiles per program along S
    SCR,  # scratch words per slice
    BUFW,  # buffer words per slice
    CAPM_SUB,  # median sub-buffer capacity (fp32)
    CAPT,  # candidate capacity
    K: tl.constexpr,
    KP: tl.constexpr,
    BS: tl.constexpr,
    BD: tl.constexpr,
    FS: tl.constexpr,  # tile of the finish's scans (smaller: registers)
    FD: tl.constexpr,
    WP: tl.constexpr,  # window bins
    WIN_OFF: tl.constexpr,  # scratch word of the window histogram
    NSUB: tl.constexpr,  # median sub-buffers, 0: no buffer (bf16/fp16)
    TOTAL_BITS: tl.constexpr,  # bits of a pattern (fallback radix)
    HAS_MASK: tl.constexpr,
    HAS_TABLE: tl.constexpr,
    IS_16BIT: tl.constexpr,
    IS_FP16: tl.constexpr,
    IS_BF16: tl.constexpr,
    INF: tl.constexpr,
    ALIGN: tl.constexpr,  # every slice offset is a multiple of ALIGN (16 bytes: vector loads)
):
    i_p = tl.program_id(0)
    i_b, i_n = i_p // NB, i_p % NB
    i_r, i_c = i_n // NBD, i_n % NBD
    o_h, o_m = _slice_offsets(table, i_b, stride_b, mask_stride_b, HAS_TABLE, ALIGN)
    p_h = h + o_h
    p_m = mask + o_m
    p_scr = scratch + i_b * SCR
    o_buf = i_b.to(tl.int64) * BUFW
    b_lo = tl.load(p_scr + WIN_LO)
    b_hi = tl.load(p_scr + WIN_HI)
    if NSUB > 0:
        b_shift = tl.load(p_scr + WIN_SHIFT)
    b_t = tl.load(p_scr + THRESHOLD)
    # [BD] int32: per-element int64 registers only where an address is formed
    o_c = i_c * BD + tl.arange(0, BD)
    m_c = o_c < D
    b_n = tl.zeros([], dtype=tl.int32)
    b_below = tl.zeros([], dtype=tl.int32)
    b_at_lo = tl.zeros([], dtype=tl.int32)
    b_hist = tl.zeros([WP], dtype=tl.int32)
    for i_t in range(NT):
        # [BS]
        o_s = ((i_r * NT + i_t) * BS + tl.arange(0, BS)).to(tl.int64)
        m_s = o_s < S
        if HAS_MASK:
            m_s &= tl.load(p_m + o_s * mask_stride_s, mask=m_s, other=0) != 0
            b_n += tl.sum(m_s.to(tl.int32))
        # [BS, BD]
        m_h = m_s[:, None] & m_c[None, :]
        b_h = tl.load(p_h + o_s[:, None] * stride_s + o_c[None, :] * stride_d, mask=m_h, other=0)
        # |h| patterns, NaN -> INF + 1 (inlined: nested jit calls are slow in the interpreter)
        if IS_16BIT:
            b_bits = b_h.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
        else:
            b_bits = b_h.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        b_bits = tl.where(b_bits > INF, INF + 1, b_bits)
        b_below += tl.sum((m_h & (b_bits < b_lo)).to(tl.int32))
        m_in = m_h & (b_bits >= b_lo) & (b_bits <= b_hi)
        if NSUB > 0:  # fp32: bins of 2**shift patterns
            b_bin = tl.where(m_in, (b_bits - b_lo) >> b_shift, 0)
        else:  # bf16/fp16: one pattern per bin
            b_bin = tl.where(m_in, b_bits - b_lo, 0)
        # histogram wants 1-D input; bins and mask are flattened alike
        b_hist += tl.histogram(tl.reshape(b_bin, [BS * BD]), WP, mask=tl.reshape(m_in, [BS * BD]))
        if NSUB > 0:  # keep the window's values: one slot per value; lo itself only counted
            i_sub = (i_n * NT + i_t) % NSUB  # tiles take turns: uneven regions even out
            p_count = p_scr + SUB_COUNTS + i_sub
            p_sub = buffers + o_buf + i_sub * CAPM_SUB
            m_lo = b_bits == b_lo
            b_at_lo += tl.sum((m_in & m_lo).to(tl.int32))
            m_in &= ~m_lo
            b_slot = tl.atomic_add(p_count + tl.zeros_like(b_bits), 1, mask=m_in, sem="relaxed")
            tl.store(p_sub + b_slot, b_bits, mask=m_in & (b_slot < CAPM_SUB))
        # top-k candidates (> t): a few per slice, so a tile holds one now and then
        b_cand = tl.where(m_h & (b_bits > b_t), b_bits, -1)
        if tl.max(b_cand) >= 0:
            b_flat = o_s[:, None].to(tl.int32) * D + o_c[None, :]
            b_count = tl.sum((b_cand >= 0).to(tl.int32))
            b_next = tl.atomic_add(p_scr + GT, b_count, sem="relaxed")
            b_end = tl.minimum(b_next + b_count, CAPT)  # past the buffer: counted only
            p_pat = buffers + o_buf + NSUB * CAPM_SUB
            while b_next < b_end:  # one per step: no per-element registers
                b_max = tl.max(b_cand)
                i_flat = tl.min(tl.where(b_cand == b_max, b_flat, 0x7FFFFFFF))
                tl.store(p_pat + b_next, b_max)
                tl.store(p_pat + CAPT + b_next, i_flat)
                b_cand = tl.where(b_flat == i_flat, -1, b_cand)
                b_next += 1
    o_bin = tl.arange(0, WP)
    tl.atomic_add(p_scr + WIN_OFF + o_bin, b_hist, mask=b_hist != 0, sem="relaxed")
    if not HAS_MASK:  # every row of the program's tiles that exists
        b_n = tl.minimum(S - i_r * NT * BS, NT * BS)
    tl.atomic_add(p_scr + N_REAL, b_n * tl.minimum(D - i_c * BD, BD), sem="relaxed")
    tl.atomic_add(p_scr + BELOW, b_below, sem="relaxed")
    if NSUB > 0:
        tl.atomic_add(p_scr + AT_LO, b_at_lo, sem="relaxed")
    # every thread's writes before the counter's release; the last program acquires them all
    tl.debug_barrier()
    if tl.atomic_add(p_scr + PASS_DONE, 1, sem="acq_rel") == NB - 1:
        _finish(
            i_b, h, mask, table, scratch, buffers, top, top_token, top_channel, median, ratio,
            S, D, stride_b, stride_s, stride_d, mask_stride_b, mask_stride_s,
            SCR, BUFW, CAPM_SUB, CAPT, HAS_TABLE, ALIGN,
            K, KP, FS, FD, WP, WIN_OFF, NSUB, TOTAL_BITS,
            HAS_MASK, IS_16BIT, IS_FP16, IS_BF16, INF,
        )  # fmt: skip
