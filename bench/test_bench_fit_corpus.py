"""The fitter on curves nobody tuned it for: the benchmark corpus (massact.curves._corpus) and
real mini-suite trajectories, against the paper's scipy loop timed in the same run.

Sets (`CORPUS_SETS`): the issue-11 mix (1-5% multiplicative noise, 26-82 checkpoints,
magnitudes 5-3,000, half early peaks with large lam and gamma, half log increases), noise
0.5% and 10% multiplicative and additive, sparse (8-20) and dense (120-154) checkpoint subsets
of the Pythia grid, early peaks, log increases, monotone decays, nearly flat curves,
magnitudes 1 to 1e4, outliers; plus "real": every trajectory of a dataset (--bench-real
DATASET_ROOT; else the mini-suite trained here, the "fast" preset, "tiny" with --bench-quick),
of both statistics (mean of ratios, ratio of means). Providers per set:

- scipy_loop: the paper's recipe looped over every curve of the set; the baseline.
- massact: fit_trajectories, warm (compile_s: the cold call's compile time).

Per set (extra_info, shown in RESULTS.md): frac_within_scipy (share of the curves scipy fits
with SSE <= SSE_scipy (1 + 1e-6) + 1e-12 SST), frac_max_iter, frac_not_converged, rounds
(mean rounds per curve; frac_rounds_gt1 went past the first), fits_per_s, ms_per_curve;
"x baseline" is the speedup. On the CPU every set must have frac_within_scipy == 1 and
frac_max_iter <= 0.01 (issue 11).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

from massact.curves import CORPUS_SETS, corpus_curves
from massact.curves._fit import fit_trajectories
from massact.curves._result import FitStatus
from massact.curves._scipy_recipe import reference_fit_batch

from .test_bench_fit import BASELINE, fit_info

SHOW = [
    "fits_per_s",
    "ms_per_curve",
    "frac_within_scipy",
    "frac_max_iter",
    "frac_not_converged",
    "frac_rounds_gt1",
    "compile_s",
]
QUICK_SIZE = 48  # curves per set with --bench-quick


@dataclass(frozen=True)
class CorpusCase:
    device: str
    name: str  # a CORPUS_SETS name or "real"
    n_curves: int  # 0: every curve of the real dataset
    seed: int = 0
    rounds: int = 3  # timed calls of the massact fit
    real: str | None = None  # a dataset root; None: the mini-suite trained for this run
    quick: bool = False

    @property
    def id(self) -> str:
        return f"{self.device}-{self.name}"

    @property
    def label(self) -> str:
        return f"corpus {self.name}"


def cases(device: str, quick: bool, real: str | None = None) -> list[CorpusCase]:
    if device != "cpu":  # the GPU sizes are bench/test_bench_fit.py's
        return []
    out = [
        CorpusCase("cpu", name, QUICK_SIZE if quick else spec.size, quick=quick)
        for name, spec in CORPUS_SETS.items()
    ]
    return out + [CorpusCase("cpu", "real", 0, real=real, quick=quick)]


@pytest.fixture(scope="session")
def mini_suite_root(tmp_path_factory):
    """A mini-suite dataset trained for this run (used when --bench-real is not given)."""
    cache: dict[str, str] = {}

    def root(quick: bool) -> str:
        preset = "tiny" if quick else "fast"
        if preset not in cache:
            from massact import train_mini_suite

            out = tmp_path_factory.mktemp(f"mini-{preset}")
            cache[preset] = str(train_mini_suite(out, preset=preset, progress=False))
        return cache[preset]

    return root


@functools.lru_cache(maxsize=2)
def _load_real(root: str) -> dict:
    from massact import load_dataset, load_trajectories

    ds = load_dataset(root)
    parts = [load_trajectories(ds, stat=s) for s in ("ratio", "ratio_of_means")]
    n = max(p.y.shape[1] for p in parts)
    out = {k: [] for k in ("t", "y", "mask")}
    for p in parts:
        y = np.asarray(p.y, np.float64)
        t = np.broadcast_to(np.asarray(p.t, np.float64), y.shape)
        pad = ((0, 0), (0, n - y.shape[1]))
        out["t"].append(np.pad(t, pad))
        out["y"].append(np.pad(y, pad, constant_values=np.nan))
        out["mask"].append(np.pad(np.asarray(p.mask, bool), pad))
    return {k: np.concatenate(v) for k, v in out.items()}


def curves(case: CorpusCase, mini_suite_root) -> dict:
    if case.name == "real":
        return _load_real(case.real or mini_suite_root(case.quick))
    return corpus_curves(case.name, case.n_curves, seed=case.seed)


_REFS: dict[CorpusCase, dict] = {}  # scipy's fits of a case, this session


def reference(case: CorpusCase, d: dict) -> dict:
    if case not in _REFS:
        _REFS[case] = reference_fit_batch(d["t"], d["y"], d["mask"])
    return _REFS[case]


def _info(benchmark, case: CorpusCase, provider: str, n: int) -> None:
    fit_info(benchmark, f"fit corpus {case.id}", case, provider, n, SHOW)


def quality(fit, ref: dict) -> dict:
    """The issue's figures for one set: SSE within scipy's bound (over the curves scipy
    fitted), statuses, rounds, and the worst relative excess over scipy's SSE."""
    bound = ref["sse"] * (1 + 1e-6) + 1e-12 * ref["sst"]
    fin = np.isfinite(ref["sse"])
    fitted = np.isin(fit.status, (FitStatus.CONVERGED, FitStatus.MAX_ITERATIONS))
    with np.errstate(all="ignore"):
        excess = (fit.sse[fin] - ref["sse"][fin]) / ref["sse"][fin]
    return {
        "frac_within_scipy": float(np.mean(fit.sse[fin] <= bound[fin])),
        "scipy_compared": int(fin.sum()),
        "worst_excess_over_scipy": float(np.max(excess)) if fin.any() else None,
        "frac_max_iter": float(np.mean(fit.status == FitStatus.MAX_ITERATIONS)),
        "frac_not_converged": float(np.mean(fit.status == FitStatus.NOT_CONVERGED)),
        "frac_fitted": float(np.mean(fitted)),
        "status_counts": fit.status_counts(),
        "rounds_mean": float(np.mean(fit.rounds[fit.rounds > 0])) if fitted.any() else None,
        "rounds_max": int(fit.rounds.max()),
        "frac_rounds_gt1": float(np.mean(fit.rounds > 1)),
        "mean_r2": float(np.nanmean(fit.r2)),
        "scipy_not_converged": int(np.sum(~ref["ok"] & fin)),
    }


@pytest.mark.parametrize("provider", [BASELINE, "massact"])
def test_bench_fit_corpus(benchmark, case, provider, mini_suite_root):
    d = curves(case, mini_suite_root)
    n = d["y"].shape[0]
    _info(benchmark, case, provider, n)
    if provider == BASELINE:
        ref = benchmark.pedantic(
            reference_fit_batch, (d["t"], d["y"], d["mask"]), rounds=1, iterations=1
        )
        _REFS[case] = ref
        median = benchmark.stats.stats.median
        benchmark.extra_info.update(fits_per_s=n / median, ms_per_curve=1e3 * median / n)
        return
    first = fit_trajectories(d["t"], d["y"], d["mask"])  # cold: compiles
    benchmark.pedantic(
        fit_trajectories, (d["t"], d["y"], d["mask"]), rounds=case.rounds, iterations=1
    )
    median = benchmark.stats.stats.median
    q = quality(first, reference(case, d))
    benchmark.extra_info.update(
        fits_per_s=n / median, ms_per_curve=1e3 * median / n,
        compile_s=first.compile_seconds, **q,
    )  # fmt: skip
    assert q["frac_within_scipy"] == 1.0, q
    assert q["frac_max_iter"] <= 0.01, q
