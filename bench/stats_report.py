"""Layer-statistics benchmark: massact.layer_stats against the baselines, one result format.

Providers (all on the same tensor, same run):
- ours: massact.layer_stats (fused Triton kernels on CUDA, the fast torch path on CPU)
- recipe: the published recipe (Sun et al.), per sequence abs -> full sort -> torch.median
- topk_kthvalue: abs -> torch.topk + torch.kthvalue on the flattened slices
- copy: a device-to-device copy of the tensor (GPU only; the bandwidth ceiling; it also writes
  as many bytes as it reads)
GB/s is bytes read (the input's size) / median time. Peak extra memory (GPU) is
torch.cuda.max_memory_allocated during the call minus what was allocated before it.

Script mode prints a markdown table for bench/RESULTS.md:
    python -m bench.stats_report [--device cuda|cpu] [--reps 10] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch

import massact

K = 3
GPU_SHAPES = [(1, 2048, 512), (8, 2048, 4096), (10, 2048, 5120)]
GPU_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (shape, dtype) on CPU: the issue's target case and a smaller bf16 one
CPU_CASES = [((10, 2048, 512), torch.float32), ((4, 2048, 512), torch.bfloat16)]
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def ours(h: torch.Tensor):
    return massact.layer_stats(h, K)


def recipe(h: torch.Tensor):
    out = []
    for x in h.reshape(-1, *h.shape[-2:]):
        a = x.abs().flatten()
        out.append((a.sort(descending=True).values[:K], torch.median(a)))
    return out


def topk_kthvalue(h: torch.Tensor):
    a = h.abs().reshape(-1, h.shape[-2] * h.shape[-1])
    return a.topk(K, dim=-1), a.kthvalue((a.shape[-1] - 1) // 2 + 1, dim=-1)


def copy(h: torch.Tensor):
    return h.clone()


PROVIDERS: dict[str, Callable] = {
    "ours": ours,
    "recipe": recipe,
    "topk_kthvalue": topk_kthvalue,
    "copy": copy,
}


def providers_for(device: str) -> list[str]:
    return list(PROVIDERS) if device == "cuda" else ["ours", "recipe", "topk_kthvalue"]


def make_input(shape, dtype, device: str) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)
    h[..., 0, 7] = 300.0  # a massive activation, as in a real layer output
    return h


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, h: torch.Tensor) -> Callable[[], None]:
    """fn(h) that waits for the device, for pytest-benchmark and for measure()."""
    device = h.device.type

    def call() -> None:
        fn(h)
        sync(device)

    return call


def peak_extra_bytes(fn: Callable, h: torch.Tensor) -> int | None:
    if h.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(h)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(fn: Callable, h: torch.Tensor, reps: int = 5) -> dict:
    """Median and 20/80 percentiles of wall time (s) after one warm-up call, and peak memory."""
    call = timed(fn, h)
    call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return {
        "median_s": statistics.median(times),
        "p20_s": q[0],
        "p80_s": q[-1],
        "peak_extra_bytes": peak_extra_bytes(fn, h),
    }


def input_bytes(h: torch.Tensor) -> int:
    return h.numel() * h.element_size()


def run_case(shape, dtype, device: str, reps: int) -> list[dict]:
    """One row per provider, with ratios against every baseline measured in this call.

    Providers are timed in interleaved rounds (one call of each per round), so a change in
    the machine's load (shared CPUs) hits all of them alike.
    """
    h = make_input(shape, dtype, device)
    calls, errors = {}, {}
    for name in providers_for(device):
        call = timed(PROVIDERS[name], h)
        try:
            call()  # warm-up (compilation, caches)
            calls[name] = call
        except (RuntimeError, NotImplementedError) as err:  # e.g. an op without this dtype
            errors[name] = str(err).splitlines()[0]
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name in providers_for(device):
        row = {"provider": name, "shape": list(shape), "dtype": DTYPE_NAMES[dtype]}
        row["device"] = device
        if name in errors:
            row.update(median_s=math.nan, p20_s=math.nan, p80_s=math.nan, error=errors[name])
            row["peak_extra_bytes"] = None
        else:
            ts = sorted(times[name])
            q = statistics.quantiles(ts, n=5) if len(ts) > 1 else [ts[0]] * 4
            row.update(median_s=statistics.median(ts), p20_s=q[0], p80_s=q[-1])
            row["peak_extra_bytes"] = peak_extra_bytes(PROVIDERS[name], h)
        row["gb_s"] = input_bytes(h) / row["median_s"] / 1e9
        rows.append(row)
    t = {r["provider"]: r["median_s"] for r in rows}
    ours_row = rows[0]
    for base in ("recipe", "topk_kthvalue", "copy"):
        if base in t:
            # speed-up of ours over the baseline (for copy: the fraction of its bandwidth)
            ours_row[f"x_{base}"] = t[base] / ours_row["median_s"]
    return rows


def environment(device: str) -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
    return {
        "device": f"{device}: {name}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def markdown(rows: list[dict], env: dict) -> str:
    head = ", ".join(f"{k} {v}" for k, v in env.items())
    lines = [
        f"Layer statistics (k={K}); {head}",
        "",
        "| shape | dtype | provider | median ms | GB/s read | x recipe | x topk+kthvalue "
        "| of copy | peak extra MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x, fmt):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    for r in rows:
        peak = r.get("peak_extra_bytes")
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['provider']} | {f(r['median_s'] * 1e3, '.3f')} "
            f"| {f(r['gb_s'], '.3g')} | {f(r.get('x_recipe'), '.1f')} "
            f"| {f(r.get('x_topk_kthvalue'), '.2f')} | {f(r.get('x_copy'), '.0%')} "
            f"| {f(None if peak is None else peak / 2**20, '.2f')} |"
        )
    return "\n".join(lines)


def cases(device: str, quick: bool) -> list[tuple]:
    if device == "cuda":
        out = [(s, d) for s in GPU_SHAPES for d in GPU_DTYPES]
        return out[:3] if quick else out
    return CPU_CASES[:1] if quick else CPU_CASES


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if any")
    p.add_argument("--reps", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--quick", action="store_true", help="first cases only")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    rows = []
    for shape, dtype in cases(device, args.quick):
        rows += run_case(shape, dtype, device, args.reps)
    print(markdown(rows, environment(device)))


if __name__ == "__main__":
    main()
