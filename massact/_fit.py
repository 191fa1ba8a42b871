"""Batched fits of Eq. 9 (through Eq. 14) to every trajectory in one jit-compiled JAX call.

Per curve (vmapped, float64, on normalised data t_n in [0, 1], y_n in [0, 1]):

1. Grid over the two nonlinear parameters (beta, tau0) with the linear ones (A1, A2, K) solved
   in closed form (masked least squares, a 3x3 solve): the problem is separable.
2. Variable projection: Levenberg-Marquardt over (beta, log tau0) only, from the best grid
   points, with the linear part re-solved at every step (2x2 damped solve), then a few damped
   Newton steps (exact 2x2 Hessian) from the best: in flat valleys of the projected SSE
   Gauss-Newton's J^T J overestimates the curvature by orders of magnitude and crawls.
3. Levenberg-Marquardt polish on all five parameters (5x5 damped solve, analytic Jacobian),
   accepting only steps that lower the SSE.

beta >= 0 (lam >= 0) is kept by projection and x > 0 on the data by tau0 = exp(u) > -t_min.
We write the damped Gauss-Newton steps ourselves instead of using jaxopt's LevenbergMarquardt:
jaxopt's LM has no bounds (lam >= 0 needs an active set / projection between steps) and no
separable (variable projection) mode, and a plain jaxopt LM from the paper's single start
reached mean R^2 0.13 where scipy reached 0.93 (shared/FACTS.md). The small systems are solved
by unrolled Cholesky (`_chol`): batched LAPACK calls on 3x3/5x5 systems were slower on the CPU.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from ._curves import (
    PARAM_NAMES,
    REPARAM_NAMES,
    curve,
    from_reparam,
    jacobian_reparam,
    jfrom_reparam,
    jjacobian_reparam,
    t_peak,
)

__all__ = ["DEGENERATE_LAM_T0", "FitResult", "FitStatus", "curve", "fit_trajectories"]

MIN_POINTS = 6
N_PARAMS = 5
# |lam t0| above this: A = A1 exp(lam t0) > 5e21 A1, the original parameters are not usable
DEGENERATE_LAM_T0 = 50.0
_NEWTON_ITER = 6  # exact-Hessian steps after variable projection (see _fit_one)
_B_MIN = 1e-6  # lower bound of normalised beta during variable projection (see _basis)


class FitStatus(enum.IntEnum):
    CONVERGED = 0
    MAX_ITERATIONS = 1
    TOO_FEW_POINTS = 2
    NON_FINITE_INPUT = 3
    FAILED = 4
    CONSTANT = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    FitStatus.CONVERGED: "converged: the SSE stopped decreasing",
    FitStatus.MAX_ITERATIONS: "stopped at the iteration limit; parameters are the best found",
    FitStatus.TOO_FEW_POINTS: f"fewer than {MIN_POINTS} usable (finite, unmasked) points",
    FitStatus.NON_FINITE_INPUT: "the data's range overflows float64; cannot normalise",
    FitStatus.FAILED: "the fit produced non-finite parameters or SSE",
    FitStatus.CONSTANT: "constant series: A = 0 and K = the constant, other parameters arbitrary",
}


# --------------------------------------------------------------------------- per-curve core


def _chol(a):
    """Unrolled Cholesky factor of a small SPD matrix [p, p] (p static), as nested lists.

    Elementwise scalar code: under vmap it fuses into a few vector kernels, where batched
    LAPACK calls on 2x2..5x5 systems cost far more on the CPU.
    """
    p = a.shape[0]
    lo = [[None] * p for _ in range(p)]
    for i in range(p):
        for j in range(i + 1):
            acc = a[i, j] - sum(lo[i][k] * lo[j][k] for k in range(j))
            lo[i][j] = jnp.sqrt(jnp.maximum(acc, 1e-300)) if i == j else acc / lo[j][j]
    return lo


def _chol_apply(lo, b):
    """Solve (L L^T) x = b given `_chol`'s factor."""
    p = len(lo)
    x = [None] * p
    for i in range(p):  # forward: L z = b
        x[i] = (b[i] - sum(lo[i][k] * x[k] for k in range(i))) / lo[i][i]
    for i in reversed(range(p)):  # backward: L^T x = z
        x[i] = (x[i] - sum(lo[k][i] * x[k] for k in range(i + 1, p))) / lo[i][i]
    return jnp.stack(x)


def _chol_solve(a, b):
    return _chol_apply(_chol(a), b)


def _chol_inv(a):
    """Inverse of a small SPD matrix [p, p], column by column from one factorisation."""
    lo, eye = _chol(a), jnp.eye(a.shape[0], dtype=a.dtype)
    return jnp.stack([_chol_apply(lo, eye[i]) for i in range(a.shape[0])], -1)


def _basis(tn, b, u):
    """[n, 3] columns spanning Eq. 14 for fixed (b, tau = exp(u)).

    exp(-b t) A2 + K is written as c2 (1 - exp(-b t)) / b + c3: same span for b > 0, but well
    conditioned as b -> 0 (where exp(-b t) and 1 become collinear).
    """
    e = jnp.exp(-b * tn)
    phi2 = -jnp.expm1(-b * tn) / b
    return jnp.stack([e * jnp.log(tn + jnp.exp(u)), phi2, jnp.ones_like(tn)], -1)


def _linear(tn, yn, w, b, u):
    """Masked least squares for the linear part: coefficients [3] and weighted residual [n]."""
    return _linear_full(tn, yn, w, b, u)[:2]


def _linear_full(tn, yn, w, b, u):
    phi = _basis(tn, b, u)
    pw = phi * w[:, None]
    g = pw.T @ phi
    lo = _chol(g + (1e-13 * jnp.trace(g) + 1e-300) * jnp.eye(3))
    c = _chol_apply(lo, pw.T @ yn)
    return c, w * (yn - phi @ c), phi, pw, lo


def _vp_jacobian(tn, w, b, u, c, phi, pw, lo):
    """Kaufman's variable-projection Jacobian d r / d (b, u) [n, 2]:
    -W (I - Phi (Phi^T W Phi)^-1 Phi^T W) (d Phi / d theta) c."""
    tau = jnp.exp(u)
    e = jnp.exp(-b * tn)
    lg = jnp.log(tn + tau)
    v_b = c[0] * (-tn * e * lg) + c[1] * (tn * e - phi[:, 1]) / b
    v_u = c[0] * e * tau / (tn + tau)
    cols = [-w * (v - phi @ _chol_apply(lo, pw.T @ v)) for v in (v_b, v_u)]
    return jnp.stack(cols, -1)


def _to_z(b, u, c):
    """(b, u, basis coefficients) -> z = (b, u, A1, A2, K) in normalised units."""
    a2 = -c[1] / b
    return jnp.stack([b, u, c[0], a2, c[2] - a2])


def _z_residual(tn, yn, w, z):
    r = jnp.stack([z[0], jnp.exp(z[1]), z[2], z[3], z[4]])
    return w * (yn - jnp.exp(-r[0] * tn) * (r[2] * jnp.log(tn + r[1]) + r[3]) - r[4])


def _z_jacobian(tn, w, z):
    """d residual / d z [n, 5] (analytic; column 1 by the chain rule through tau = exp(u))."""
    tau = jnp.exp(z[1])
    jr = jjacobian_reparam(tn, jnp.stack([z[0], tau, z[2], z[3], z[4]]))
    return -w[:, None] * jr * jnp.array([1.0, 0.0, 1.0, 1.0, 1.0]).at[1].set(tau)


def _lm_step(jtj, g, mu, free):
    """Damped Gauss-Newton step solving (J^T J + mu diag(J^T J)) d = -J^T r over the free
    parameters (free [p] in {0, 1}); parameters held at a bound get d = 0."""
    d = jnp.diag(jtj)
    a = jtj * free[:, None] * free[None, :] + jnp.diag(1.0 - free)
    a = a + jnp.diag(free * (mu * d + 1e-12 * jnp.max(d) + 1e-300))
    return -_chol_solve(a, g * free)


def _bounded_step(jtj, g, mu, x, lo, hi):
    """LM step within the box lo <= x <= hi: a parameter at a bound whose descent direction
    (-g) points outward is held (d = 0), then the result is projected on the box."""
    held = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
    return jnp.clip(x + _lm_step(jtj, g, mu, jnp.where(held, 0.0, 1.0)), lo, hi)


def _fit_one(tn, yn, w, b_grid, u_grid, *, n_starts, vp_iter, lm_iter):
    """Fit one normalised curve. Returns z [5], sse, n_iter, converged, cov_z [5, 5]."""
    # tau may approach 0 (a log singularity at the first point): scipy goes there too
    u_lo, u_hi = -700.0, jnp.log(1e3)
    vp_lo, vp_hi = jnp.array([_B_MIN, u_lo]), jnp.array([1e4, u_hi])
    inf = jnp.inf
    z_lo, z_hi = jnp.array([0.0, u_lo, -inf, -inf, -inf]), jnp.array([1e4, u_hi, inf, inf, inf])

    # 1. grid over (b, u); scan over b keeps the intermediate at [n_u, n, 3]
    def grid_row(_, b):
        sse = jax.vmap(lambda u: jnp.sum(_linear(tn, yn, w, b, u)[1] ** 2))(u_grid)
        return None, jnp.where(jnp.isfinite(sse), sse, jnp.inf)

    _, sse_grid = jax.lax.scan(grid_row, None, b_grid)
    # starts: the beta grid is cut into n_starts bands and each band gives its best grid point,
    # so the starts cover every decay scale (neighbouring points of one basin would not)
    row_best = jnp.argmin(sse_grid, axis=1)
    row_sse = jnp.min(sse_grid, axis=1)
    band = (np.arange(b_grid.shape[0]) * n_starts) // b_grid.shape[0]
    rows = jnp.stack([jnp.argmin(jnp.where(band == k, row_sse, jnp.inf)) for k in range(n_starts)])
    bu0 = jnp.stack([b_grid[rows], u_grid[row_best[rows]]], -1)

    # 2. variable projection LM over theta = (b, u)
    def vp_res(theta):
        return _linear(tn, yn, w, theta[0], theta[1])[1]

    def vp_run(theta):
        def body(i, s):
            theta, sse, mu, last = s
            c, r, phi, pw, lo = _linear_full(tn, yn, w, theta[0], theta[1])
            j = _vp_jacobian(tn, w, theta[0], theta[1], c, phi, pw, lo)
            new = _bounded_step(j.T @ j, j.T @ r, mu, theta, vp_lo, vp_hi)
            sse_new = jnp.sum(vp_res(new) ** 2)
            ok = jnp.isfinite(sse_new) & (sse_new < sse)
            gain = ok & (sse - sse_new > 1e-12 * sse)
            return (
                jnp.where(ok, new, theta),
                jnp.where(ok, sse_new, sse),
                jnp.where(ok, mu * 0.3, mu * 4.0),
                jnp.where(gain, i + 1, last),
            )

        sse0 = jnp.sum(vp_res(theta) ** 2)
        return jax.lax.fori_loop(0, vp_iter, body, (theta, sse0, 1e-3, 0))

    thetas, sses, _, lasts = jax.vmap(vp_run)(bu0)
    best = jnp.argmin(jnp.where(jnp.isfinite(sses), sses, jnp.inf))
    theta, last_vp = thetas[best], lasts[best]

    # 2b. Newton on the projected SSE (exact Hessian) from the best: Gauss-Newton's J^T J
    # misses the residual curvature and crawls along flat valleys near the minimum
    def vp_sse(theta):
        return jnp.sum(vp_res(theta) ** 2)

    def newton(i, s):
        theta, sse, mu = s
        new = _bounded_step(
            jax.hessian(vp_sse)(theta), jax.grad(vp_sse)(theta), mu, theta, vp_lo, vp_hi
        )
        sse_new = vp_sse(new)
        ok = jnp.isfinite(sse_new) & (sse_new < sse)
        return (
            jnp.where(ok, new, theta),
            jnp.where(ok, sse_new, sse),
            jnp.where(ok, mu * 0.1, mu * 10.0),
        )

    theta = jax.lax.fori_loop(0, _NEWTON_ITER, newton, (theta, sses[best], 1e-4))[0]
    c, r = _linear(tn, yn, w, theta[0], theta[1])
    z0 = _to_z(theta[0], theta[1], c)

    # 3. LM polish on all five parameters; b >= 0 by projection
    def body(i, s):
        z, sse, mu, last, rel = s
        r = _z_residual(tn, yn, w, z)
        j = _z_jacobian(tn, w, z)
        new = _bounded_step(j.T @ j, j.T @ r, mu, z, z_lo, z_hi)
        sse_new = jnp.sum(_z_residual(tn, yn, w, new) ** 2)
        ok = jnp.isfinite(sse_new) & (sse_new < sse)
        gain = ok & (sse - sse_new > 1e-12 * sse)
        return (
            jnp.where(ok, new, z),
            jnp.where(ok, sse_new, sse),
            jnp.where(ok, mu * 0.3, mu * 4.0),
            jnp.where(gain, i + 1, last),
            jnp.where(ok, (sse - sse_new) / jnp.maximum(sse, 1e-300), rel),
        )

    sse0 = jnp.sum(_z_residual(tn, yn, w, z0) ** 2)
    z, sse, mu, last_lm, rel = jax.lax.fori_loop(0, lm_iter, body, (z0, sse0, 1e-3, 0, 0.0))
    n_iter = last_vp + last_lm
    # converged: the last accepted step gained < 1e-8 relative, or no step can gain any more
    # (damping grew huge: a minimum), or the fit is exact (noiseless data)
    converged = (rel < 1e-8) | (mu > 1e8) | (sse <= 1e-24 * jnp.sum(w))

    # covariance as curve_fit's pcov: s^2 (J^T J)^+ with s^2 = SSE / (n - p)
    j = _z_jacobian(tn, w, z)
    dof = jnp.maximum(jnp.sum(w) - N_PARAMS, 1.0)
    jtj = j.T @ j
    cov = _chol_inv(jtj + 1e-12 * jnp.max(jnp.diag(jtj)) * jnp.eye(N_PARAMS)) * (sse / dof)
    return z, sse, n_iter, converged, cov


def _to_data_units(z, scale):
    """z (normalised: b, log tau, A1, A2, K) -> Eq. 14 parameters in the data's units."""
    a, s, lo, yr = scale
    b, tau = z[0], jnp.exp(z[1])
    g = yr * jnp.exp(b * a / s)
    return jnp.stack([b / s, s * tau - a, g * z[2], g * (z[3] - z[2] * jnp.log(s)), lo + yr * z[4]])


def _batch(tn, yn, w, scale, b_grid, u_grid, *, n_starts, vp_iter, lm_iter):
    """vmapped over curves: everything the FitResult needs from the device."""

    def one(tn, yn, w, scale):
        z, sse, n_iter, conv, cov_z = _fit_one(
            tn, yn, w, b_grid, u_grid, n_starts=n_starts, vp_iter=vp_iter, lm_iter=lm_iter
        )
        rep = _to_data_units(z, scale)
        d_rep = jax.jacfwd(_to_data_units)(z, scale)
        d_par = jax.jacfwd(lambda zz: jfrom_reparam(_to_data_units(zz, scale)))(z)
        cov_rep = d_rep @ cov_z @ d_rep.T
        var_par = jnp.diag(d_par @ cov_z @ d_par.T)
        return rep, sse * scale[3] ** 2, n_iter, conv, cov_rep, var_par

    return jax.vmap(one)(tn, yn, w, scale)


# --------------------------------------------------------------------------- host side

_COMPILED: dict[tuple, object] = {}


def _bucket(x: int, lo: int = 8) -> int:
    """Smallest m * 2**k >= x with m in {4, 5, 6, 7}: at most ~25% padding, few shapes."""
    x = max(int(x), lo)
    k = max(x.bit_length() - 3, 0)
    while True:
        for m in (4, 5, 6, 7, 8):
            if m << k >= x:
                return m << k
        k += 1


def _validate(t, y, mask):
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"y must be [N, n] (one row per curve), got shape {y.shape}")
    t = np.asarray(t, dtype=np.float64)
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
    """

    params: np.ndarray  # [N, 5] (A, lam, gamma, t0, K)
    reparam: np.ndarray  # [N, 5] (beta, tau0, A1, A2, K)
    sse: np.ndarray
    r2: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    n_iter: np.ndarray
    status: np.ndarray
    t_peak: np.ndarray
    peak_observable: np.ndarray
    stderr: np.ndarray  # [N, 5] of params (delta method from the Eq. 14 covariance)
    compile_seconds: float
    run_seconds: float
    cov: np.ndarray = field(repr=False, default=None)  # [N, 5, 5] covariance of reparam
    n_points: np.ndarray = field(repr=False, default=None)  # [N] usable points
    stderr_reparam: np.ndarray = field(repr=False, default=None)  # [N, 5]
    degenerate: np.ndarray = field(repr=False, default=None)  # [N] bool, see the docstring

    def ok(self) -> np.ndarray:
        """[N] bool: converged, or stopped at max-iterations with finite parameters.

        A converged log-increase curve can have beta -> 0 and gamma = exp(A2 / A1) = inf: its
        Eq. 14 fit is fine but its Eq. 9 parameters are not usable as numbers; use
        ok() & ~degenerate to select rows whose `params` are usable (see the class docstring)."""
        finite = np.all(np.isfinite(self.params), axis=1)
        conv = self.status == FitStatus.CONVERGED
        return conv | ((self.status == FitStatus.MAX_ITERATIONS) & finite)

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
            degenerate=self.degenerate,
        )  # fmt: skip
        return pd.DataFrame(cols)


def _eval_reparam(t, reparam, status):
    from ._curves import curve_reparam

    y = curve_reparam(t, reparam)
    const = status == FitStatus.CONSTANT
    if const.any():  # exact constant, whatever the (arbitrary) shape parameters say
        y[const] = reparam[const, 4, None]
    return y


def information_criteria(sse, n, k):
    """Gaussian AIC and BIC from the SSE: n log(SSE/n) + 2k and n log(SSE/n) + k log n."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = n * np.log(np.asarray(sse) / n)
        return ll + 2 * k, ll + k * np.log(n)


def fit_trajectories(t, y, mask=None, **options) -> FitResult:
    """Fit Eq. 9 to every curve at once. t [n] or [N, n] steps >= 0 strictly increasing per
    curve (over unmasked points); y [N, n]; mask [N, n] bool (True = real point).

    NaN/inf points are treated as missing. Options: n_starts (6), vp_iter (40), lm_iter (20),
    b_grid / u_grid (the start grid), chunk_size (curves per device call: 512 on the CPU,
    65536 on an accelerator).
    Raises ValueError only for malformed t/y/mask; every curve gets a `FitStatus`.
    """
    t, y, use = _validate(t, y, mask)
    n_starts = int(options.pop("n_starts", 6))
    vp_iter = int(options.pop("vp_iter", 40))
    lm_iter = int(options.pop("lm_iter", 20))
    # CPU: small chunks stay in cache (512 measured 2.2x faster per curve than 4096)
    chunk = int(options.pop("chunk_size", 512 if jax.default_backend() == "cpu" else 65536))
    b_grid = np.asarray(options.pop("b_grid", np.r_[_B_MIN, np.geomspace(0.03, 500.0, 15)]))
    u_grid = np.asarray(options.pop("u_grid", np.log(np.geomspace(1e-7, 30.0, 13))))
    if options:
        raise TypeError(f"unknown options {sorted(options)}")
    N, n = y.shape
    npts = use.sum(1)
    status = np.full(N, FitStatus.CONVERGED, dtype=np.int64)

    # normalisation (per curve, over usable points); pathological curves get a dummy row
    with np.errstate(all="ignore"):
        a = np.min(np.where(use, t, np.inf), 1)
        s = np.max(np.where(use, t, -np.inf), 1) - a
        lo = np.min(np.where(use, y, np.inf), 1)
        yr = np.max(np.where(use, y, -np.inf), 1) - lo
    few = npts < MIN_POINTS
    status[few] = FitStatus.TOO_FEW_POINTS
    status[~few & ~np.isfinite(yr)] = FitStatus.NON_FINITE_INPUT
    status[~few & np.isfinite(yr) & (yr == 0)] = FitStatus.CONSTANT
    live = status == FitStatus.CONVERGED
    with np.errstate(all="ignore"):
        tn = np.where(use, (t - a[:, None]) / s[:, None], 0.0)
        yn = np.where(use, (y - lo[:, None]) / yr[:, None], 0.0)
    w = use.astype(np.float64)
    dummy = np.linspace(0.0, 1.0, n)
    tn[~live], yn[~live], w[~live] = dummy, dummy, 1.0
    scale = np.stack([a, s, lo, yr], 1)
    scale[~live] = (0.0, 1.0, 0.0, 1.0)

    # at least 32 rows: small batches (tests, one model's layers) share one compiled function
    nb, cb = _bucket(n), min(_bucket(N, lo=32), _bucket(chunk))
    key = (nb, cb, n_starts, vp_iter, lm_iter, b_grid.tobytes(), u_grid.tobytes())
    outs, t_compile, t_run = [], 0.0, 0.0
    with jax.enable_x64(True):
        fn = _COMPILED.get(key)
        if fn is None:
            t0 = time.perf_counter()
            jitted = jax.jit(
                lambda tn, yn, w, sc, bg, ug: _batch(
                    tn, yn, w, sc, bg, ug, n_starts=n_starts, vp_iter=vp_iter, lm_iter=lm_iter
                )
            )
            spec = [jax.ShapeDtypeStruct((cb, nb), jnp.float64)] * 3
            spec += [jax.ShapeDtypeStruct((cb, 4), jnp.float64)]
            spec += [jax.ShapeDtypeStruct(b_grid.shape, jnp.float64)]
            spec += [jax.ShapeDtypeStruct(u_grid.shape, jnp.float64)]
            fn = jitted.lower(*spec).compile()
            _COMPILED[key] = fn
            t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, N, cb):
            sl = slice(start, min(start + cb, N))
            k = sl.stop - sl.start
            args = [np.zeros((cb, nb)), np.zeros((cb, nb)), np.zeros((cb, nb))]
            for dst, src in zip(args, (tn, yn, w)):
                dst[:k, :n] = src[sl]
            for dst in args[:2]:  # padding rows: a harmless dummy curve
                dst[k:, :n] = dummy
            args[2][k:, :n] = 1.0
            sc = np.tile([0.0, 1.0, 0.0, 1.0], (cb, 1))
            sc[:k] = scale[sl]
            res = fn(*args, sc, b_grid.astype(np.float64), u_grid.astype(np.float64))
            outs.append([np.asarray(x)[:k] for x in res])
        t_run = time.perf_counter() - t0
    rep, sse, n_iter, conv, cov, var_par = (np.concatenate(x) for x in zip(*outs))

    status[live & ~conv] = FitStatus.MAX_ITERATIONS
    with np.errstate(all="ignore"):
        params = from_reparam(rep)
    # params may overflow (gamma = exp(A2 / A1) on a log-increase curve fitted with beta -> 0)
    # while the fitted curve is fine; only a non-finite Eq. 14 fit counts as failed
    bad = live & ~(np.all(np.isfinite(rep), 1) & np.isfinite(sse))
    status[bad] = FitStatus.FAILED
    # constant series: a defined result
    const = status == FitStatus.CONSTANT
    rep[const] = np.c_[
        np.zeros((const.sum(), 1)), np.ones((const.sum(), 1)), np.zeros((const.sum(), 2)), lo[const]
    ]  # noqa: E501
    params[const] = from_reparam(rep[const])
    sse[const], n_iter[const] = 0.0, 0
    cov[const] = 0.0
    var_par[const] = 0.0
    nan_rows = ~(live | const)
    for arr in (rep, params, cov, var_par):
        arr[nan_rows] = np.nan
    sse[nan_rows] = np.nan
    n_iter[nan_rows] = 0

    with np.errstate(all="ignore"):
        mean = np.sum(np.where(use, y, 0.0), 1) / npts
        sst = np.sum(np.where(use, (y - mean[:, None]) ** 2, 0.0), 1)
        r2 = np.where(const, 1.0, 1.0 - sse / sst)
        aic, bic = information_criteria(sse, npts, N_PARAMS)
        tp = t_peak(params)
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
        stderr_reparam=stderr_rep, degenerate=degenerate,
    )  # fmt: skip
