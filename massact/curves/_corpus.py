"""A benchmark corpus of Eq. 9 trajectories nobody tuned the fitter on: `corpus_curves`.

`synthetic_curves` (`_scipy_recipe`) is the generator the fitter's settings were tuned on (2%
additive noise, 26-55 points, peaks at lam <= 1). The sets here vary one thing at a time
around a mixed base, and one set (`"pythia_mix"`) redraws the kind of curves that once showed
the fixed iteration budget to be too small (188 curves, 1-5% multiplicative noise, 26-82 of the
Pythia checkpoints, magnitudes 5-3,000, half early peaks with large lam and gamma):

- noise: 0.5% and 10% of the curve's range (additive) or of its value (multiplicative);
- checkpoints: sparse (8-20) and dense (120-154) subsets of the Pythia grid;
- shapes: early peak (large lam and gamma: the peak among the first, log-spaced
  checkpoints), late peak, log increase (lam ~ 0), monotone decay (the peak before the first
  checkpoint, or a falling log), nearly flat (a change no larger than the noise);
- magnitudes 1 to 1e4, the offset K up to 100x the amplitude;
- outliers: 1-3 points per curve off by 5-20 noise standard deviations.

Every set is a pure function of (name, N, seed). Real curves (the mini-suite's) need a
trained dataset and are added by the caller (bench/test_bench_fit_corpus.py).
Imports: numpy and the formulas; nothing else of massact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._formulas import curve
from ._scipy_recipe import PYTHIA_LIKE_STEPS

__all__ = ["CORPUS_SETS", "CorpusSet", "corpus_curves"]

T_LAST = float(PYTHIA_LIKE_STEPS[-1])
SHAPES = ("early_peak", "late_peak", "log_increase", "monotone_decay", "nearly_flat")


@dataclass(frozen=True)
class CorpusSet:
    """How one set is drawn. shapes: which of `SHAPES` (in equal shares, cycled over the
    rows); n_points: checkpoints per curve (a random subset of the Pythia grid, sorted);
    noise: per-curve level drawn log-uniformly in [lo, hi] (relative: of the clean curve's
    range if additive, of its value if multiplicative); magnitude: the amplitude scale drawn
    log-uniformly; offset: K / amplitude drawn log-uniformly; outliers: at most this many
    points per curve moved by 5-20 noise standard deviations."""

    name: str
    description: str
    shapes: tuple[str, ...] = ("early_peak", "late_peak", "log_increase", "monotone_decay")
    n_points: tuple[int, int] = (26, 82)
    noise: tuple[float, float] = (0.01, 0.05)
    multiplicative: bool = True
    magnitude: tuple[float, float] = (5.0, 3000.0)
    offset: tuple[float, float] = (1.0, 3.0)
    outliers: int = 0
    size: int = 188  # the benchmark's default number of curves


CORPUS_SETS: dict[str, CorpusSet] = {
    s.name: s
    for s in [
        CorpusSet(
            "pythia_mix",
            "1-5% multiplicative noise, 26-82 checkpoints, magnitudes 5-3,000, half early "
            "peaks with large lam and gamma, half log increases",
            shapes=("early_peak", "log_increase"),
        ),
        CorpusSet("noise_low_mult", "0.5% multiplicative noise", noise=(0.005, 0.005)),
        CorpusSet("noise_high_mult", "10% multiplicative noise", noise=(0.1, 0.1)),
        CorpusSet(
            "noise_low_add", "0.5% additive noise", noise=(0.005, 0.005), multiplicative=False
        ),
        CorpusSet("noise_high_add", "10% additive noise", noise=(0.1, 0.1), multiplicative=False),
        CorpusSet("sparse", "8-20 checkpoints", n_points=(8, 20)),
        CorpusSet("dense", "120-154 checkpoints (154: the whole grid)", n_points=(120, 154)),
        CorpusSet("early_peak", "early peaks only", shapes=("early_peak",)),
        CorpusSet("log_increase", "log increases only", shapes=("log_increase",)),
        CorpusSet("monotone_decay", "monotone decays only", shapes=("monotone_decay",)),
        CorpusSet(
            "nearly_flat",
            "a change of 0.3-3x the additive noise on a large offset",
            shapes=("nearly_flat",),
            noise=(0.3, 3.0),
            multiplicative=False,
            offset=(10.0, 100.0),
        ),
        CorpusSet(
            "magnitudes",
            "amplitudes 1 to 1e4, offsets 0.1-100x the amplitude",
            magnitude=(1.0, 1e4),
            offset=(0.1, 100.0),
        ),
        CorpusSet("outliers", "1-3 points per curve off by 5-20 sigma", outliers=3),
    ]
}


def _log_uniform(rng, lo, hi, n):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _shape_params(shape: str, rng, n: int) -> np.ndarray:
    """(A, lam, gamma, t0) for one shape, A of order 1 (scaled by the magnitude later)."""
    A = rng.uniform(0.5, 2.0, n)
    t0 = rng.uniform(0.5, 3.0, n)
    if shape == "early_peak":  # peak x* = exp(W(1/lam)) ~ 1.2-2.5 within the first ~1,000 steps
        lam, g = _log_uniform(rng, 0.3, 5.0, n), _log_uniform(rng, 100.0, 3000.0, n)
        t0 = rng.uniform(0.3, 1.0, n)
    elif shape == "late_peak":  # the tuned generator's peaks
        lam, g = _log_uniform(rng, 0.05, 1.0, n), _log_uniform(rng, 1.0, 100.0, n)
    elif shape == "log_increase":
        lam = np.where(rng.random(n) < 0.2, 0.0, _log_uniform(rng, 1e-4, 1e-2, n))
        g = _log_uniform(rng, 1.0, 300.0, n)
    elif shape == "monotone_decay":
        # half: the peak x* lies before the first checkpoint (t0 > x*); half: a falling log
        lam, g = _log_uniform(rng, 0.1, 2.0, n), _log_uniform(rng, 1.0, 300.0, n)
        x_star = np.exp(_lambertw_real(1.0 / lam))
        before = rng.random(n) < 0.5
        t0 = np.where(before, x_star * rng.uniform(1.5, 10.0, n), t0)
        lam = np.where(before, lam, _log_uniform(rng, 1e-4, 1e-2, n))
        A = np.where(before, A, -A)
    elif shape == "nearly_flat":  # any of the above, flattened by the noise level later
        kind = rng.integers(0, 3, n)
        lam = np.choose(kind, [_log_uniform(rng, 0.3, 5.0, n), _log_uniform(rng, 0.05, 1.0, n),
                               _log_uniform(rng, 1e-4, 1e-2, n)])  # fmt: skip
        g = np.where(kind == 0, _log_uniform(rng, 100.0, 3000.0, n), _log_uniform(rng, 1, 100, n))
    else:
        raise ValueError(f"unknown shape {shape!r}: use one of {SHAPES}")
    return np.stack([A, lam, g / T_LAST, t0], -1)


def _lambertw_real(x):
    from scipy.special import lambertw

    return lambertw(x).real


def corpus_curves(
    name: str, N: int | None = None, *, seed: int = 0, **overrides
) -> dict[str, np.ndarray]:
    """N curves (default: the set's `size`) of the corpus set `name` (`CORPUS_SETS`).

    overrides: `CorpusSet` fields to replace (n_points=(26, 55) keeps a test's curves in one
    shape bucket). Returns t [N, n_max], y [N, n_max] (NaN past each curve's points), mask
    [N, n_max], params [N, 5] (the clean curve's Eq. 9 parameters), shape [N] (index into
    `SHAPES`) and noise [N] (the level drawn), like `synthetic_curves`.
    """
    if name not in CORPUS_SETS:
        raise ValueError(f"unknown corpus set {name!r}: use one of {sorted(CORPUS_SETS)}")
    spec = replace(CORPUS_SETS[name], **overrides)
    if not 6 <= spec.n_points[0] <= spec.n_points[1] <= len(PYTHIA_LIKE_STEPS):
        raise ValueError(f"n_points must be 6 <= lo <= hi <= {len(PYTHIA_LIKE_STEPS)}")
    N = spec.size if N is None else int(N)
    # one stream per (set, seed): sets do not share draws
    rng = np.random.default_rng([seed, *name.encode()])
    lo_n, hi_n = spec.n_points
    t = np.zeros((N, hi_n))
    mask = np.zeros((N, hi_n), bool)
    for i in range(N):
        n = int(rng.integers(lo_n, hi_n + 1))
        t[i, :n] = np.sort(rng.choice(PYTHIA_LIKE_STEPS, n, replace=False))
        mask[i, :n] = True
    shape = np.array([SHAPES.index(spec.shapes[i % len(spec.shapes)]) for i in range(N)])
    p4 = np.zeros((N, 4))
    for k in np.unique(shape):
        rows = shape == k
        p4[rows] = _shape_params(SHAPES[k], rng, int(rows.sum()))
    mag = _log_uniform(rng, *spec.magnitude, N)
    K = mag * _log_uniform(rng, *spec.offset, N)
    params = np.c_[p4[:, 0] * mag, p4[:, 1:], K]
    clean = curve(t, params)
    lo = np.min(np.where(mask, clean, np.inf), 1, keepdims=True)
    hi = np.max(np.where(mask, clean, -np.inf), 1, keepdims=True)
    level = _log_uniform(rng, *spec.noise, N)[:, None]
    eps = rng.standard_normal(clean.shape)
    if spec.multiplicative:
        sigma = level * np.abs(clean)
    else:
        sigma = level * np.maximum(hi - lo, 1e-12 * np.abs(hi)) + 0 * clean
    y = clean + sigma * eps
    if spec.outliers:
        for i in range(N):
            idx = np.flatnonzero(mask[i])
            k = rng.integers(1, spec.outliers + 1)
            pick = rng.choice(idx, k, replace=False)
            size = rng.uniform(5.0, 20.0, k) * rng.choice([-1.0, 1.0], k)
            y[i, pick] = clean[i, pick] + size * sigma[i, pick]
    y = np.where(mask, y, np.nan)
    return {"t": t, "y": y, "mask": mask, "params": params, "shape": shape, "noise": level[:, 0]}
