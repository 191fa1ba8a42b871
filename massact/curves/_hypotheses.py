"""The paper's model comparison (Table 5): Eq. 9/14 against step responses (Eq. 15-18).

Every hypothesis is fitted to every curve in one jit-compiled, vmapped call on the normalised
data (t -> [0, 1], y -> [0, 1], as the paper's recipe), by a bounded Levenberg-Marquardt from a
few starts (autodiff Jacobian). The step responses have no offset term of their own; on
normalised data the data minimum acts as one. SSE, R^2 and AIC are in the data's units;
n_params counts the equation's own parameters (5 for Eq. 9/14, 2 or 3 for the steps).

"eq9" (Table 5 "Original") is a real fit of Eq. 9 in its own parameters (A, lam, gamma, t0, K)
with lam >= 0, gamma > 0, t0 > 0 (so x = gamma t_n + t0 > 0 on the data), by a 400-step LM
from the Eq. 14 optimum mapped back (where that mapping is finite), from two capped versions
of it (where gamma overflows) and from the paper's initial guess; the best result is kept.
It is not the Eq. 14 optimum re-evaluated: where the mapping overflows or loses precision
(gamma = exp(A2 / A1) huge, A = A1 exp(beta tau0) ~ 1e80) the Eq. 9 row is what Eq. 9's own
parametrisation reaches in float64, which can be worse than "eq14".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _formulas
from ._chunks import bucket_size
from ._core import bounded_step
from ._fit import fit_trajectories, validate_curves
from ._formulas import from_reparam
from ._normalise import curve_scale, normalise_points, normalise_reparam
from ._result import MIN_POINTS, FitStatus, information_criteria

HYPOTHESES = ("eq9", "eq14", "step1", "step2_under", "step2_critical", "step2_over")

# This fitter keeps its own small constants, not `FitSettings` (a plain bounded LM per
# hypothesis, not the Eq. 14 solver): the bounds and starts of `_STEPS` and `_EQ9_*` below, LM
# damping starting at 1e-3 and scaled x0.3 on an accepted step, x4 on a rejected one
# (`_lm_batch`), 40 LM steps for the step responses (`fit_hypotheses(n_iter=)`) and
# `_EQ9_ITER` for Eq. 9. Eq. 14 itself is `fit_trajectories` with its default FitSettings.
_INF = np.inf
# name -> (model, lower, upper, starts) on normalised data
_STEPS = {
    "step1": (_formulas.step1, [-_INF, 1e-6], [_INF, 1e3], [[1, 0.01], [1, 0.1], [1, 1.0]]),
    "step2_under": (
        _formulas.step2_under,
        [-_INF, 0.0, 1e-3],
        [_INF, 1 - 1e-6, 1e4],
        [[1, 0.2, 3], [1, 0.2, 30], [1, 0.7, 3], [1, 0.7, 30]],
    ),
    "step2_critical": (
        _formulas.step2_critical,
        [-_INF, 1e-3],
        [_INF, 1e4],
        [[1, 1], [1, 10], [1, 100]],
    ),  # noqa: E501
    "step2_over": (
        _formulas.step2_over,
        [-_INF, 1 + 1e-6, 1e-3],
        [_INF, 1e3, 1e4],
        [[1, 1.5, 3], [1, 1.5, 30], [1, 5, 30], [1, 5, 300]],
    ),
}
_COMPILED: dict[tuple, object] = {}


def _lm_batch(model, tn, yn, w, starts, lo, hi, n_iter):
    """Best-of-starts bounded LM per curve. tn, yn, w [N, n]; starts [S, p] (shared) or
    [N, S, p] (per curve) -> p [N, p], sse [N], converged [N] (of the best start: its last
    accepted step gained < 1e-8 relative, or the damping grew past 1e8: no step gains, or the
    fit is exact to 1e-16 of the SST)."""

    def one(tn, yn, w, starts):
        def res(p):
            return w * (yn - model(tn, p))

        def run(p):
            def body(_, s):
                p, sse, mu, rel = s
                r, j = res(p), jax.jacfwd(res)(p)
                new = bounded_step(j.T @ j, j.T @ r, mu, p, lo, hi)
                sse_new = jnp.sum(res(new) ** 2)
                ok = jnp.isfinite(sse_new) & (sse_new < sse)
                rel = jnp.where(ok, (sse - sse_new) / jnp.maximum(sse, 1e-300), rel)
                mu = jnp.where(ok, mu * 0.3, mu * 4)
                return jnp.where(ok, new, p), jnp.where(ok, sse_new, sse), mu, rel

            sse0 = jnp.sum(res(p) ** 2)
            sse0 = jnp.where(jnp.isfinite(sse0), sse0, jnp.inf)
            p, sse, mu, rel = jax.lax.fori_loop(0, n_iter, body, (p, sse0, 1e-3, 0.0))
            sst = jnp.sum(w * (yn - jnp.sum(w * yn) / jnp.maximum(jnp.sum(w), 1.0)) ** 2)
            return p, sse, (rel < 1e-8) | (mu > 1e8) | (sse <= 1e-16 * sst)

        ps, sses, conv = jax.vmap(run)(starts)
        k = jnp.argmin(sses)
        return ps[k], sses[k], conv[k]

    if starts.ndim == 2:
        return jax.vmap(lambda tn, yn, w: one(tn, yn, w, starts))(tn, yn, w)
    return jax.vmap(one)(tn, yn, w, starts)


def _fit_step(name, tn, yn, w, n_iter):
    model, lo, hi, starts = _STEPS[name]
    return _run_lm(name, model, tn, yn, w, starts, lo, hi, n_iter)


def _run_lm(name, model, tn, yn, w, starts, lo, hi, n_iter):
    starts = np.asarray(starts, float)
    key = (name, tn.shape, starts.shape, n_iter)
    with jax.enable_x64(True):
        fn = _COMPILED.get(key)
        if fn is None:
            fn = jax.jit(
                lambda tn, yn, w, st, lo, hi: _lm_batch(model, tn, yn, w, st, lo, hi, n_iter)
            )
            _COMPILED[key] = fn
        p, sse, conv = fn(tn, yn, w, starts, np.asarray(lo, float), np.asarray(hi, float))
        return np.asarray(p), np.asarray(sse), np.asarray(conv)


# Eq. 9 on normalised data, p = (A, lam, gamma, t0, K): lam >= 0; gamma, t0 > 0 keep x > 0 on
# t_n in [0, 1] (padding included, where t_n = 0)
_EQ9_LO = [-_INF, 0.0, 1e-300, 1e-300, -_INF]
_EQ9_HI = [_INF] * 5
_EQ9_ITER = 400  # the original parametrisation is badly conditioned: LM needs many steps


def _eq9_starts(rep, scale, tn, w):
    """Per-curve starts [N, 4, 5] for the Eq. 9 fit on normalised data.

    rep [N, 5]: the Eq. 14 optimum in data units; scale [N, 4]: (t_min, t_range, y_min,
    y_range). Starts: (0) the Eq. 14 optimum mapped back exactly; where gamma = exp(A2 / A1)
    overflows, the nearest Eq. 9 curves with log(gamma) capped: (1) at +-600 with A1 = A2 / 600
    (A2 exact, the log term slightly off) and (2) at +-30 with K absorbing the A2 left out
    (exact as beta -> 0); (3) the paper's initial guess. Non-finite starts -> the guess.
    """
    zn = normalise_reparam(rep, scale)
    with np.errstate(all="ignore"):
        exact = from_reparam(zn)
        ratio = zn[:, 3] / zn[:, 2]
        big = zn.copy()
        log_g = np.clip(ratio, -600.0, 600.0)
        big[:, 2] = np.where(log_g == ratio, zn[:, 2], zn[:, 3] / log_g)
        small = zn.copy()
        log_g = np.clip(ratio, -30.0, 30.0)
        small[:, 4] = zn[:, 4] + zn[:, 3] - zn[:, 2] * log_g
        small[:, 3] = zn[:, 2] * log_g
        n = np.maximum(w.sum(1), 1.0)
        mean = (tn * w).sum(1) / n
        std = np.sqrt((w * (tn - mean[:, None]) ** 2).sum(1) / n)
        # paper_guess on normalised data: A = 1, lam = 1/std(t), gamma = 1/range(t), t0 = 1
        guess = np.stack([np.ones_like(std), 1.0 / std, *np.ones((2, len(std))), 0.5 + 0 * std], -1)
        starts = np.stack([exact, from_reparam(big), from_reparam(small), guess], 1)
    guess = np.where(np.isfinite(guess), guess, [1.0, 3.0, 1.0, 1.0, 0.5])
    starts = np.clip(starts, _EQ9_LO, _EQ9_HI)
    bad = ~np.all(np.isfinite(starts), -1)
    return np.where(bad[..., None], guess[:, None, :], starts)


def fit_hypotheses(
    t, y, mask=None, *, fit=None, n_iter: int = 40, status: bool = False
) -> pd.DataFrame:
    """Fit all `HYPOTHESES` to every curve. t [n] or [N, n], y [N, n], mask [N, n] bool.

    Returns a tidy DataFrame, one row per (curve, hypothesis): curve, hypothesis, n_params,
    n_points, sse, r2, aic, bic (NaN where the curve has < 6 usable points or is constant),
    and with status=True a `status` column: each fit's `FitStatus` label. "eq14" rows carry
    `fit_trajectories`' status; the LM fits (eq9, the steps) are "converged" (the last
    accepted step gained < 1e-8 relative, or no step can gain), "max iterations" (n_iter, or
    400 steps for eq9, ran out first) or "failed" (no finite SSE); a curve without a fit
    (too few points, constant, non-finite range) has that status on every row.
    "eq14" is `fit_trajectories`; "eq9" is Eq. 9 fitted in its original parameters (see the
    module docstring: started from the Eq. 14 optimum mapped back and from the paper's guess,
    so it is never worse than that mapping evaluated through Eq. 9, and can be worse than
    "eq14" where the mapping overflows). n_iter: LM steps of the step-response fits.
    fit: the `fit_trajectories(t, y, mask)` result when the caller already has it (the
    pipeline does), so Eq. 14 is not fitted twice.
    """
    t, y, use = validate_curves(t, y, mask)
    N, n = y.shape
    if int(n_iter) < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    n_iter = int(n_iter)
    if fit is None:
        fit = fit_trajectories(t, y, mask=use)
    elif np.shape(fit.sse) != (N,):
        raise ValueError(
            f"fit holds {np.size(fit.sse)} curves but y holds {N}: pass the FitResult of "
            "fit_trajectories(t, y, mask) for these same curves"
        )
    npts = use.sum(1)
    with np.errstate(all="ignore"):
        mean = np.sum(np.where(use, y, 0.0), 1) / npts
        sst = np.sum(np.where(use, (y - mean[:, None]) ** 2, 0.0), 1)
    scale = curve_scale(t, y, use)
    yr = scale[:, 3]
    live = (npts >= MIN_POINTS) & np.isfinite(yr) & (yr > 0)
    sse = {"eq14": np.where(live, fit.sse, np.nan)}
    tn, yn = normalise_points(t, y, scale, use & live[:, None])
    w = (use & live[:, None]).astype(float)
    nb, cb = bucket_size(n), bucket_size(N, lo=32)
    pad = [np.zeros((cb, nb)) for _ in range(3)]
    for dst, src in zip(pad, (tn, yn, w)):
        dst[:N, :n] = src
    n_par = {"eq9": 5, "eq14": 5}
    starts9 = np.zeros((cb, 4, 5)) + [1.0, 3.0, 1.0, 1.0, 0.5]
    starts9[:N] = _eq9_starts(fit.reparam, scale, tn, w)
    _, sse9, conv9 = _run_lm("eq9", _formulas.jcurve, *pad, starts9, _EQ9_LO, _EQ9_HI, _EQ9_ITER)
    sse["eq9"] = np.where(live, sse9[:N] * yr**2, np.nan)
    # statuses: a curve without a fit has the Eq. 14 fit's reason on every row
    none = np.where(live, FitStatus.CONVERGED, fit.status)
    codes = {"eq14": np.where(live, fit.status, none), "eq9": _lm_status(conv9[:N], sse9[:N], none)}
    for name, (_, low, _, _) in _STEPS.items():
        _, sse_n, conv = _fit_step(name, *pad, n_iter)
        sse[name] = np.where(live, sse_n[:N] * yr**2, np.nan)
        codes[name] = _lm_status(conv[:N], sse_n[:N], none)
        n_par[name] = len(low)
    rows = []
    for name in HYPOTHESES:
        aic, bic = information_criteria(sse[name], npts, n_par[name])
        with np.errstate(all="ignore"):
            r2 = 1.0 - sse[name] / sst
        rows.append(
            pd.DataFrame(
                {
                    "curve": np.arange(N),
                    "hypothesis": name,
                    "n_params": n_par[name],
                    "n_points": npts,
                    "sse": sse[name],
                    "r2": r2,
                    "aic": aic,
                    "bic": bic,
                }
                | ({"status": [FitStatus(c).label for c in codes[name]]} if status else {})
            )  # fmt: skip
        )
    return pd.concat(rows, ignore_index=True)


def _lm_status(conv, sse, none):
    """FitStatus codes of an LM fit: converged / max iterations / failed (non-finite SSE),
    `none` (the pre-fit status) where it is not CONVERGED (no fit was made)."""
    out = np.where(conv, FitStatus.CONVERGED, FitStatus.MAX_ITERATIONS)
    out = np.where(np.isfinite(sse), out, FitStatus.FAILED)
    return np.where(none == FitStatus.CONVERGED, out, none)
