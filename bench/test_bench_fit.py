"""Batched JAX fits vs the paper's scipy loop (massact.curves._scipy_recipe), in the same run.

pytest bench/test_bench_fit.py            (pytest-benchmark; ratios in extra_info)
python bench/test_bench_fit.py [--quick] [--real DATASET_ROOT] [--jaxopt]  (markdown tables)

Sets: curves drawn from Eq. 9 with 2% noise on Pythia-like steps, half "early peak", half
"log increase" (massact.curves._scipy_recipe.synthetic_curves). Speed: 188 curves of 26-55 points
(the paper's size) and 20,000 curves (scipy timed on a subset and scaled). Quality: fraction
of curves with SSE <= scipy SSE (1 + 1e-6) + 1e-12 SST, and mean R^2 of both.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import pytest

from massact.curves._fit import fit_trajectories
from massact.curves._scipy_recipe import reference_fit_batch, synthetic_curves

SCIPY_SUBSET = 100  # scipy curves timed for the 20,000-curve ratio
# jaxopt LM settings compared: (maxiter, damping_parameter); jaxopt's default damping (1e-6)
# stops after one rejected step from the paper's start on about half of the curves
JAXOPT_SETTINGS = ((100, 1e-6), (100, 1e-2), (500, 1e-2), (500, 1.0))


def fit_jaxopt(t, y, mask, maxiter: int, damping: float) -> dict:
    """The owner's solver library as the fitter would use it most simply: jaxopt's
    LevenbergMarquardt on Eq. 14 from the paper's initial guess, jitted and vmapped, on the same
    normalised data (jaxopt has no bounds: beta >= 0 is not enforced, only counted).
    Returns sse (data units), beta_negative, compile_s, run_s."""
    import jax
    import jax.numpy as jnp
    import jaxopt

    from massact.curves._formulas import jcurve_reparam, to_reparam
    from massact.curves._scipy_recipe import normalise, paper_guess

    N = y.shape[0]
    tn, yn = np.zeros(y.shape), np.zeros(y.shape)
    p0, yr = np.zeros((N, 5)), np.zeros(N)
    for i in range(N):
        m = mask[i]
        tn[i, m], yn[i, m], scale = normalise(t[i, m], y[i, m])
        p0[i], yr[i] = to_reparam(paper_guess(tn[i, m], yn[i, m])), scale[3]

    def one(tn, yn, w, p0):
        def residual(p):
            return w * (jcurve_reparam(tn, p) - yn)

        solver = jaxopt.LevenbergMarquardt(
            residual, maxiter=maxiter, damping_parameter=damping, solver="cholesky",
            materialize_jac=True, tol=1e-12, xtol=1e-12, gtol=1e-12,
        )  # fmt: skip
        p = solver.run(p0).params
        return p, jnp.sum(residual(p) ** 2)

    with jax.enable_x64(True):
        fn = jax.jit(jax.vmap(one))
        args = (tn, yn, mask.astype(np.float64), p0)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        p, sse = jax.block_until_ready(fn(*args))
        t_run = time.perf_counter() - t0
    return {
        "sse": np.asarray(sse) * yr**2,
        "beta_negative": int(np.sum(np.asarray(p)[:, 0] < 0)),
        "compile_s": t_first - t_run,
        "run_s": t_run,
    }


def measure_jaxopt(n_curves: int = 188, *, seed: int = 1) -> list[dict]:
    """jaxopt's LM (paper's start) against the scipy recipe and ours, same curves, same run."""
    d = synthetic_curves(n_curves, seed=seed)
    ref = reference_fit_batch(d["t"], d["y"], d["mask"])
    ours = fit_trajectories(d["t"], d["y"], d["mask"])
    bound = ref["sse"] * (1 + 1e-6) + 1e-12 * ref["sst"]
    rows = []
    for maxiter, damping in JAXOPT_SETTINGS:
        jo = fit_jaxopt(d["t"], d["y"], d["mask"], maxiter, damping)
        r2 = 1 - jo["sse"] / ref["sst"]
        rows.append(
            {
                "curves": n_curves,
                "provider": f"jaxopt LM, paper's start, maxiter {maxiter}, damping {damping:g}",
                "frac_sse_le_scipy": float(np.mean(jo["sse"] <= bound)),
                "median_r2": float(np.nanmedian(r2)),
                "frac_r2_gt_0.9": float(np.mean(r2 > 0.9)),
                "beta_negative": jo["beta_negative"],
                "run_s": jo["run_s"],
                "compile_s": jo["compile_s"],
            }
        )
    r2 = ours.r2
    rows.append(
        {
            "curves": n_curves,
            "provider": "massact fit_trajectories",
            "frac_sse_le_scipy": float(np.mean(ours.sse <= bound)),
            "median_r2": float(np.nanmedian(r2)),
            "frac_r2_gt_0.9": float(np.mean(r2 > 0.9)),
            "beta_negative": int(np.sum(ours.reparam[:, 0] < 0)),
            "run_s": fit_trajectories(d["t"], d["y"], d["mask"]).run_seconds,
            "compile_s": ours.compile_seconds,
        }
    )
    return rows


def _quality(fit, ref) -> dict:
    bound = ref["sse"] * (1 + 1e-6) + 1e-12 * ref["sst"]
    fin = np.isfinite(ref["sse"])
    return {
        "frac_sse_le_scipy": float(np.mean(fit.sse[fin] <= bound[fin])),
        "mean_r2_ours": float(np.nanmean(fit.r2)),
        "mean_r2_scipy": float(np.nanmean(1 - ref["sse"] / ref["sst"])),
        "scipy_not_converged": int(np.sum(~ref["ok"])),
        "ours_not_ok": int(np.sum(~fit.ok())),
    }


def measure_real(root, *, repeat: int = 3) -> dict:
    """The same figures on a real dataset's trajectories (e.g. the mini-suite's "fast" preset)."""
    from massact import load_dataset, load_trajectories

    tr = load_trajectories(load_dataset(root))
    t0 = time.perf_counter()
    ref = reference_fit_batch(tr.t, tr.y, tr.mask)
    t_scipy = time.perf_counter() - t0
    first = fit_trajectories(tr.t, tr.y, tr.mask)
    runs = [fit_trajectories(tr.t, tr.y, tr.mask).run_seconds for _ in range(repeat)]
    out = {
        "curves": tr.y.shape[0],
        "scipy_s": t_scipy,
        "scipy_ms_per_curve": 1e3 * t_scipy / tr.y.shape[0],
        "ours_s": min(runs),
        "compile_s": first.compile_seconds,
        "speedup": t_scipy / min(runs),
        "fits_per_s": tr.y.shape[0] / min(runs),
    }
    out.update(_quality(first, ref))
    out["degenerate_params"] = int(np.sum(first.degenerate))
    return out


def measure(n_curves: int, *, seed: int = 1, scipy_subset: int | None = None, repeat: int = 3):
    """Time scipy (all curves, or a subset scaled up) and ours (warm, best of `repeat`)."""
    d = synthetic_curves(n_curves, seed=seed)
    sub = slice(None) if scipy_subset is None else slice(0, scipy_subset)
    t0 = time.perf_counter()
    ref = reference_fit_batch(d["t"][sub], d["y"][sub], d["mask"][sub])
    t_scipy = (time.perf_counter() - t0) * n_curves / len(ref["sse"])
    first = fit_trajectories(d["t"], d["y"], d["mask"])
    runs = [first.run_seconds]
    for _ in range(repeat - 1):
        runs.append(fit_trajectories(d["t"], d["y"], d["mask"]).run_seconds)
    fit = first
    sub_fit = _Sub(fit, sub)
    out = {
        "curves": n_curves,
        "scipy_s": t_scipy,
        "scipy_ms_per_curve": 1e3 * t_scipy / n_curves,
        "ours_s": min(runs),
        "compile_s": first.compile_seconds,
        "speedup": t_scipy / min(runs),
        "fits_per_s": n_curves / min(runs),
    }
    out.update(_quality(sub_fit, ref))
    return out


class _Sub:
    """The rows of a FitResult that scipy also fitted."""

    def __init__(self, fit, sub):
        self.sse, self.r2, self._ok = fit.sse[sub], fit.r2[sub], fit.ok()[sub]

    def ok(self):
        return self._ok


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ---------------------------------------------------------------- pytest-benchmark


def _record(benchmark, res):
    benchmark.extra_info.update({k: v for k, v in res.items()})
    benchmark.extra_info["load_avg"] = _load()


def test_fit_188_curves(benchmark):
    d = synthetic_curves(188, seed=1)
    res = measure(188, repeat=1)
    _record(benchmark, res)
    benchmark.pedantic(fit_trajectories, (d["t"], d["y"], d["mask"]), rounds=3, iterations=1)
    benchmark.extra_info["speedup_benchmark_median"] = res["scipy_s"] / benchmark.stats["median"]
    assert res["frac_sse_le_scipy"] == 1.0


def test_fit_20000_curves(benchmark):
    d = synthetic_curves(20000, seed=2)
    res = measure(20000, seed=2, scipy_subset=SCIPY_SUBSET, repeat=1)
    _record(benchmark, res)
    benchmark.pedantic(fit_trajectories, (d["t"], d["y"], d["mask"]), rounds=1, iterations=1)
    assert res["frac_sse_le_scipy"] == 1.0


def _has_gpu() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def test_fit_jaxopt_baseline(benchmark):
    """The measured reason for the hand-written solver: jaxopt's LM from the paper's start."""
    rows = benchmark.pedantic(measure_jaxopt, rounds=1, iterations=1)
    for r in rows:
        benchmark.extra_info[r["provider"]] = {k: v for k, v in r.items() if k != "provider"}
    assert rows[-1]["frac_sse_le_scipy"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="no GPU visible to JAX")
@pytest.mark.parametrize("n_curves", [10_000, 100_000, 1_000_000])
def test_fit_gpu_fits_per_second(benchmark, n_curves):
    d = synthetic_curves(min(n_curves, 20_000), seed=3)
    reps = -(-n_curves // d["y"].shape[0])
    t, y, m = (np.tile(d[k], (reps, 1))[:n_curves] for k in ("t", "y", "mask"))
    first = fit_trajectories(t, y, m, chunk_size=131072)
    fit = benchmark.pedantic(
        fit_trajectories, (t, y, m), {"chunk_size": 131072}, rounds=2, iterations=1
    )
    benchmark.extra_info.update(
        fits_per_s=n_curves / fit.run_seconds, compile_s=first.compile_seconds
    )


# ---------------------------------------------------------------- script mode


def _table(rows: list[dict]) -> None:
    keys = list(rows[-1])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    print(f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); "
          f"load avg {_load()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    rows = [
        measure(188, repeat=3),
        measure(2000 if quick else 20000, seed=2, scipy_subset=SCIPY_SUBSET, repeat=3),
    ]
    if "--real" in argv:
        rows.append(measure_real(argv[argv.index("--real") + 1]))
    _table(rows)
    if "--jaxopt" in argv:
        print()
        _table(measure_jaxopt())
    print(f"load avg after: {_load()}")


if __name__ == "__main__":
    main(sys.argv[1:])
