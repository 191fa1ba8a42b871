"""Batched JAX fits vs the paper's scipy loop (massact.curves._scipy_recipe), in the same run.

Curves: drawn from Eq. 9 with 2% noise on Pythia-like steps (26-55 points), half "early peak",
half "log increase" (massact.curves._scipy_recipe.synthetic_curves); with --bench-real, also a
dataset's trajectories. Providers, per case:
- scipy_loop: the paper's recipe, scipy curve_fit(method="trf") looped over curves; the
  baseline. Timed on the first `scipy_n` curves (all of them for the paper-sized case), so the
  ratios compare time per curve.
- massact: fit_trajectories, warm (the first, cold call is not timed: its compile time is
  reported as compile_s).
- jaxopt_lm(...): jaxopt's LevenbergMarquardt on Eq. 14 from the paper's start, jitted and
  vmapped (the full CPU set only): the measured reason for the hand-written solver.
Quality: fraction of the scipy-fitted curves with SSE <= scipy SSE (1 + 1e-6) + 1e-12 SST
(massact must reach 1.0 on the CPU), R^2, curves not ok (`FitResult.ok`), at max iterations,
and past the first round (`FitResult.rounds`). bench/test_bench_fit_corpus.py runs the same
comparison on curves the fitter was not tuned on.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

from massact.curves._fit import fit_trajectories
from massact.curves._result import FitStatus
from massact.curves._scipy_recipe import reference_fit_batch, synthetic_curves

BASELINE = "scipy_loop"
# jaxopt LM settings compared: (maxiter, damping_parameter); jaxopt's default damping (1e-6)
# stops after one rejected step from the paper's start on about half of the curves
JAXOPT_SETTINGS = ((100, 1e-6), (100, 1e-2), (500, 1e-2), (500, 1.0))
SHOW = [
    "fits_per_s",
    "compile_s",
    "frac_sse_le_scipy",
    "mean_r2",
    "median_r2",
    "not_converged",
    "max_iterations",
    "frac_rounds_gt1",
    "beta_negative",
]


@dataclass(frozen=True)
class FitCase:
    device: str
    n_curves: int  # 0: all curves of the real dataset
    seed: int
    scipy_n: int  # curves the scipy loop is timed on (the first ones); 0: all
    rounds: int
    real: str | None = None  # a dataset root
    tile: bool = False  # n_curves made by tiling a 20,000-curve draw (GPU sizes)

    @property
    def id(self) -> str:
        return f"{self.device}-real" if self.real else f"{self.device}-{self.n_curves}"

    @property
    def label(self) -> str:
        if self.real:
            return f"real curves ({os.path.basename(os.path.normpath(self.real))})"
        return f"{self.n_curves:,} synthetic curves"


def cases(device: str, quick: bool, real: str | None = None) -> list[FitCase]:
    if device == "cuda":
        sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
        return [FitCase("cuda", n, 3, 20, 2, tile=True) for n in sizes]
    if quick:
        out = [FitCase("cpu", 188, 1, 48, 3), FitCase("cpu", 2000, 2, 48, 3)]
    else:
        out = [FitCase("cpu", 188, 1, 188, 3), FitCase("cpu", 20_000, 2, 100, 2)]
    if real:
        out.append(FitCase("cpu", 0, 0, 0, 3, real=real))
    return out


def jaxopt_cases(device: str, quick: bool, real: str | None = None) -> list[FitCase]:
    """The paper-sized case of the full CPU set, whose scipy fits cover every curve."""
    return [] if device != "cpu" or quick else cases(device, quick)[:1]


@functools.lru_cache(maxsize=4)
def _draw(n: int, seed: int) -> dict:
    return synthetic_curves(n, seed=seed)


@functools.lru_cache(maxsize=1)
def _load_real(root: str) -> dict:
    from massact import load_dataset, load_trajectories

    tr = load_trajectories(load_dataset(root))
    y = np.asarray(tr.y, dtype=np.float64)
    t = np.broadcast_to(np.asarray(tr.t, dtype=np.float64), y.shape)
    return {"t": np.ascontiguousarray(t), "y": y, "mask": np.asarray(tr.mask, bool)}


def curves(case: FitCase) -> dict:
    if case.real:
        return _load_real(case.real)
    if not case.tile:
        return _draw(case.n_curves, case.seed)
    d = _draw(min(case.n_curves, 20_000), case.seed)
    reps = -(-case.n_curves // d["y"].shape[0])
    return {k: np.tile(d[k], (reps, 1))[: case.n_curves] for k in ("t", "y", "mask")}


def scipy_subset(case: FitCase, d: dict) -> dict:
    n = d["y"].shape[0] if case.scipy_n == 0 else min(case.scipy_n, d["y"].shape[0])
    return {k: d[k][:n] for k in ("t", "y", "mask")}


_REFS: dict[FitCase, dict] = {}  # scipy's fits of a case's subset, this session


def reference(case: FitCase) -> dict:
    """scipy's fits of the case's subset: those of the scipy_loop benchmark when it ran."""
    if case not in _REFS:
        s = scipy_subset(case, curves(case))
        _REFS[case] = reference_fit_batch(s["t"], s["y"], s["mask"])
    return _REFS[case]


def quality(sse: np.ndarray, r2: np.ndarray, ref: dict) -> dict:
    """SSE within scipy's bound on the curves scipy fitted (the first len(ref) ones); R^2 over
    every curve given."""
    n = len(ref["sse"])
    bound = ref["sse"] * (1 + 1e-6) + 1e-12 * ref["sst"]
    fin = np.isfinite(ref["sse"])
    return {
        "frac_sse_le_scipy": float(np.mean(sse[:n][fin] <= bound[fin])),
        "scipy_compared": int(np.sum(fin)),
        "mean_r2": float(np.nanmean(r2)),
        "median_r2": float(np.nanmedian(r2)),
        "frac_r2_gt_0.9": float(np.mean(r2 > 0.9)),
    }


def _has_jax_gpu() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def fit_info(benchmark, group: str, case, provider: str, n: int, show: list, **extra) -> None:
    """The row metadata of a fitting benchmark (case: a label and a device; n curves)."""
    benchmark.group = group
    benchmark.extra_info.update(
        kernel="fit_trajectories",
        provider=provider,
        case=case.label,
        shape=[n],
        items=n,
        dtype="float64",
        device=case.device,
        baseline=BASELINE,
        show=show,
        **extra,
    )


def _info(benchmark, case: FitCase, provider: str, n: int, **extra) -> None:
    fit_info(benchmark, f"fit {case.id}", case, provider, n, SHOW, **extra)


@pytest.mark.parametrize("provider", [BASELINE, "massact"])
def test_bench_fit(benchmark, case, provider):
    if case.device == "cuda" and not _has_jax_gpu():
        pytest.skip("no GPU visible to JAX")
    d = curves(case)
    if provider == BASELINE:
        s = scipy_subset(case, d)
        n = s["y"].shape[0]
        _info(benchmark, case, provider, n)
        ref = benchmark.pedantic(
            reference_fit_batch, (s["t"], s["y"], s["mask"]), rounds=1, iterations=1
        )
        _REFS[case] = ref
        r2 = 1 - ref["sse"] / ref["sst"]
        benchmark.extra_info.update(
            fits_per_s=n / benchmark.stats.stats.median,
            mean_r2=float(np.nanmean(r2)),
            median_r2=float(np.nanmedian(r2)),
            not_converged=int(np.sum(~ref["ok"])),  # stopped at scipy's evaluation limit
        )
        return
    n = d["y"].shape[0]
    kw = {"chunk_size": 131072} if case.device == "cuda" else {}
    _info(benchmark, case, provider, n)
    first = fit_trajectories(d["t"], d["y"], d["mask"], **kw)  # cold: compiles
    benchmark.pedantic(
        fit_trajectories, (d["t"], d["y"], d["mask"]), kw, rounds=case.rounds, iterations=1
    )
    q = quality(first.sse, first.r2, reference(case))
    benchmark.extra_info.update(
        fits_per_s=n / benchmark.stats.stats.median,
        compile_s=first.compile_seconds,
        not_converged=int(np.sum(~first.ok())),
        max_iterations=int(np.sum(first.status == FitStatus.MAX_ITERATIONS)),
        frac_rounds_gt1=float(np.mean(first.rounds > 1)),  # curves past the first round
        status_counts=first.status_counts(),
        degenerate_params=int(np.sum(first.degenerate)),
        **q,
    )
    if case.device == "cpu":
        assert q["frac_sse_le_scipy"] == 1.0, q


def prepare_jaxopt(t, y, mask, maxiter: int, damping: float):
    """The owner's solver library as the fitter would use it most simply: jaxopt's
    LevenbergMarquardt on Eq. 14 from the paper's initial guess, jitted and vmapped, on the same
    normalised data (jaxopt has no bounds: beta >= 0 is not enforced, only counted).
    Returns (fn, args, y_scale): fn(*args) -> (params, sse) in normalised units; call it
    under jax.enable_x64(True)."""
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

    return jax.jit(jax.vmap(one)), (tn, yn, mask.astype(np.float64), p0), yr


@pytest.mark.parametrize("setting", JAXOPT_SETTINGS, ids=lambda s: f"{s[0]}-{s[1]:g}")
def test_bench_fit_jaxopt(benchmark, jaxopt_case, setting):
    import jax

    maxiter, damping = setting
    d = curves(jaxopt_case)
    n = d["y"].shape[0]
    _info(benchmark, jaxopt_case, f"jaxopt_lm(maxiter={maxiter},damping={damping:g})", n)
    fn, args, yr = prepare_jaxopt(d["t"], d["y"], d["mask"], maxiter, damping)
    with jax.enable_x64(True):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t_first = time.perf_counter() - t0
        p, sse = benchmark.pedantic(
            lambda: jax.block_until_ready(fn(*args)), rounds=3, iterations=1
        )
    ref = reference(jaxopt_case)
    sse = np.asarray(sse) * yr**2
    benchmark.extra_info.update(
        fits_per_s=n / benchmark.stats.stats.median,
        compile_s=t_first - benchmark.stats.stats.median,
        beta_negative=int(np.sum(np.asarray(p)[:, 0] < 0)),
        **quality(sse, 1 - sse / ref["sst"], ref),
    )
