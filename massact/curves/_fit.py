"""Batched fits of Eq. 9 (through Eq. 14) to every trajectory in jit-compiled JAX calls.

The host side: input checks, per-curve normalisation (`_normalise`) and pathological-curve
statuses, the rounds and assembling the `FitResult`. Elsewhere: shape buckets, the
compiled-function cache (keyed by `FitSettings`, `_settings`) and the chunk runner in
`_chunks`; `FitResult`, `FitStatus`, the stopping and tolerance constants and the map back to
the data's units in `_result`. The per-curve algorithm (grid, variable projection, Newton,
Levenberg-Marquardt) is in `_core`, the later rounds and the stopping test in `_refine`.

Rounds: every curve gets the first round (`_core.fit_batch`); then `_refine.sse_drop` says how
far each one's SSE could still drop by the local model. A curve stops when that is at most
STOP_RTOL of its SSE (+ STOP_ATOL of its SST). The others go on, compacted into a smaller
batch (padded to few row counts: 8, 32, 128, ... rows), for further rounds
(`_refine.refine_batch`: Gauss-Newton, Newton and LM steps) until they meet that rule or a
round gains less than it (the SSE stopped decreasing): both are CONVERGED. A curve still
gaining at `FitSettings.max_rounds` is MAX_ITERATIONS when its SSE can drop by at most
TOL_RTOL of itself (+ TOL_ATOL of its SST) with a margin of MODEL_MARGIN on the model, the
tolerance the fits are benchmarked against (scipy's SSE (1 + 1e-6) + 1e-12 SST), and
NOT_CONVERGED otherwise.

We write the damped Gauss-Newton steps ourselves instead of using jaxopt's LevenbergMarquardt:
jaxopt's LM has no bounds (lam >= 0 needs an active set / projection between steps) and no
separable (variable projection) mode, and a plain jaxopt LM from the paper's single start
reached mean R^2 0.13 where scipy reached 0.93 (shared/FACTS.md).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._chunks import (
    _DUMMY_Z,
    _compiled,
    _dummy_curve,
    _gather,
    _run_chunks,
    bucket_size,
    round_rows,
)
from ._core import N_PARAMS, fit_batch
from ._formulas import curve, from_reparam, t_peak
from ._normalise import curve_scale, normalise_points
from ._refine import refine_batch, sse_drop_batch
from ._result import (
    DEGENERATE_LAM_T0,
    K_MAX_STDERR,
    K_RANGE_MARGIN,
    MIN_POINTS,
    MODEL_MARGIN,
    STOP_ATOL,
    STOP_RTOL,
    TOL_ATOL,
    TOL_RTOL,
    FitResult,
    FitStatus,
    _map_back,
    information_criteria,
)
from ._settings import FitSettings

__all__ = [
    "DEGENERATE_LAM_T0", "K_MAX_STDERR", "K_RANGE_MARGIN", "FitResult", "FitSettings",
    "FitStatus", "curve", "fit_trajectories",
]  # fmt: skip

# data scales whose squares lose precision in float64: R^2 and AIC from the normalised fit
_SCALE_LO, _SCALE_HI = 1e-150, 1e150


def _real(x, name: str) -> np.ndarray:
    """x as float64; ValueError for complex input (casting would drop the imaginary part)."""
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise ValueError(
            f"{name} is complex ({x.dtype}): the curves are real; pass the real part "
            f"({name}.real) or the modulus (abs({name})) explicitly"
        )
    return np.asarray(x, dtype=np.float64)


def validate_curves(t, y, mask):
    """Checked float64 t, y [N, n] and the boolean mask of usable points; ValueError if bad
    (shapes, no curves, no points, complex values, steps not >= 0 and increasing)."""
    y = _real(y, "y")
    if y.ndim != 2:
        raise ValueError(f"y must be [N, n] (one row per curve), got shape {y.shape}")
    if y.shape[0] == 0:
        raise ValueError(f"no curves: y has shape {y.shape} (N = 0 rows)")
    if y.shape[1] == 0:
        raise ValueError(f"no points: y has shape {y.shape} (n = 0 columns)")
    t = _real(t, "t")
    if t.ndim == 1:
        t = np.broadcast_to(t, y.shape)
    if t.shape != y.shape:
        raise ValueError(f"t must be [n] or [N, n] matching y {y.shape}, got {t.shape}")
    m = np.ones(y.shape, bool) if mask is None else np.asarray(mask)
    if m.shape != y.shape or m.dtype != bool:
        raise ValueError(f"mask must be a bool array of shape {y.shape}, got {m.dtype} {m.shape}")
    use = m & np.isfinite(t)
    if np.any(t[use] < 0):
        raise ValueError("t must be training steps >= 0; found negative values")
    # strictly increasing along each row over the points in use
    tt = np.where(use, t, np.nan)
    prev = np.fmax.accumulate(np.where(use, tt, -np.inf), axis=1)
    bad = use[:, 1:] & (tt[:, 1:] <= prev[:, :-1])
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(
            f"t must be strictly increasing along each curve; curve {row} is not "
            "(sort the points by step and drop duplicate steps)"
        )
    return t, y, use & np.isfinite(y)


def _first_round(settings: FitSettings, tn, yn, w, workers: int):
    """Round 1 on every row and the stopping test's `sse_drop` at its result (one worker task
    per chunk runs both). Returns (z, sse, n_iter, jtj, drop) in normalised units and the
    compile seconds."""
    N, n = tn.shape
    # at least 32 rows: small batches (tests, one model's layers) share one compiled function;
    # a batch smaller than workers chunks is split so that every worker gets one
    nb = bucket_size(n)
    cb = min(bucket_size(-(-N // workers), lo=32), bucket_size(settings.chunk_size))
    grids = settings.grids()
    solver = settings.solver()
    fit, c1 = _compiled(
        ("fit", tuple(solver.items()), settings.b_grid, settings.u_grid, nb, cb),
        lambda *a: fit_batch(*a, **solver),
        [(cb, nb)] * 3 + [g.shape for g in grids],
    )
    drop, c2 = _compiled(
        ("sse_drop", nb, cb),
        lambda *a: (sse_drop_batch(*a),),
        [(cb, nb)] * 3 + [(cb, N_PARAMS), (cb,)],
    )

    def both(tn, yn, w, *grids):
        z, sse, n_iter, conv, jtj = fit(tn, yn, w, *grids)
        return z, sse, n_iter, jtj, drop(tn, yn, w, z, sse)[0]

    state = _gather(_run_chunks(both, (tn, yn, w), cb, nb, grids, workers))
    return state, c1 + c2


def _later_rounds(settings: FitSettings, cols, state, stop_at, workers: int):
    """Rounds 2 .. max_rounds on the rows that have not stopped (`FitSettings`, module
    docstring). cols = (tn, yn, w) [N, n]; state = (z, sse, n_iter, jtj, drop), updated in
    place; stop_at(drop, sse, rows) -> bool: the stopping rule for those rows.
    Returns the rounds each row ran (1 for the first round alone), which rows stopped
    because a round gained less than the stopping rule, and the compile seconds."""
    z, sse, n_iter, jtj, drop = state
    N, n = cols[0].shape
    nb = bucket_size(n)
    rounds = np.ones(N, np.int64)
    stalled = np.zeros(N, bool)
    go = ~stop_at(drop, sse, np.arange(N)) & np.isfinite(sse) & np.all(np.isfinite(z), 1)
    solver = settings.round_solver()
    seconds = 0.0
    for r in range(2, settings.max_rounds + 1):
        idx = np.flatnonzero(go)
        if idx.size == 0:
            break
        # curves with similar drops share a call: a call's loops run until its slowest curve
        # stops, and near-converged curves stop after a few steps
        with np.errstate(all="ignore"):
            idx = idx[np.argsort(drop[idx] / sse[idx], kind="stable")]
        cb = round_rows(idx.size, settings.round_chunk_size, workers)
        fn, sec = _compiled(
            ("round", tuple(solver.items()), nb, cb),
            lambda *a: refine_batch(*a, **solver),
            [(cb, nb)] * 3 + [(cb, N_PARAMS)],
        )
        seconds += sec
        sub = tuple(c[idx] for c in cols)
        z2, sse2, it2, drop2, jtj2 = _gather(
            _run_chunks(fn, sub, cb, nb, (), workers, [(z[idx], _DUMMY_Z)])
        )
        # a round never ends worse than it started (`refine_one`); keep what gained
        before = sse[idx]
        gained = np.isfinite(sse2) & (sse2 < before)
        rows = idx[gained]
        z[rows], sse[rows], jtj[rows] = z2[gained], sse2[gained], jtj2[gained]
        drop[rows] = drop2[gained]
        n_iter[idx] += it2.astype(n_iter.dtype)
        rounds[idx] = r
        # a round that gained less than the stopping rule asks: the SSE stopped decreasing
        # (a round after it would be like it)
        stall = ~(gained & ~stop_at(before - sse2, before, idx))
        stalled[idx] = stall
        go[idx] = ~stall & ~stop_at(drop[idx], sse[idx], idx)
    return rounds, stalled, seconds


def fit_trajectories(
    t, y, mask=None, *, settings: FitSettings | None = None, **options: Any
) -> FitResult:
    """Fit Eq. 9 to every curve at once. t [n] or [N, n] steps >= 0 strictly increasing per
    curve (over unmasked points); y [N, n]; mask [N, n] bool (True = real point).

    NaN/inf points are treated as missing. settings: a `FitSettings` (default FitSettings());
    options: any of its fields by name (n_starts, ..., b_grid, u_grid, max_rounds, chunk_size,
    workers), replacing the one in settings. The result's `settings` says what the fit ran
    with. Curves go through rounds until they meet the stopping rule (module docstring).
    Raises ValueError only for malformed t/y/mask (no curves, no points, complex values, ...)
    or settings, TypeError for an unknown option; every curve gets a `FitStatus`.
    """
    t, y, use = validate_curves(t, y, mask)
    settings = FitSettings.from_options(settings, **options)
    N, n = y.shape
    npts = use.sum(1)
    status = np.full(N, FitStatus.CONVERGED, dtype=np.int64)

    # normalisation (per curve, over usable points); pathological curves get a dummy row
    scale = curve_scale(t, y, use)
    yr = scale[:, 3]
    few = npts < MIN_POINTS
    status[few] = FitStatus.TOO_FEW_POINTS
    status[~few & ~np.isfinite(yr)] = FitStatus.NON_FINITE_INPUT
    status[~few & np.isfinite(yr) & (yr == 0)] = FitStatus.CONSTANT
    live = status == FitStatus.CONVERGED
    tn, yn = normalise_points(t, y, scale, use)
    w = use.astype(np.float64)
    tn[~live], yn[~live], w[~live] = _dummy_curve(n), _dummy_curve(n), 1.0
    lo = scale[:, 2].copy()  # the data's minimum, for constant curves
    scale[~live] = (0.0, 1.0, 0.0, 1.0)
    # SST of the normalised points (of the dummy rows too): the stopping rule's scale
    mean_n = np.sum(w * yn, 1, keepdims=True) / np.sum(w, 1, keepdims=True)
    sst_n = np.sum(w * (yn - mean_n) ** 2, 1)

    def stop_at(drop, sse, rows, rtol=STOP_RTOL, atol=STOP_ATOL):
        return drop <= rtol * sse + atol * sst_n[rows]

    t0 = time.perf_counter()
    state, t_compile = _first_round(settings, tn, yn, w, settings.workers)
    state[4][~live] = 0.0  # dummy rows do not go on
    rounds, stalled, sec = _later_rounds(settings, (tn, yn, w), state, stop_at, settings.workers)
    t_compile += sec
    t_run = time.perf_counter() - t0 - t_compile
    z, sse_n, n_iter, jtj, drop_n = state
    rep, cov, var_par = _map_back(z, sse_n, jtj, scale, npts)
    with np.errstate(over="ignore", under="ignore"):  # a range beyond 1e154 (see _SCALE_HI)
        sse = sse_n * scale[:, 3] ** 2
        drop = drop_n * scale[:, 3] ** 2

    every = np.arange(N)
    short = live & ~stalled & ~stop_at(drop_n, sse_n, every)  # at the round limit
    status[short] = FitStatus.MAX_ITERATIONS
    within = stop_at(MODEL_MARGIN * drop_n, sse_n, every, TOL_RTOL, TOL_ATOL)
    status[short & ~within] = FitStatus.NOT_CONVERGED
    with np.errstate(all="ignore"):
        params = from_reparam(rep)
    # params may overflow (gamma = exp(A2 / A1) on a log-increase curve fitted with beta -> 0)
    # while the fitted curve is fine; only a non-finite Eq. 14 fit counts as failed (in
    # normalised units: a data range near 1e154 overflows the SSE, not the fit)
    bad = live & ~(np.all(np.isfinite(rep), 1) & np.isfinite(sse_n))
    status[bad] = FitStatus.FAILED
    # constant series: a defined result
    const = status == FitStatus.CONSTANT
    rep[const] = np.c_[
        np.zeros((const.sum(), 1)), np.ones((const.sum(), 1)), np.zeros((const.sum(), 2)), lo[const]
    ]  # noqa: E501
    params[const] = from_reparam(rep[const])
    sse[const], n_iter[const], drop[const] = 0.0, 0, 0.0
    cov[const] = 0.0
    var_par[const] = 0.0
    nan_rows = ~(live | const)
    for arr in (rep, params, cov, var_par):
        arr[nan_rows] = np.nan
    sse[nan_rows] = drop[nan_rows] = np.nan
    n_iter[nan_rows] = 0
    rounds[~live] = 0

    with np.errstate(all="ignore"):
        mean = np.sum(np.where(use, y, 0.0), 1) / npts
        sst = np.sum(np.where(use, (y - mean[:, None]) ** 2, 0.0), 1)
        r2 = np.where(const, 1.0, 1.0 - sse / sst)
        aic, bic = information_criteria(sse, npts, N_PARAMS)
        # a data range whose square under- or overflows float64 (|y| ~ 1e-160 makes SST and
        # SSE 0 and R^2 NaN): the same figures from the normalised fit, scale-free
        odd = live & ~((yr > _SCALE_LO) & (yr < _SCALE_HI))
        r2[odd] = 1.0 - sse_n[odd] / sst_n[odd]
        aic_n, bic_n = information_criteria(sse_n, npts, N_PARAMS)
        shift = npts * 2.0 * np.log(yr)  # n log(SSE / n) = n log(SSE_n / n) + 2 n log(yr)
        aic[odd], bic[odd] = aic_n[odd] + shift[odd], bic_n[odd] + shift[odd]
        # Eq. 13 needs a usable Eq. 9 curve: NaN where its parameters overflow (A = inf when
        # beta tau0 > ~710, a fit at the tau0 bound of a curve whose SSE falls all the way there)
        tp = np.where(np.all(np.isfinite(params), 1), t_peak(params), np.nan)
        t_last = np.max(np.where(use, t, -np.inf), 1)
        stderr = np.sqrt(var_par)
        stderr_rep = np.sqrt(np.einsum("nii->ni", cov))
        fitted = (status == FitStatus.CONVERGED) | (status == FitStatus.MAX_ITERATIONS)
        lam_t0 = np.abs(params[:, 1] * params[:, 3])
        degenerate = fitted & ~(np.all(np.isfinite(params), 1) & (lam_t0 <= DEGENERATE_LAM_T0))
    return FitResult(
        params=params, reparam=rep, sse=sse, r2=r2, aic=aic, bic=bic,
        n_iter=n_iter.astype(np.int64), status=status, t_peak=tp,
        peak_observable=(tp > 0) & (tp <= t_last), stderr=stderr,
        compile_seconds=t_compile, run_seconds=t_run, cov=cov, n_points=npts,
        stderr_reparam=stderr_rep, degenerate=degenerate, settings=settings,
        rounds=rounds, sse_drop=drop, y_range=np.c_[scale[:, 2], scale[:, 2] + scale[:, 3]],
    )  # fmt: skip
