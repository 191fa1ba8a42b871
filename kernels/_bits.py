"""Jit helpers shared by the sample and pass kernels: bit patterns of |h|, slice addressing, the
running top-k and histogram bin picking.

Bit patterns: an integer view of h with the sign bit cleared is monotone in |h| (+0 == -0, +inf
above every finite value); every NaN is mapped to the one pattern just above +inf (INF + 1), so
NaN is the largest value and NaNs are equal to each other, as torch orders them. Top-k keys are
int64 `pattern << 32 | (2**32 - 1 - flat_index)`: distinct, ordered by |h| and then by smaller
flat index (the tie rule).
"""

from __future__ import annotations

import triton
import triton.language as tl

KEY_PAD = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # top-k padding slots: never the minimum


@triton.jit
def _abs_bits(b_h, IS_16BIT: tl.constexpr, INF: tl.constexpr):
    """|h| as non-negative int32 bit patterns, every NaN mapped to INF + 1."""
    if IS_16BIT:
        b_bits = b_h.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    else:
        b_bits = b_h.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.where(b_bits > INF, INF + 1, b_bits)


@triton.jit
def _bits_to_f32(b_bits, IS_FP16: tl.constexpr, IS_BF16: tl.constexpr):
    """The float32 value of a pattern (exact: bf16/fp16 values are float32 values)."""
    if IS_FP16:
        return b_bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    elif IS_BF16:  # bf16 is the top half of fp32 (subnormals included)
        return (b_bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return b_bits.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _slice_offsets(
    table, i_b, stride_b, mask_stride_b, HAS_TABLE: tl.constexpr, ALIGN: tl.constexpr
):
    """(offset of h[b, 0, 0] from h in elements, offset of mask[b, 0] from mask in bytes).

    With a table (several tensors, or leading dims no single stride describes) the offsets are
    read from it ([B, 2] int64), otherwise b * stride.
    """
    if HAS_TABLE:
        o_h = tl.load(table + i_b * 2)
        o_m = tl.load(table + i_b * 2 + 1)
    else:
        o_h = i_b.to(tl.int64) * stride_b
        o_m = i_b.to(tl.int64) * mask_stride_b
    if ALIGN > 1:  # an offset from memory has unknown alignment: scalar loads otherwise
        o_h = tl.multiple_of(o_h, ALIGN)
    return o_h, o_m


@triton.jit
def _tile(
    p_h,
    p_m,
    i_r,
    i_c,
    S,
    D,
    stride_s,
    stride_d,
    mask_stride_s,
    BS: tl.constexpr,
    BD: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_16BIT: tl.constexpr,
    INF: tl.constexpr,
):
    """Tile (i_r, i_c) of one slice: patterns [BS, BD], real-element mask, int32 flat indices
    (64-bit arithmetic only for the addresses)."""
    # [BS], [BD]
    o_s = i_r * BS + tl.arange(0, BS)
    o_c = i_c * BD + tl.arange(0, BD)
    m_s = o_s < S
    if HAS_MASK:
        m_s &= tl.load(p_m + o_s.to(tl.int64) * mask_stride_s, mask=m_s, other=0) != 0
    # [BS, BD]
    m_h = m_s[:, None] & (o_c < D)[None, :]
    p_x = p_h + o_s.to(tl.int64)[:, None] * stride_s + o_c.to(tl.int64)[None, :] * stride_d
    b_h = tl.load(p_x, mask=m_h, other=0)
    return _abs_bits(b_h, IS_16BIT, INF), m_h, o_s[:, None] * D + o_c[None, :]


@triton.jit
def _key(b_bits, b_flat):
    """Top-k keys of patterns and flat indices (any shape, same shape)."""
    return (b_bits.to(tl.int64) << 32) | (0xFFFFFFFF - b_flat.to(tl.int64))


@triton.jit
def _topk_insert(b_top, b_cand, b_flat, o_k):
    """Insert into the running top keys b_top [KP] the elements (pattern b_cand, flat index
    b_flat; any shape, pattern -1 = none) whose keys beat its smallest one.

    b_top holds K real slots (padding slots hold KEY_PAD, never replaced). One element per step,
    best first, until the best left loses: few steps once the top has filled, and only int32
    values per element (a tile of int64 keys costs registers the pass kernel does not have).
    """
    b_max = tl.max(b_cand)
    b_key = _key(b_max, tl.min(tl.where(b_cand == b_max, b_flat, 0x7FFFFFFF)))
    b_key = tl.where(b_max >= 0, b_key, -2)
    while b_key > tl.min(b_top):
        b_top = tl.where(o_k == tl.argmin(b_top, 0), b_key, b_top)
        b_cand = tl.where(b_flat == (0xFFFFFFFF - (b_key & 0xFFFFFFFF)).to(tl.int32), -1, b_cand)
        b_max = tl.max(b_cand)
        b_key = _key(b_max, tl.min(tl.where(b_cand == b_max, b_flat, 0x7FFFFFFF)))
        b_key = tl.where(b_max >= 0, b_key, -2)
    return b_top


@triton.jit
def _pick_bin(b_hist, b_rank):
    """(bin holding 0-based rank b_rank of the counts b_hist [BINS], rank inside that bin).

    int32 throughout (counts of one slice are < 2**31): loops carry the rank with its type."""
    b_cum = tl.cumsum(b_hist, 0)
    i_bin = tl.sum((b_cum <= b_rank).to(tl.int32))
    o_bin = tl.arange(0, b_hist.shape[0])
    return i_bin, (b_rank - tl.sum(tl.where(o_bin < i_bin, b_hist, 0))).to(tl.int32)


@triton.jit
def _shift_for(b_span, BINS: tl.constexpr):
    """Smallest shift with (b_span >> shift) < BINS: bins of 2**shift patterns cover the span."""
    b_span = tl.maximum(b_span, 0)
    b_shift = tl.zeros([], dtype=tl.int32)
    for _ in tl.static_range(32):
        b_shift += ((b_span >> b_shift) >= BINS).to(tl.int32)
    return b_shift
