"""What the Triton kernels cost on the benchmark shapes, from the launch plan (no GPU needed):
bytes read per call against the input's size, extra memory, launches; and, at the smallest bench
shape, that random data takes the common path (one read of the input) under the interpreter.

The design before this one read the input twice (bf16/fp16) or three times (fp32) and made
about ten launches per call.
"""

from __future__ import annotations

import pytest
import torch
from _cases import DTYPE_IDS, DTYPES, INTERPRET, assert_stats_equal
from massact.kernels.layer_stats import LaunchTrace, cuda_launch_config, plan, triton_layer_stats

from massact import reference_layer_stats

BENCH_SHAPES = [(1, 2048, 512), (8, 2048, 4096), (10, 2048, 5120)]
SM_COUNT = 132  # H100 / H200
MAX_READ = 1.05  # bytes read by the launched kernels / input bytes
# fp32 slices of 2**20 values: a sample large enough for a median buffer within 1% of the input
# is a third of the slice (read again by the pass: from L2, the input is 4 MiB)
SMALL_FP32_READ = 1.45


def bench_plan(shape: tuple[int, ...], dtype: torch.dtype):
    programs, tile, _ = cuda_launch_config(SM_COUNT)
    h = torch.empty(shape, dtype=dtype, device="meta")
    return plan(shape, h.stride(), dtype, 3, programs=programs, tile=tile)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", BENCH_SHAPES, ids=["x".join(map(str, s)) for s in BENCH_SHAPES])
def test_one_read_of_the_input(shape, dtype):
    p = bench_plan(shape, dtype)
    read = p.read_bytes() / p.input_bytes
    from_hbm = p.read_bytes(l2_resident=True) / p.input_bytes
    print(f"{shape} {dtype}: read {read:.4f}x, from HBM {from_hbm:.4f}x, launches {p.launches}")
    assert p.launches <= 3
    assert from_hbm <= MAX_READ
    if dtype == torch.float32 and shape[-2] * shape[-1] <= 2**20:
        assert read <= SMALL_FP32_READ
    else:
        assert read <= MAX_READ


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", BENCH_SHAPES, ids=["x".join(map(str, s)) for s in BENCH_SHAPES])
def test_extra_memory_and_distinct_samples(shape, dtype):
    p = bench_plan(shape, dtype)
    assert p.scratch_bytes <= 0.01 * p.input_bytes
    # the sampled chunks are distinct cells of the slice (the top-k threshold counts on it)
    assert p.sample_chunks <= p.sample_cells
    assert torch.gcd(torch.tensor(p.sample_step), torch.tensor(p.sample_cells)).item() == 1


@pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_common_path_at_bench_size(dtype):
    """[1, 2048, 512] of random values, plan sizes of that shape: the sample brackets the median
    and the candidates fit (STATUS 0), exact."""
    h = torch.randn(1, 2048, 512, generator=torch.Generator().manual_seed(0)).to(dtype)
    trace = LaunchTrace()
    got = triton_layer_stats(h, 3, trace=trace)
    assert trace.status.tolist() == [0]
    assert_stats_equal(got, reference_layer_stats(h, 3))
