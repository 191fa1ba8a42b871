"""The paper's model comparison (Table 5): Eq. 9/14 against step responses (Eq. 15-18).

Every hypothesis is fitted to every curve in one jit-compiled, vmapped call on the normalised
data (t -> [0, 1], y -> [0, 1], as the paper's recipe), by a bounded Levenberg-Marquardt from a
few starts (autodiff Jacobian). The step responses have no offset term of their own; on
normalised data the data minimum acts as one. SSE, R^2 and AIC are in the data's units;
n_params counts the equation's own parameters (5 for Eq. 9/14, 2 or 3 for the steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import _curves
from ._fit import _bounded_step, _bucket, _validate, fit_trajectories, information_criteria

HYPOTHESES = ("eq9", "eq14", "step1", "step2_under", "step2_critical", "step2_over")

_INF = np.inf
# name -> (model, lower, upper, starts) on normalised data
_STEPS = {
    "step1": (_curves.step1, [-_INF, 1e-6], [_INF, 1e3], [[1, 0.01], [1, 0.1], [1, 1.0]]),
    "step2_under": (
        _curves.step2_under,
        [-_INF, 0.0, 1e-3],
        [_INF, 1 - 1e-6, 1e4],
        [[1, 0.2, 3], [1, 0.2, 30], [1, 0.7, 3], [1, 0.7, 30]],
    ),
    "step2_critical": (
        _curves.step2_critical,
        [-_INF, 1e-3],
        [_INF, 1e4],
        [[1, 1], [1, 10], [1, 100]],
    ),  # noqa: E501
    "step2_over": (
        _curves.step2_over,
        [-_INF, 1 + 1e-6, 1e-3],
        [_INF, 1e3, 1e4],
        [[1, 1.5, 3], [1, 1.5, 30], [1, 5, 30], [1, 5, 300]],
    ),
}
_COMPILED: dict[tuple, object] = {}


def _lm_batch(model, tn, yn, w, starts, lo, hi, n_iter):
    """Best-of-starts bounded LM per curve. tn, yn, w [N, n]; starts [S, p] -> p [N, p], sse [N]."""

    def one(tn, yn, w):
        def res(p):
            return w * (yn - model(tn, p))

        def run(p):
            def body(_, s):
                p, sse, mu = s
                r, j = res(p), jax.jacfwd(res)(p)
                new = _bounded_step(j.T @ j, j.T @ r, mu, p, lo, hi)
                sse_new = jnp.sum(res(new) ** 2)
                ok = jnp.isfinite(sse_new) & (sse_new < sse)
                mu = jnp.where(ok, mu * 0.3, mu * 4)
                return jnp.where(ok, new, p), jnp.where(ok, sse_new, sse), mu

            sse0 = jnp.sum(res(p) ** 2)
            sse0 = jnp.where(jnp.isfinite(sse0), sse0, jnp.inf)
            p, sse, _ = jax.lax.fori_loop(0, n_iter, body, (p, sse0, 1e-3))
            return p, sse

        ps, sses = jax.vmap(run)(starts)
        k = jnp.argmin(sses)
        return ps[k], sses[k]

    return jax.vmap(one)(tn, yn, w)


def _fit_step(name, tn, yn, w, n_iter):
    model, lo, hi, starts = _STEPS[name]
    key = (name, tn.shape, n_iter)
    with jax.enable_x64(True):
        fn = _COMPILED.get(key)
        if fn is None:
            fn = jax.jit(
                lambda tn, yn, w, st, lo, hi: _lm_batch(model, tn, yn, w, st, lo, hi, n_iter)
            )
            _COMPILED[key] = fn
        p, sse = fn(tn, yn, w, np.asarray(starts, float), np.asarray(lo), np.asarray(hi))
        return np.asarray(p), np.asarray(sse)


def fit_hypotheses(t, y, mask=None, *, n_iter: int = 40) -> pd.DataFrame:
    """Fit all `HYPOTHESES` to every curve. t [n] or [N, n], y [N, n], mask [N, n] bool.

    Returns a tidy DataFrame, one row per (curve, hypothesis): curve, hypothesis, n_params,
    n_points, sse, r2, aic, bic (NaN where the curve has < 6 usable points or is constant).
    "eq14" is `fit_trajectories`; "eq9" evaluates the same optimum through the original
    parametrisation (where gamma = exp(A2/A1) overflows, Eq. 9 cannot express it: NaN).
    """
    t, y, use = _validate(t, y, mask)
    N, n = y.shape
    fit = fit_trajectories(t, y, mask=use)
    npts = use.sum(1)
    with np.errstate(all="ignore"):
        mean = np.sum(np.where(use, y, 0.0), 1) / npts
        sst = np.sum(np.where(use, (y - mean[:, None]) ** 2, 0.0), 1)
        a = np.min(np.where(use, t, np.inf), 1)
        s = np.max(np.where(use, t, -np.inf), 1) - a
        lo = np.min(np.where(use, y, np.inf), 1)
        yr = np.max(np.where(use, y, -np.inf), 1) - lo
    live = (npts >= 6) & np.isfinite(yr) & (yr > 0)
    sse = {"eq14": np.where(live, fit.sse, np.nan)}
    with np.errstate(all="ignore"):
        r9 = _curves.curve(np.where(use, t, 0.0), fit.params) - y
        sse["eq9"] = np.where(live, np.sum(np.where(use, r9 * r9, 0.0), 1), np.nan)
        tn = np.where(use & live[:, None], (t - a[:, None]) / s[:, None], 0.0)
        yn = np.where(use & live[:, None], (y - lo[:, None]) / yr[:, None], 0.0)
    w = (use & live[:, None]).astype(float)
    nb, cb = _bucket(n), _bucket(N, lo=32)
    pad = [np.zeros((cb, nb)) for _ in range(3)]
    for dst, src in zip(pad, (tn, yn, w)):
        dst[:N, :n] = src
    n_par = {"eq9": 5, "eq14": 5}
    for name, (_, low, _, _) in _STEPS.items():
        _, sse_n = _fit_step(name, *pad, n_iter)
        sse[name] = np.where(live, sse_n[:N] * yr**2, np.nan)
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
            )  # fmt: skip
        )
    return pd.concat(rows, ignore_index=True)
