"""The emergence curve of the paper (Eq. 9, 13, 14) and its step-response rivals (Eq. 15-18).

Numpy functions are the documentation and the test oracle; the `j*` twins are the same
formulas in JAX for the batched fitter. Parameter orders (fixed across massact):

- original, Eq. 9: ``(A, lam, gamma, t0, K)``, f(t) = A exp(-lam x) log(x) + K, x = gamma t + t0
- reparametrised, Eq. 14: ``(beta, tau0, A1, A2, K)``,
  f(t) = exp(-beta t) [A1 log(t + tau0) + A2] + K

with beta = lam gamma, tau0 = t0 / gamma, A1 = A exp(-lam t0), A2 = A1 log(gamma).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy.special import lambertw

PARAM_NAMES = ("A", "lam", "gamma", "t0", "K")
REPARAM_NAMES = ("beta", "tau0", "A1", "A2", "K")


def curve(t, params) -> np.ndarray:
    """Eq. 9. t [m] or [N, m]; params [5] or [N, 5] -> [N, m] (or [m] for one curve)."""
    p = np.asarray(params, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    A, lam, gamma, t0, K = (p[..., i, None] for i in range(5))
    x = gamma * t + t0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return A * np.exp(-lam * x) * np.log(x) + K


def curve_reparam(t, reparam) -> np.ndarray:
    """Eq. 14. t [m] or [N, m]; reparam [5] or [N, 5] -> [N, m]."""
    r = np.asarray(reparam, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    beta, tau0, A1, A2, K = (r[..., i, None] for i in range(5))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.exp(-beta * t) * (A1 * np.log(t + tau0) + A2) + K


def jacobian(t, params) -> np.ndarray:
    """d Eq. 9 / d (A, lam, gamma, t0, K): [..., m, 5]."""
    p = np.asarray(params, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    A, lam, gamma, t0, _ = (p[..., i, None] for i in range(5))
    x = gamma * t + t0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e, lg = np.exp(-lam * x), np.log(x)
        dx = A * e * (1.0 / x - lam * lg)  # d f / d x
        cols = [e * lg, -A * x * e * lg, dx * t, dx, np.ones_like(x)]
    return np.stack(np.broadcast_arrays(*cols), axis=-1)


def jacobian_reparam(t, reparam) -> np.ndarray:
    """d Eq. 14 / d (beta, tau0, A1, A2, K): [..., m, 5]."""
    r = np.asarray(reparam, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    beta, tau0, A1, A2, _ = (r[..., i, None] for i in range(5))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e, lg = np.exp(-beta * t), np.log(t + tau0)
        cols = [-t * e * (A1 * lg + A2), e * A1 / (t + tau0), e * lg, e, np.ones_like(e)]
    return np.stack(np.broadcast_arrays(*cols), axis=-1)


def to_reparam(params) -> np.ndarray:
    """(A, lam, gamma, t0, K) -> (beta, tau0, A1, A2, K), [..., 5]. Needs gamma > 0."""
    p = np.asarray(params, dtype=np.float64)
    A, lam, gamma, t0, K = np.moveaxis(p, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        A1 = A * np.exp(-lam * t0)
        return np.stack([lam * gamma, t0 / gamma, A1, A1 * np.log(gamma), K], axis=-1)


def from_reparam(reparam) -> np.ndarray:
    """(beta, tau0, A1, A2, K) -> (A, lam, gamma, t0, K), [..., 5].

    Eq. 14 does not fix gamma by itself; A2 = A1 log(gamma) does, so gamma = exp(A2 / A1).
    A1 = 0 (a flat curve) leaves gamma free: we return gamma = 1, lam = beta, t0 = tau0.
    """
    r = np.asarray(reparam, dtype=np.float64)
    beta, tau0, A1, A2, K = np.moveaxis(r, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        flat = A1 == 0
        gamma = np.where(flat, 1.0, np.exp(A2 / np.where(flat, 1.0, A1)))
        A = A1 * np.exp(beta * tau0)  # lam t0 = (beta / gamma) (tau0 gamma) = beta tau0
        return np.stack([A, beta / gamma, gamma, tau0 * gamma, K], axis=-1)


def from_reparam_jacobian(reparam) -> np.ndarray:
    """d from_reparam / d reparam: [..., 5, 5] (rows: A, lam, gamma, t0, K). With A1 = 0,
    gamma is held at 1 as in `from_reparam`."""
    r = np.asarray(reparam, dtype=np.float64)
    beta, tau0, A1, A2, _ = np.moveaxis(r, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        flat = A1 == 0
        a1 = np.where(flat, 1.0, A1)
        gamma = np.where(flat, 1.0, np.exp(A2 / a1))
        dg1 = np.where(flat, 0.0, -gamma * A2 / a1**2)  # d gamma / d A1
        dg2 = np.where(flat, 0.0, gamma / a1)  # d gamma / d A2
        ebt = np.exp(beta * tau0)
        A = A1 * ebt
        zero = np.zeros_like(beta)
        dlam = -beta / gamma**2
        rows = [
            [A * tau0, A * beta, ebt, zero, zero],
            [1.0 / gamma, zero, dlam * dg1, dlam * dg2, zero],
            [zero, zero, dg1, dg2, zero],
            [zero, gamma, tau0 * dg1, tau0 * dg2, zero],
            [zero, zero, zero, zero, zero + 1.0],
        ]
    return np.stack([np.stack(np.broadcast_arrays(*row), -1) for row in rows], -2)


def t_peak(params) -> np.ndarray:
    """Eq. 13: stationary point (exp(W(1/lam)) - t0) / gamma, [...]; NaN where lam <= 0."""
    p = np.asarray(params, dtype=np.float64)
    _, lam, gamma, t0, _ = np.moveaxis(p, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        good = np.isfinite(lam) & (lam > 0)
        w = lambertw(np.where(good, 1.0 / np.where(good, lam, 1.0), 1.0)).real
        return np.where(good, (np.exp(w) - t0) / gamma, np.nan)


# ---- JAX twins (traced inside the batched fitter; one curve, vmapped outside) ----


def jcurve_reparam(t, r):
    """Eq. 14 for one curve: t [n], r [5] -> [n]."""
    return jnp.exp(-r[0] * t) * (r[2] * jnp.log(t + r[1]) + r[3]) + r[4]


def jjacobian_reparam(t, r):
    """Analytic d Eq. 14 / d reparam for one curve: [n, 5]."""
    e, lg = jnp.exp(-r[0] * t), jnp.log(t + r[1])
    one = jnp.ones_like(t)
    return jnp.stack([-t * e * (r[2] * lg + r[3]), e * r[2] / (t + r[1]), e * lg, e, one], -1)


def jfrom_reparam(r):
    """JAX `from_reparam` for one curve (differentiable: used for the delta method)."""
    beta, tau0, A1, A2, K = r
    flat = A1 == 0
    gamma = jnp.where(flat, 1.0, jnp.exp(A2 / jnp.where(flat, 1.0, A1)))
    return jnp.stack([A1 * jnp.exp(beta * tau0), beta / gamma, gamma, tau0 * gamma, K])


def jcurve(t, p):
    """Eq. 9 for one curve: t [n], p [5] -> [n]."""
    x = p[2] * t + p[3]
    return p[0] * jnp.exp(-p[1] * x) * jnp.log(x) + p[4]


# ---- the paper's rejected hypotheses, Eq. 15-18 (JAX, one curve) ----


def step1(t, p):
    """Eq. 15, p = (K, tau): K (1 - exp(-t / tau))."""
    return p[0] * (1.0 - jnp.exp(-t / p[1]))


def step2_under(t, p):
    """Eq. 16, p = (K, zeta, omega_n), 0 <= zeta < 1."""
    K, z, w = p
    s = jnp.sqrt(1.0 - z * z)
    return K * (1.0 - jnp.exp(-z * w * t) * jnp.sin(w * s * t + jnp.arccos(z)) / s)


def step2_critical(t, p):
    """Eq. 17, p = (K, omega_n)."""
    K, w = p
    return K * (1.0 - jnp.exp(-w * t) * (1.0 + w * t))


def step2_over(t, p):
    """Eq. 18, p = (K, zeta, omega_n), zeta > 1."""
    K, z, w = p
    q = jnp.sqrt(z * z - 1.0)
    r1, r2 = -w * (z - q), -w * (z + q)
    return K * (1.0 - (r2 / (r2 - r1) * jnp.exp(r1 * t) + r1 / (r1 - r2) * jnp.exp(r2 * t)))
