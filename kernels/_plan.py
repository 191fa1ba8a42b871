"""The launch plan of the layer-stats kernels: block sizes, sample sizes, buffer capacities and
the scratch layout, computed from shapes alone (no device access), plus what it costs.

Why these sizes. The pass reads every element once and finds the median exactly only if it knows,
before reading, a bracket of bit patterns that holds the median rank:
- bf16/fp16: a window of WINDOW_16 consecutive patterns centred on a pilot sample's median is
  counted exactly (one counter per pattern): 1024 patterns are 8 binades of bf16, 1 of fp16.
- fp32: patterns are too many to count one by one, so the pass keeps the elements whose pattern
  lies in a bracket [lo, hi] taken from a larger sample: the bracket holds about
  Z_SAMPLE / sqrt(m) of the slice for a sample of m elements, and that must fit the median
  buffer (MEMORY_SHARE of the input's bytes). Hence m = (HEADROOM * Z_SAMPLE * n / cap)^2:
  about 3% of a [2048, 4096] slice, a third of a [2048, 512] one.
- top-k: candidates above t, the (k+2)-th largest sampled value (at least k + 2 elements are
  >= t); about n * (k + 2) / m of them, sized to TOP_SLACK times fewer than the buffer holds.
The sample reads whole 32-byte sectors (CHUNK_BYTES contiguous bytes per sampled position).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_K = 64  # the top-k merge keeps K keys in registers
MAX_N = 2**31 - 1  # counters and flat indices are int32

CHUNK_BYTES = 32  # one DRAM sector per sampled position
PILOT_CHUNKS = 32  # pilot sample: 256 fp32 / 512 bf16 values (fp32: re-read by every program)
SAMPLE_BLOCK = 4096  # values per sample program
WINDOW_16 = 1024  # counted patterns around the median (bf16/fp16)
WINDOW_32 = 1024  # bins over the fp32 bracket (locate the median's bin before the buffer scan)
SAMPLE_BINS_32 = 1024  # bins of the fp32 sample histogram over the pilot window
NSUB_32 = 16  # fp32 median sub-buffers: spreads the append atomics over 16 counters
Z_PILOT = 4.0  # pilot window: median rank +- Z_PILOT standard deviations of the pilot rank
Z_SAMPLE = 3.5  # fp32 bracket: +- 3.5 sd, a miss (one slice in ~2000) runs the fallback
HEADROOM = 1.25  # median buffer / expected bracket size
TOP_SLACK = 6  # candidate buffer / expected candidates (k = 3: overflow below 1e-5)
MEMORY_SHARE = 0.0099  # extra device memory / input bytes, all scratch included
RADIX_BITS = tl.constexpr(10)  # bits per radix level (pilot, exact finish, fallback)
RADIX_BINS = tl.constexpr(2**10)

# scratch header, int32 words per slice (then the sub-buffer counts and the histograms)
N_REAL = tl.constexpr(0)  # real elements (pass)
BELOW = tl.constexpr(1)  # real elements below the pass window (pass)
GT = tl.constexpr(2)  # candidates: elements above t (pass)
AT_LO = tl.constexpr(3)  # fp32: elements equal to the window's lowest pattern (not buffered)
PASS_DONE = tl.constexpr(4)  # pass programs finished
SAMPLE_DONE = tl.constexpr(5)  # sample programs finished
SAMPLE_TOTAL = tl.constexpr(6)  # real sampled values (fp32)
SAMPLE_BELOW = tl.constexpr(7)  # sampled values below the pilot window (fp32)
WIN_LO = tl.constexpr(8)  # pass window: lowest pattern
WIN_HI = tl.constexpr(9)  # pass window: highest pattern
WIN_SHIFT = tl.constexpr(10)  # pass window: bin = (pattern - lo) >> shift
THRESHOLD = tl.constexpr(11)  # t: top-k candidates are > t (ties at t: the finish's scan)
STATUS = tl.constexpr(12)  # which path each statistic took (flags below)
SUB_COUNTS = tl.constexpr(16)  # NSUB median sub-buffer fill counts
HEADER_WORDS = 32

# STATUS flags: 0 = the one-read path answered everything
MEDIAN_FALLBACK = tl.constexpr(1)  # median outside the window/bracket: radix over the slice
BUFFER_OVERFLOW = tl.constexpr(2)  # fp32 median buffer overflowed: radix over the slice
TOPK_FALLBACK = tl.constexpr(4)  # candidates overflowed or too few: top-k scan of the slice
TIE_SCAN = tl.constexpr(8)  # fewer than k above t: ordered scan for the ties at t
EMPTY_SLICE = tl.constexpr(16)  # no real token


def supported(n: int, k: int) -> bool:
    """Whether the kernels take slices of n = S * d values with this k."""
    return 1 <= k <= MAX_K and n <= MAX_N


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def cuda_launch_config(sm_count: int) -> tuple[int, int, int]:
    """(pass programs, elements per tile, warps) on a GPU with sm_count SMs.

    4 values per thread and tile (1024 with 8 warps: 16-byte loads of fp32, 8-byte of bf16):
    the pass kernel, its finish included, then fits in 64 registers without spills.
    """
    return 8 * sm_count, 1024, 8


# The oldest Triton the kernels run on: 3.4 and later interpret them and compile them for sm_90;
# 3.3 and earlier lack tl.histogram's mask (3.1 and earlier reject the constexpr arguments too).
OLDEST_TRITON = (3, 4)


@functools.cache
def triton_release(triton_version: str) -> tuple[int, int]:
    """(major, minor) of a Triton version string such as "3.9.0" or "3.10.0+git1a2b3c"."""
    major, minor = (int(part) for part in re.findall(r"\d+", triton_version)[:2])
    return major, minor


def ballot_histogram(triton_version: str) -> bool:
    """Whether this Triton release lowers `tl.histogram` to warp ballots (before 3.8): per element
    log2(bins) ballots plus bins / 32 masked popcounts per thread, about 12 warp instructions per
    element for the pass's 1024 bins, where 3.8 and later issue one shared-memory atomic. The pass
    then also spills at 64 registers (tests/test_kernels_compile.py measures both)."""
    return triton_release(triton_version) < (3, 8)


def launch_config(device: torch.device) -> tuple[int, int, int]:
    """(pass programs, elements per tile, warps) for tensors on device (the interpreter: small)."""
    if device.type == "cuda":
        return cuda_launch_config(_sm_count(device.index or 0))
    return 4, 2048, 1


@dataclass(frozen=True)
class Plan:
    """Sizes of one call over B slices of [S, D] (see the module docstring for the why)."""

    B: int
    S: int
    D: int
    k: int
    elem_bytes: int
    # pass tiling: tiles [block_s, block_d], `tiles` per program, nb programs per slice
    block_s: int
    block_d: int
    tiles: int
    nb: int
    nbd: int
    along_d: bool  # d is the contiguous axis (samples are chunks of a token's channels)
    # sample: chunks of `chunk` contiguous values at low-discrepancy positions
    chunk: int
    pilot_chunks: int
    sample_chunks: int
    chunks_per_program: int
    sample_programs: int
    # histograms and buffers, per slice
    window: int  # pass histogram bins
    sample_bins: int  # fp32 sample histogram bins (0: bf16/fp16 need none)
    nsub: int  # median sub-buffers (0: none)
    cap_median: int  # median buffer entries (int32), all sub-buffers
    cap_top: int  # candidate buffer entries (pattern + index, 2 x int32)
    z_pilot: float
    z_sample: float

    @property
    def fp32(self) -> bool:
        return self.elem_bytes == 4

    @property
    def sample_cells(self) -> int:
        """Chunk positions of a slice: rows across the contiguous axis x chunks along it."""
        rows, length = (self.S, self.D) if self.along_d else (self.D, self.S)
        return rows * triton.cdiv(length, self.chunk)

    @property
    def sample_step(self) -> int:
        """Stride of the sample over the cells: coprime to their count (a permutation), close to
        count / golden ratio (consecutive chunks land far apart, and evenly)."""
        cells = self.sample_cells
        step = max(1, round(cells * 0.6180339887498949))
        while math.gcd(step, cells) != 1:
            step += 1
        return step

    @property
    def kp(self) -> int:
        return triton.next_power_of_2(self.k)

    @property
    def ks(self) -> int:
        """Sampled values each sample program keeps: t is the (k+2)-th largest of them all."""
        return triton.next_power_of_2(self.k + 2)

    @property
    def sample_top_offset(self) -> int:
        """Scratch word of the per-sample-program top-k values (then the histograms)."""
        return HEADER_WORDS

    @property
    def window_offset(self) -> int:
        return self.sample_top_offset + _round(self.sample_programs * self.ks)

    @property
    def sample_bins_offset(self) -> int:
        return self.window_offset + self.window

    @property
    def scratch_words(self) -> int:
        """int32 words per slice of the zeroed scratch."""
        return _round(self.sample_bins_offset + self.sample_bins)

    @property
    def buffer_words(self) -> int:
        """int32 words per slice of the (unzeroed) buffers: median, candidate patterns, indices."""
        return self.cap_median + 2 * self.cap_top

    @property
    def scratch_bytes(self) -> int:
        """Extra device memory of one call (outputs not counted)."""
        return 4 * self.B * (self.scratch_words + self.buffer_words)

    @property
    def input_bytes(self) -> int:
        return self.B * self.S * self.D * self.elem_bytes

    @property
    def launches(self) -> int:
        """Kernel launches of one call: the scratch fill, the sample, the pass (finish inside)."""
        return 3

    def read_bytes(self, l2_resident: bool = False) -> int:
        """Bytes the launched kernels read in the common path (no fallback), upper bounds.

        l2_resident: count the sample's sectors once (the pass re-reads them from L2), as on a
        GPU whose L2 holds the sampled sectors between the two launches.
        """
        sector = CHUNK_BYTES
        pilot_reads = self.pilot_chunks * (self.sample_programs if self.fp32 else 1)
        sample = self.B * sector * (self.sample_chunks + pilot_reads)
        sample += self.B * 4 * (self.sample_programs * self.ks + self.sample_bins)  # last program
        finish = self.B * 4 * (HEADER_WORDS + self.window + self.cap_median + 2 * self.cap_top)
        if l2_resident:
            sample = self.B * sector * self.pilot_chunks + self.B * 4 * self.sample_bins
        return self.input_bytes + sample + finish


def _round(words: int, to: int = 32) -> int:
    return -(-words // to) * to


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


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
    cap_median: int | None = None,
    cap_top: int | None = None,
    sample_chunks: int | None = None,
    chunks_per_program: int | None = None,
    window: int | None = None,
    z_pilot: float = Z_PILOT,
    z_sample: float = Z_SAMPLE,
) -> Plan:
    """The Plan for h of `shape`/`strides` (no device access).

    programs: about how many pass programs to launch (a few per SM); tile: elements per tile;
    block_d / tiles: force the tile width and tiles per program; cap_median / cap_top /
    sample_chunks / chunks_per_program / window / z_*: force buffer, sample and window sizes
    (tests use tiny ones to reach every path).
    """
    S, D = shape[-2], shape[-1]
    B = math.prod(shape[:-2])
    n = S * D
    esize = torch.empty((), dtype=dtype).element_size()
    stride_s, stride_d = strides[-2], strides[-1]
    along_d = abs(stride_d) <= abs(stride_s) or D == 1
    if block_d is None:  # the contiguous axis is the wide side of the tile
        if along_d:
            block_d = min(triton.next_power_of_2(D), 1024, tile)
        else:
            block_d = max(1, tile // min(triton.next_power_of_2(S), 1024))
    block_s = max(1, tile // block_d)
    nbd = triton.cdiv(D, block_d)
    tiles_s = triton.cdiv(S, block_s)
    if tiles is None:  # rounded up so the grid stays within `programs` (one resident wave)
        tiles = max(1, min(tiles_s, triton.cdiv(B * tiles_s * nbd, max(1, programs))))
    nb = triton.cdiv(tiles_s, tiles) * nbd

    fp32 = esize == 4
    contiguous_len = D if along_d else S
    chunk = min(CHUNK_BYTES // esize, triton.next_power_of_2(contiguous_len))
    window = window or (WINDOW_32 if fp32 else WINDOW_16)
    sample_bins = SAMPLE_BINS_32 if fp32 else 0
    nsub = min(NSUB_32, _pow2_floor(nb)) if fp32 else 0  # programs share sub-buffers
    budget = MEMORY_SHARE * n * esize  # bytes per slice
    cells = S * triton.cdiv(D, chunk) if along_d else D * triton.cdiv(S, chunk)
    ks = triton.next_power_of_2(k + 2)
    forced = dict(top=cap_top, median=cap_median, chunks=sample_chunks, cpp=chunks_per_program)
    programs_s = 1
    for _ in range(4):  # the sample programs' top-k words shrink the median buffer: settle
        fixed = 4 * (HEADER_WORDS + _round(programs_s * ks) + window + sample_bins)
        cap_top = forced["top"]
        if cap_top is None:
            share = 0.05 if fp32 else 1.0  # fp32: the median buffer takes the rest
            cap_top = min(4096, max(64, _pow2_floor(share * (budget - fixed) / 8)))
        cap_median = forced["median"]
        if cap_median is None:
            cap_median = int((budget - fixed - 8 * cap_top) / 4) if fp32 else 0
        if fp32:
            # small slices: room for all of it (the 1% rule is about large inputs)
            if forced["median"] is None:
                cap_median = max(min(n, 4096), cap_median)
            cap_median = -(-cap_median // nsub) * nsub
        sample_chunks = forced["chunks"]
        if sample_chunks is None:
            values = TOP_SLACK * n * (k + 2) / cap_top
            if fp32:
                values = max(values, (HEADROOM * z_sample * n / cap_median) ** 2)
            sample_chunks = max(1, min(cells, math.ceil(values / chunk)))
        chunks_per_program = forced["cpp"]
        if chunks_per_program is None:
            chunks_per_program = min(SAMPLE_BLOCK // chunk, triton.next_power_of_2(sample_chunks))
        programs_s = triton.cdiv(sample_chunks, chunks_per_program)
    if fp32 and forced["median"] is None:  # the last round's programs: within the budget still
        fixed = 4 * (HEADER_WORDS + _round(programs_s * ks) + window + sample_bins)
        over = 4 * cap_median + 8 * cap_top + fixed - budget
        if over > 0:
            floor = -(-min(n, 4096) // nsub) * nsub
            cap_median = max(floor, cap_median - -(-int(over) // (4 * nsub)) * nsub)
    if min(cap_top, sample_chunks, chunks_per_program) < 1 or cap_median < 0:
        raise ValueError(
            f"plan: buffer and sample sizes must be positive, got cap_top={cap_top}, "
            f"cap_median={cap_median}, sample_chunks={sample_chunks}"
        )
    return Plan(
        B=B,
        S=S,
        D=D,
        k=k,
        elem_bytes=esize,
        block_s=block_s,
        block_d=block_d,
        tiles=tiles,
        nb=nb,
        nbd=nbd,
        along_d=along_d,
        chunk=chunk,
        pilot_chunks=PILOT_CHUNKS,
        sample_chunks=sample_chunks,
        chunks_per_program=chunks_per_program,
        sample_programs=programs_s,
        window=window,
        sample_bins=sample_bins,
        nsub=nsub,
        cap_median=cap_median,
        cap_top=cap_top,
        z_pilot=z_pilot,
        z_sample=z_sample,
    )
