"""Batched fits of Eq. 9 (through Eq. 14) to every trajectory in jit-compiled JAX calls.

The host side: input checks, per-curve normalisation (`_normalise`) and pathological-curve
statuses, shape buckets and the compiled-function cache (keyed by `FitSettings`, `_settings`),
the rounds, mapping results back, and `FitResult`. The per-curve algorithm (grid, variable
projection, Newton, Levenberg-Marquardt, the later rounds and the stopping test) is in `_core`.

Rounds: every curve gets the first round (`_core.fit_batch`); then `_core.sse_drop` says how
far each one's SSE could still drop by the local model. A curve stops when that is at most
STOP_RTOL of its SSE (+ STOP_ATOL of its SST). The others go on, compacted into a smaller
batch (padded to few row counts: 8, 32, 128, ... rows), for further rounds
(`_core.refine_batch`: Gauss-Newton, Newton and LM steps) until they meet that rule or a
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

import enum
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from ._core import N_PARAMS, fit_batch, refine_batch, sse_drop_batch
from ._formulas import (
    PARAM_NAMES,
    REPARAM_NAMES,
    curve,
    curve_reparam,
    from_reparam,
    from_reparam_jacobian,
    jacobian_reparam,
    t_peak,
)
from ._normalise import curve_scale, denormalise_jacobian, denormalise_reparam, normalise_points
from ._settings import FitSettings

__all__ = [
    "DEGENERATE_LAM_T0", "K_MAX_STDERR", "K_RANGE_MARGIN", "FitResult", "FitSettings",
    "FitStatus", "curve", "fit_trajectories",
]  # fmt: skip

MIN_POINTS = 6
# |lam t0| above this: A = A1 exp(lam t0) > 5e21 A1, the original parameters are not usable
DEGENERATE_LAM_T0 = 50.0
# a degenerate fit keeps K (FitResult.usable) where K lies within this many data ranges of the
# data, and its standard error is at most K_MAX_STDERR data ranges
K_RANGE_MARGIN, K_MAX_STDERR = 0.5, 0.1
# the stopping rule: the SSE can drop by at most STOP_RTOL SSE + STOP_ATOL SST (`_core.sse_drop`)
STOP_RTOL, STOP_ATOL = 1e-8, 1e-15
# the tolerance: MAX_ITERATIONS only where the SSE can drop by at most TOL_RTOL SSE + TOL_ATOL SST,
# that is where MODEL_MARGIN times the model's sse_drop is within it: the later rounds gained up
# to 2-3x what the local model promised (in valleys falling like exp(-u) towards a bound, the
# Newton decrement is half the drop; measured on the benchmark corpus)
TOL_RTOL, TOL_ATOL = 1e-6, 1e-12
MODEL_MARGIN = 10.0
# data scales whose squares lose precision in float64: R^2 and AIC from the normalised fit
_SCALE_LO, _SCALE_HI = 1e-150, 1e150


class FitStatus(enum.IntEnum):
    """Every curve's outcome. CONVERGED and MAX_ITERATIONS are fits to use (`FitResult.ok`);
    NOT_CONVERGED is the best fit found, not a minimum; the others have no fit (NaN), except
    CONSTANT, which has an exact one. `label` is the name in words, `message` what it means.
    """

    CONVERGED = 0
    MAX_ITERATIONS = 1
    TOO_FEW_POINTS = 2
    NON_FINITE_INPUT = 3
    FAILED = 4
    CONSTANT = 5
    NOT_CONVERGED = 6

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def label(self) -> str:
        """The name in words: "converged", "max iterations", ..."""
        return self.name.lower().replace("_", " ")


_MESSAGES = {
    FitStatus.CONVERGED: (
        f"converged: by the local model the SSE cannot drop by more than {STOP_RTOL:g} of "
        f"itself (+ {STOP_ATOL:g} SST), or a further round gained less than that"
    ),
    FitStatus.MAX_ITERATIONS: (
        "stopped at the round limit while still gaining, with an SSE that can drop by at "
        f"most {TOL_RTOL:g} of itself (+ {TOL_ATOL:g} SST) by the local model: usable"
    ),
    FitStatus.TOO_FEW_POINTS: f"fewer than {MIN_POINTS} usable (finite, unmasked) points",
    FitStatus.NON_FINITE_INPUT: "the data's range overflows float64; cannot normalise",
    FitStatus.FAILED: "the fit produced non-finite parameters or SSE",
    FitStatus.CONSTANT: "constant series: A = 0 and K = the constant, other parameters arbitrary",
    FitStatus.NOT_CONVERGED: (
        "stopped at the round limit while still gaining, with an SSE that could still drop "
        f"by more than {TOL_RTOL:g} of itself: the best parameters found, not a minimum"
    ),
}


# --------------------------------------------------------------------------- host side

# (program, its settings, padded curve length, rows per call) -> compiled executable
_COMPILED: dict[tuple, object] = {}


def _compile(lowered):
    """XLA compile. On the CPU the legacy elemental emitters compile this many-small-fusions
    program ~30% faster than the MLIR fusion emitters at the same run time (measured)."""
    if jax.default_backend() != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options={"xla_cpu_use_fusion_emitters": False})
    except Exception:  # an XLA without the option: its default
        return lowered.compile()


def _compiled(key, fn, specs) -> tuple[object, float]:
    """The compiled fn for argument shapes `specs` (cached under key), and the seconds spent
    compiling it now (0.0 when cached)."""
    exe = _COMPILED.get(key)
    if exe is not None:
        return exe, 0.0
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        spec = [jax.ShapeDtypeStruct(shape, jnp.float64) for shape in specs]
        exe = _compile(jax.jit(fn).lower(*spec))
    _COMPILED[key] = exe
    return exe, time.perf_counter() - t0


def bucket_size(x: int, lo: int = 8) -> int:
    """Smallest m * 2**k >= x with m in {4, 5, 6, 7}: at most ~25% padding, few shapes."""
    x = max(int(x), lo)
    k = max(x.bit_length() - 3, 0)
    while True:
        for m in (4, 5, 6, 7, 8):
            if m << k >= x:
                return m << k
        k += 1


def round_rows(k: int, chunk: int, workers: int) -> int:
    """Rows per call of a later round for k curves: 8, 32, 128, ... (x4: few compiled shapes
    as the batch shrinks from round to round) enough for one call per worker, at most
    `chunk`'s bucket (`FitSettings.round_chunk_size`)."""
    cb, cap = 8, bucket_size(chunk)
    while cb * workers < k and cb < cap:
        cb *= 4
    return min(cb, cap)


def _dummy_curve(n: int) -> np.ndarray:
    """A harmless curve for rows that carry no real curve (pathological inputs, padding)."""
    return np.linspace(0.0, 1.0, n)


# a harmless z (b, u, A1, A2, K) for padding rows of the later rounds
_DUMMY_Z = np.array([1.0, 0.0, 1.0, 0.0, 0.0])


def _run_chunks(fn, cols, cb: int, nb: int, consts, workers: int, extra=()) -> list[list]:
    """The compiled fn over row chunks of cols = (tn, yn, w), each [N, n], padded to [cb, nb]
    (padding rows get a dummy curve), then extra per-curve arrays [N, ...] (padded with their
    paired fill row), then the shared consts.

    Up to `workers` chunks run at once, one XLA execution each, from a thread pool (XLA
    releases the GIL). On the CPU one execution of this program of many small kernels leaves
    the cores idle between kernels; two in flight were measured 1.3x faster on 2 cores.
    Each chunk is computed independently, so results do not depend on workers.
    """
    N, n = cols[0].shape

    def run(start: int) -> list[np.ndarray]:
        k = min(cb, N - start)
        args = [np.zeros((cb, nb)) for _ in cols]
        for dst, src in zip(args, cols):
            dst[:k, :n] = src[start : start + k]
        for dst in args[:2]:
            dst[k:, :n] = _dummy_curve(n)
        args[2][k:, :n] = 1.0
        for arr, fill in extra:
            pad = np.empty((cb, *arr.shape[1:]))
            pad[:k], pad[k:] = arr[start : start + k], fill
            args.append(pad)
        with jax.enable_x64(True):  # thread-local: set in the worker too
            return [np.asarray(x)[:k] for x in fn(*args, *consts)]

    starts = range(0, N, cb)
    if workers == 1 or len(starts) == 1:
        return [run(s) for s in starts]
    with ThreadPoolExecutor(min(workers, len(starts))) as pool:
        return list(pool.map(run, starts))


def _gather(outs) -> list[np.ndarray]:
    """Per-chunk outputs -> one array per output, rows in order (writable copies)."""
    return [np.concatenate(x) for x in zip(*outs)]


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


@dataclass
class FitResult:
    """Per-curve fits of Eq. 9. Arrays have N rows (one per curve).

    What is well determined: the fitted curve (sse, r2, `evaluate`) and the Eq. 14 parameters
    `reparam` (beta, tau0, A1, A2, K) with their `cov`. The original parameters `params`
    (A, lam, gamma, t0, K) are an exact but ill-conditioned map of them: gamma = exp(A2 / A1)
    overflows to inf on log-increase curves (beta -> 0), and A = A1 exp(beta tau0) reaches
    1e60-1e100 when lam t0 = beta tau0 ~ 150-230 (seen on real mini-suite curves whose peak lies
    at the first checkpoint), where A, lam and t0 trade off against each other along the data.
    `degenerate` [N] bool flags fitted curves (converged or max-iterations) whose `params` are
    non-finite or have |lam t0| > `DEGENERATE_LAM_T0`: use reparam (or drop the row) there.
    `rounds` [N]: the rounds each curve ran (1: the first round sufficed; 0: not fitted);
    `sse_drop` [N]: how far the SSE could still drop by the local model at the result (data
    units; the stopping rule and the statuses compare it with the SSE, see `FitStatus`).
    """

    params: np.ndarray  # [N, 5] (A, lam, gamma, t0, K)
    reparam: np.ndarray  # [N, 5] (beta, tau0, A1, A2, K)
    sse: np.ndarray
    r2: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    t_peak: np.ndarray  # Eq. 13; NaN where lam <= 0 or the Eq. 9 parameters are not finite
    peak_observable: np.ndarray
    stderr: np.ndarray  # [N, 5] of params (delta method from the Eq. 14 covariance)
    compile_seconds: float
    run_seconds: float
    cov: np.ndarray = field(repr=False, default=None)  # [N, 5, 5] covariance of reparam
    n_points: np.ndarray = field(repr=False, default=None)  # [N] usable points
    stderr_reparam: np.ndarray = field(repr=False, default=None)  # [N, 5]
    degenerate: np.ndarray = field(repr=False, default=None)  # [N] bool, see the docstring
    settings: FitSettings | None = field(repr=False, default=None)  # what the fit ran with
    rounds: np.ndarray = field(repr=False, default=None)  # [N] rounds run (0: not fitted)
    sse_drop: np.ndarray = field(repr=False, default=None)  # [N] SSE drop the model allows
    y_range: np.ndarray = field(repr=False, default=None)  # [N, 2] min, max of the used points

    def status_counts(self) -> dict[str, int]:
        """Curves per status by name, in `FitStatus` order, statuses that occur only:
        {"converged": 24, "max iterations": 2} (`FitStatus.message` says what each means)."""
        codes, counts = np.unique(np.asarray(self.status), return_counts=True)
        return {FitStatus(int(c)).label: int(n) for c, n in zip(codes, counts)}

    def ok(self) -> np.ndarray:
        """[N] bool: converged, or stopped at max-iterations with finite parameters (its SSE
        within the tolerance of a minimum; NOT_CONVERGED fits are not ok).

        A converged log-increase curve can have beta -> 0 and gamma = exp(A2 / A1) = inf: its
        Eq. 14 fit is fine but its Eq. 9 parameters are not usable as numbers; use
        ok() & ~degenerate to select rows whose `params` are usable (see the class docstring)."""
        finite = np.all(np.isfinite(self.params), axis=1)
        conv = self.status == FitStatus.CONVERGED
        return conv | ((self.status == FitStatus.MAX_ITERATIONS) & finite)

    def usable(self) -> np.ndarray:
        """[N, 5] bool, PARAM_NAMES order: which Eq. 9 parameters of each curve are usable as
        numbers (to predict from architecture, to compare across curves).

        All five where ok() & ~degenerate. In a degenerate fit, K alone, where it is finite,
        within `K_RANGE_MARGIN` data ranges of the data (`y_range`) and its standard error is
        at most `K_MAX_STDERR` data ranges. K is an Eq. 14 parameter itself: the level the
        curve settles at. A curve that rises and levels off inside the window fixes it, while
        its peak (A, lam, gamma, t0) lies beyond the data (gamma at its lower bound, A and lam
        trading off). A curve still rising at the end (beta -> 0) gets a K far beyond its data
        (1e5 on a log-increase of range 40), traded against A2: not kept."""
        ok = self.ok()
        full = ok & ~self.degenerate
        k, se = self.params[:, 4], self.stderr_reparam[:, 4]
        k_only = np.zeros_like(full)
        if self.y_range is not None:
            lo, hi = self.y_range[:, 0], self.y_range[:, 1]
            span = hi - lo
            with np.errstate(invalid="ignore"):
                near = (k >= lo - K_RANGE_MARGIN * span) & (k <= hi + K_RANGE_MARGIN * span)
                k_only = ok & self.degenerate & np.isfinite(k) & near & (se <= K_MAX_STDERR * span)
        out = np.repeat(full[:, None], len(PARAM_NAMES), axis=1)
        out[:, PARAM_NAMES.index("K")] |= k_only
        return out & np.isfinite(self.params)

    def evaluate(self, t, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fitted curves at t ([m] or [N, m]) with a pointwise confidence band (delta method,
        Student t with n - 5 degrees of freedom). Returns (y, lo, hi), each [N, m]."""
        t = np.asarray(t, dtype=np.float64)
        yhat = _eval_reparam(t, self.reparam, self.status)
        jac = jacobian_reparam(t, self.reparam)  # [N, m, 5]
        var = np.einsum("nmi,nij,nmj->nm", jac, self.cov, jac)
        dof = np.maximum(self.n_points - N_PARAMS, 1)
        q = stats.t.ppf(0.5 + level / 2, dof)[:, None]
        half = q * np.sqrt(np.maximum(var, 0.0))
        return yhat, yhat - half, yhat + half

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per curve."""
        cols = {f"{n}": self.params[:, i] for i, n in enumerate(PARAM_NAMES)}
        cols.update({f"{n}_stderr": self.stderr[:, i] for i, n in enumerate(PARAM_NAMES)})
        cols.update({n: self.reparam[:, i] for i, n in enumerate(REPARAM_NAMES[:4])})
        cols.update(
            sse=self.sse, r2=self.r2, aic=self.aic, bic=self.bic, n_iter=self.n_iter,
            n_points=self.n_points, t_peak=self.t_peak, peak_observable=self.peak_observable,
            status=[FitStatus(s).name.lower() for s in self.status], ok=self.ok(),
            degenerate=self.degenerate, rounds=self.rounds, sse_drop=self.sse_drop,
            K_usable=self.usable()[:, PARAM_NAMES.index("K")],
        )  # fmt: skip
        return pd.DataFrame(cols)


def _eval_reparam(t, reparam, status):
    y = curve_reparam(t, reparam)
    const = status == FitStatus.CONSTANT
    if const.any():  # exact constant, whatever the (arbitrary) shape parameters say
        y[const] = reparam[const, 4, None]
    return y


def _map_back(z, sse_n, jtj, scale, npts):
    """Normalised fits -> Eq. 14 parameters in the data's units, their covariance [N, 5, 5]
    (curve_fit's pcov, s^2 (J^T J)^-1 with s^2 = SSE / (n - 5), mapped by the delta method)
    and the variances of the Eq. 9 parameters [N, 5]. z holds u = log tau0, not tau0."""
    with np.errstate(all="ignore"):
        tau = np.exp(z[:, 1])
        zt = np.concatenate([z[:, :1], tau[:, None], z[:, 2:]], 1)
        rep = denormalise_reparam(zt, scale)
        d_rep = denormalise_jacobian(zt, scale)  # d rep / d z
        d_rep[:, 1, 1] *= tau  # d tau0_n / d u = tau0_n; no other entry depends on it
        finite = np.all(np.isfinite(jtj), (1, 2))
        ridge = 1e-12 * np.max(np.abs(np.diagonal(jtj, 0, 1, 2)), 1) + 1e-300
        m = np.where(finite[:, None, None], jtj, np.eye(N_PARAMS))
        cov_z = np.linalg.inv(m + ridge[:, None, None] * np.eye(N_PARAMS))
        cov_z *= (sse_n / np.maximum(npts - N_PARAMS, 1))[:, None, None]
        cov_z[~finite] = np.nan
        cov = d_rep @ cov_z @ np.swapaxes(d_rep, 1, 2)
        d_par = from_reparam_jacobian(rep) @ d_rep
        var_par = np.einsum("nij,njk,nik->ni", d_par, cov_z, d_par)
    return rep, cov, var_par


def information_criteria(sse, n, k):
    """Gaussian AIC and BIC from the SSE: n log(SSE/n) + 2k and n log(SSE/n) + k log n."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = n * np.log(np.asarray(sse) / n)
        return ll + 2 * k, ll + k * np.log(n)


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
