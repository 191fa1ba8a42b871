"""The per-curve normalisation every fitter uses, and its inverse on the Eq. 14 parameters.

Over a curve's usable points: t -> (t - a) / s and y -> (y - lo) / yr with the scale
(a, s, lo, yr) = (t_min, t_range, y_min, y_range). Eq. 14 fitted to the normalised points,
(beta_n, tau0_n, A1_n, A2_n, K_n), maps exactly to the data's units by `denormalise_reparam`:

    beta = beta_n / s, tau0 = s tau0_n - a, A1 = g A1_n, A2 = g (A2_n - A1_n log s),
    K = lo + yr K_n, with g = yr exp(beta_n a / s),

and back by `normalise_reparam`. Used by `_fit` (batched), `_scipy_recipe` (one curve) and
`_hypotheses` (starts of the Eq. 9 fit): written once so that their SSEs compare like for like.
Every function works on the last axis: one curve ([n], scale [4]) or a batch ([N, n], [N, 4]).
"""

from __future__ import annotations

import numpy as np


def curve_scale(t, y, use=None) -> np.ndarray:
    """(a, s, lo, yr) = (t_min, t_range, y_min, y_range) over the usable points, [..., 4].

    use: bool like y (True = usable point; all by default). A curve without usable points
    gets inf/NaN entries, a constant one yr = 0: the caller decides what those mean."""
    use = np.ones(np.shape(y), bool) if use is None else use
    with np.errstate(all="ignore"):
        a = np.min(np.where(use, t, np.inf), -1)
        s = np.max(np.where(use, t, -np.inf), -1) - a
        lo = np.min(np.where(use, y, np.inf), -1)
        yr = np.max(np.where(use, y, -np.inf), -1) - lo
    return np.stack([a, s, lo, yr], -1)


def normalise_points(t, y, scale, use=None) -> tuple[np.ndarray, np.ndarray]:
    """(t_n, y_n) = ((t - a) / s, (y - lo) / yr) per curve; 0 where `use` is False."""
    a, s, lo, yr = (np.asarray(scale)[..., i, None] for i in range(4))
    with np.errstate(all="ignore"):
        tn, yn = (t - a) / s, (y - lo) / yr
    if use is None:
        return tn, yn
    return np.where(use, tn, 0.0), np.where(use, yn, 0.0)


def denormalise_reparam(zn, scale) -> np.ndarray:
    """Eq. 14 parameters fitted on normalised data [..., 5] -> the data's units [..., 5]."""
    a, s, lo, yr = np.moveaxis(np.asarray(scale), -1, 0)
    b, tau, a1, a2, k = np.moveaxis(np.asarray(zn), -1, 0)
    with np.errstate(all="ignore"):
        g, ls = yr * np.exp(b * a / s), np.log(s)
        return np.stack([b / s, s * tau - a, g * a1, g * (a2 - a1 * ls), lo + yr * k], -1)


def denormalise_jacobian(zn, scale) -> np.ndarray:
    """d denormalise_reparam / d zn, [..., 5, 5] (rows: beta, tau0, A1, A2, K)."""
    a, s, lo, yr = np.moveaxis(np.asarray(scale), -1, 0)
    b, _, a1, a2, _ = np.moveaxis(np.asarray(zn), -1, 0)
    out = np.zeros(np.shape(zn) + (5,))
    with np.errstate(all="ignore"):
        g, ls = yr * np.exp(b * a / s), np.log(s)
        out[..., 0, 0], out[..., 1, 1], out[..., 4, 4] = 1.0 / s, s, yr
        out[..., 2, 0], out[..., 2, 2] = g * a / s * a1, g
        out[..., 3, 0], out[..., 3, 2], out[..., 3, 3] = g * a / s * (a2 - a1 * ls), -g * ls, g
    return out


def normalise_reparam(rep, scale) -> np.ndarray:
    """Eq. 14 parameters in the data's units [..., 5] -> on normalised data [..., 5]."""
    a, s, lo, yr = np.moveaxis(np.asarray(scale), -1, 0)
    beta, tau0, A1, A2, K = np.moveaxis(np.asarray(rep), -1, 0)
    with np.errstate(all="ignore"):
        g = yr * np.exp(beta * a)
        return np.stack(
            [beta * s, (tau0 + a) / s, A1 / g, A2 / g + A1 / g * np.log(s), (K - lo) / yr], -1
        )
