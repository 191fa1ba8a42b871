"""What a batched fit returns: `FitResult`, the per-curve `FitStatus` and the constants they
state (the stopping rule, the tolerance, the degenerate-fit limits), the map of normalised
fits back to the data's units (`_map_back`) and the information criteria.

Host-side numpy only; `_fit` builds the result, `_hypotheses` shares the statuses and criteria.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._core import N_PARAMS
from ._formulas import (
    PARAM_NAMES,
    REPARAM_NAMES,
    curve_reparam,
    from_reparam_jacobian,
    jacobian_reparam,
)
from ._normalise import denormalise_jacobian, denormalise_reparam
from ._settings import FitSettings

MIN_POINTS = 6
# |lam t0| above this: A = A1 exp(lam t0) > 5e21 A1, the original parameters are not usable
DEGENERATE_LAM_T0 = 50.0
# a degenerate fit keeps K (FitResult.usable) where K lies within this many data ranges of the
# data, and its standard error is at most K_MAX_STDERR data ranges
K_RANGE_MARGIN, K_MAX_STDERR = 0.5, 0.1
# the stopping rule: the SSE can drop by at most STOP_RTOL SSE + STOP_ATOL SST (`_refine.sse_drop`)
STOP_RTOL, STOP_ATOL = 1e-8, 1e-15
# the tolerance: MAX_ITERATIONS only where the SSE can drop by at most TOL_RTOL SSE + TOL_ATOL SST,
# that is where MODEL_MARGIN times the model's sse_drop is within it: the later rounds gained up
# to 2-3x what the local model promised (in valleys falling like exp(-u) towards a bound, the
# Newton decrement is half the drop; measured on the benchmark corpus)
TOL_RTOL, TOL_ATOL = 1e-6, 1e-12
MODEL_MARGIN = 10.0


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
