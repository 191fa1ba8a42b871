"""pytest-benchmark of the layer statistics: ours vs the recipe, topk+kthvalue and a copy.

Every provider runs on the same input in the same session; the `ours` case also stores its
speed-up over each baseline (measured in this run) in extra_info, with GB/s (bytes read) and
the peak extra GPU memory. GPU cases are skipped without CUDA. The same code prints a markdown
table: `python -m bench.stats_report`.
"""

from __future__ import annotations

import pytest
import torch
from stats_report import (
    CPU_CASES,
    DTYPE_NAMES,
    GPU_DTYPES,
    GPU_SHAPES,
    PROVIDERS,
    input_bytes,
    make_input,
    measure,
    peak_extra_bytes,
    timed,
)

HAS_CUDA = torch.cuda.is_available()
CASES = [
    pytest.param("cuda", s, d, marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA"))
    for s in GPU_SHAPES
    for d in GPU_DTYPES
] + [pytest.param("cpu", s, d) for s, d in CPU_CASES]
_MEDIANS: dict[tuple, float] = {}  # (device, shape, dtype, provider) -> median seconds


def _id(x):
    if isinstance(x, tuple):
        return "x".join(map(str, x))
    return DTYPE_NAMES.get(x, str(x))


@pytest.mark.parametrize("provider", ["recipe", "topk_kthvalue", "copy", "ours"])
@pytest.mark.parametrize(("device", "shape", "dtype"), CASES, ids=_id)
def test_bench_layer_stats(benchmark, device, shape, dtype, provider):
    if provider == "copy" and device != "cuda":
        pytest.skip("copy ceiling: GPU only")
    h = make_input(shape, dtype, device)
    fn = PROVIDERS[provider]
    rounds = 3 if provider == "recipe" or device == "cpu" else 20
    benchmark.group = f"layer_stats {device} {_id(shape)} {_id(dtype)}"
    benchmark.pedantic(timed(fn, h), rounds=rounds, warmup_rounds=1, iterations=1)
    median = benchmark.stats.stats.median
    _MEDIANS[(device, shape, dtype, provider)] = median
    info = benchmark.extra_info
    info["gb_s_read"] = input_bytes(h) / median / 1e9
    info["peak_extra_bytes"] = peak_extra_bytes(fn, h)
    if provider != "ours":
        return
    for base in ("recipe", "topk_kthvalue", "copy"):
        if base == "copy" and device != "cuda":
            continue
        t = _MEDIANS.get((device, shape, dtype, base))
        if t is None:  # run alone (-k): measure the baseline here, same session
            t = measure(PROVIDERS[base], h, reps=3)["median_s"]
        info[f"x_{base}"] = t / median
    if device == "cpu" and dtype == torch.float32:  # the CPU target
        assert info["x_recipe"] >= 3.0, info
