"""The paper's fitting recipe, one curve at a time with scipy: the test oracle and the baseline.

scipy.optimize.curve_fit(method="trf") with the analytic Jacobian, the paper's initial guess
(A = range(y), K = min(y) + A/2, lam = 1/std(t), gamma = 1/range(t), t0 = 1), the bound
lam >= 0 (beta >= 0 in Eq. 14), data normalised first and parameters scaled back. The
normalisation is the one `fit_trajectories` uses (`_normalise`: t -> (t - t_min) / range(t),
y -> (y - y_min) / range(y)), so SSEs compare like for like.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, least_squares

from ._formulas import curve, curve_reparam, from_reparam, jacobian, jacobian_reparam, to_reparam
from ._normalise import curve_scale, denormalise_reparam, normalise_points


def normalise(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One curve's usable points -> (t_n, y_n, (t_min, t_range, y_min, y_range))."""
    scale = curve_scale(t, y)
    t_n, y_n = normalise_points(t, y, scale)
    return t_n, y_n, tuple(scale)


def paper_guess(t_n: np.ndarray, y_n: np.ndarray) -> np.ndarray:
    """The paper's initial guess (A, lam, gamma, t0, K) on normalised data."""
    A = y_n.max() - y_n.min()
    return np.array([A, 1.0 / t_n.std(), 1.0 / np.ptp(t_n), 1.0, y_n.min() + A / 2])


def reference_fit(t, y, *, model: str = "eq14") -> tuple[np.ndarray, float, bool]:
    """Fit one curve as the paper did. t, y [n] (usable points only).

    Returns (reparam [5] in data units, sse in data units, success); success is False when
    scipy stopped at its evaluation budget (curve_fit would raise). model: "eq14" fits the
    reparametrised form, "eq9" the original; both return Eq. 14 parameters.
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    t_n, y_n, scale = normalise(t, y)
    p0 = paper_guess(t_n, y_n)
    if model == "eq14":
        f = lambda tt, *r: curve_reparam(tt, r)  # noqa: E731
        jac = lambda tt, *r: jacobian_reparam(tt, r)  # noqa: E731
        p0 = to_reparam(p0)
    elif model == "eq9":
        f = lambda tt, *p: curve(tt, p)  # noqa: E731
        jac = lambda tt, *p: jacobian(tt, p)  # noqa: E731
    else:
        raise ValueError(f"model must be 'eq14' or 'eq9', got {model!r}")
    lower = np.array([0.0, -np.inf, -np.inf, -np.inf, -np.inf])
    if model == "eq9":
        lower = np.array([-np.inf, 0.0, -np.inf, -np.inf, -np.inf])
    # curve_fit(method="trf", jac, bounds) is least_squares with these settings; calling it
    # directly keeps the last iterate when the evaluation budget runs out (curve_fit raises).
    res_fn = lambda p: f(t_n, *p) - y_n  # noqa: E731
    jac_fn = lambda p: jac(t_n, *p)  # noqa: E731
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            res = least_squares(res_fn, p0, jac=jac_fn, bounds=(lower, np.inf), method="trf")
    except ValueError:  # non-finite residuals at the start
        return np.full(5, np.nan), np.nan, False
    p, ok = res.x, bool(res.success)
    rn = p if model == "eq14" else to_reparam(p)
    r = f(t_n, *p) - y_n
    sse = float(np.sum(r * r)) * scale[3] ** 2
    ok = ok and np.isfinite(sse)
    return denormalise_reparam(rn, scale), sse, ok


def reference_fit_batch(t, y, mask=None, *, model: str = "eq14") -> dict[str, np.ndarray]:
    """Loop `reference_fit` over curves. t [n] or [N, n], y [N, n], mask [N, n] bool.

    Returns dict with reparam [N, 5], params [N, 5], sse [N], sst [N], ok [N].
    Curves with < 6 usable points or a constant y get NaN and ok = False.
    """
    y = np.asarray(y, dtype=np.float64)
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), y.shape)
    m = np.ones(y.shape, bool) if mask is None else np.asarray(mask, bool)
    m = m & np.isfinite(y) & np.isfinite(t)
    N = y.shape[0]
    out = {
        "reparam": np.full((N, 5), np.nan),
        "sse": np.full(N, np.nan),
        "sst": np.full(N, np.nan),
        "ok": np.zeros(N, bool),
    }
    for i in range(N):
        ti, yi = t[i, m[i]], y[i, m[i]]
        if ti.size < 6 or np.ptp(yi) == 0:
            continue
        out["sst"][i] = np.sum((yi - yi.mean()) ** 2)
        out["reparam"][i], out["sse"][i], out["ok"][i] = reference_fit(ti, yi, model=model)
    out["params"] = from_reparam(out["reparam"])
    return out


PYTHIA_LIKE_STEPS = np.concatenate([[0], 2 ** np.arange(10), np.arange(1000, 143001, 1000)])


def synthetic_curves(
    N: int, *, seed: int = 0, n_range: tuple[int, int] = (26, 55), noise: float = 0.02
) -> dict[str, np.ndarray]:
    """Curves drawn from Eq. 9 with Gaussian noise on Pythia-like checkpoint steps.

    Half "early peak" (lam in [0.05, 1], the peak inside the data), half "log increase"
    (lam in [1e-4, 1e-2] or exactly 0). Lengths vary in n_range (padded with mask False).
    Returns t [N, n_max], y [N, n_max], mask [N, n_max], params [N, 5], shape [N] (0 peak, 1 log).
    """
    rng = np.random.default_rng(seed)
    n_max = n_range[1]
    t = np.zeros((N, n_max))
    mask = np.zeros((N, n_max), bool)
    for i in range(N):
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        t[i, :n] = np.sort(rng.choice(PYTHIA_LIKE_STEPS, n, replace=False))
        mask[i, :n] = True
    shape = (np.arange(N) % 2).astype(int)
    T = 143000.0
    g = np.exp(rng.uniform(np.log(1.0), np.log(100.0), N))
    lam_peak = np.exp(rng.uniform(np.log(0.05), np.log(1.0), N))
    lam_log = np.where(rng.random(N) < 0.2, 0.0, np.exp(rng.uniform(np.log(1e-4), np.log(1e-2), N)))
    params = np.stack(
        [
            rng.uniform(5.0, 100.0, N),
            np.where(shape == 0, lam_peak, lam_log),
            g / T,
            rng.uniform(0.5, 3.0, N),
            rng.uniform(1.0, 50.0, N),
        ],
        axis=-1,
    )
    clean = curve(t, params)
    lo = np.min(np.where(mask, clean, np.inf), axis=1, keepdims=True)
    hi = np.max(np.where(mask, clean, -np.inf), axis=1, keepdims=True)
    scale = np.maximum(hi - lo, 1e-3 * np.abs(hi))
    y = clean + noise * scale * rng.standard_normal(clean.shape)
    y = np.where(mask, y, np.nan)
    return {"t": t, "y": y, "mask": mask, "params": params, "shape": shape}
