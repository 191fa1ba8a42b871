"""The later rounds of the per-curve JAX core: the stopping test and further rounds.

`sse_drop` says how far a curve's SSE could still drop by the local model of the projected
SSE (`box_decrement`); `refine_one` is one further round (Gauss-Newton, Newton and LM steps
from where the curve stopped, the projection solved by QR, b allowed up to B_MAX). Both reuse
`_core`'s evaluations and damped descent; `_fit` vmaps them (`refine_batch`,
`sse_drop_batch`) and runs the rounds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._core import B_MAX, B_MIN, U_HI, U_LO, _descend, _vp_eval, _vp_newton_eval, _z_eval, _z_of


def box_decrement(theta, g, h, lo, hi):
    """Largest decrease of the quadratic model -2 (g.d + d.h.d / 2) of the SSE (g, h: the
    gradient and Hessian of SSE / 2 at theta [2]) over steps d with lo <= theta + d <= hi.

    A parameter at a bound whose gradient points outward or is 0 is held (d = 0: first-order
    optimality). Where the model is convex on the others, its minimum over the whole box
    (the Newton decrement, or less where the box cuts the step off); where it is not, the
    model is trusted only within |d_b| <= b / 10 (+ B_MIN), |d_u| <= 1/10 (beta and tau0
    within ~10%; further out a negative curvature predicts drops the SSE does not make,
    measured near the bounds). The minimum of a quadratic over a rectangle is the Newton
    point (if convex and inside), or on an edge (one parameter at a side, the other at its
    1-D minimum clipped to the edge), or at a corner: every candidate is evaluated,
    branch-free. Finite for any finite input; NaN gives inf.
    """
    held = ((theta <= lo) & (g >= 0)) | ((theta >= hi) & (g <= 0))
    free = jnp.where(held, 0.0, 1.0)
    hf = h * free[:, None] * free[None, :] + jnp.diag(1.0 - free)
    det = hf[0, 0] * hf[1, 1] - hf[0, 1] ** 2
    convex = (hf[0, 0] > 0) & (hf[1, 1] > 0) & (det > 0)
    trust = jnp.where(convex, jnp.inf, jnp.stack([0.1 * theta[0] + B_MIN, 0.1]))
    dlo = jnp.where(held, 0.0, jnp.maximum(lo - theta, -trust))
    dhi = jnp.where(held, 0.0, jnp.minimum(hi - theta, trust))

    def model(d):
        return 2.0 * jnp.dot(g, d) + jnp.dot(d, h @ d)

    best = jnp.zeros_like(theta[0])  # d = 0
    gf = g * free
    safe = jnp.where(convex, det, 1.0)
    newton = -jnp.stack([hf[1, 1] * gf[0] - hf[0, 1] * gf[1], hf[0, 0] * gf[1] - hf[0, 1] * gf[0]])
    newton = newton / safe * free
    inside = convex & jnp.all((newton >= dlo) & (newton <= dhi))
    best = jnp.where(inside, jnp.minimum(best, model(newton)), best)
    for i in range(2):  # parameter i at a side, the other at its clipped 1-D minimum or a corner
        j = 1 - i
        for side in (dlo[i], dhi[i]):
            hjj = jnp.where(h[j, j] > 0, h[j, j], 1.0)
            stat = jnp.where(h[j, j] > 0, -(g[j] + h[j, i] * side) / hjj, 0.0)
            for dj in (jnp.clip(stat, dlo[j], dhi[j]), dlo[j], dhi[j]):
                d = jnp.stack([side, dj] if i == 0 else [dj, side])
                best = jnp.minimum(best, model(d))
    out = -best
    return jnp.where(jnp.isnan(out), jnp.inf, out)


def sse_drop(tn, yn, w, z, sse):
    """How far the SSE at z (its value `sse`) could still drop by the local model: the
    `box_decrement` of the projected SSE (`_vp_eval` with `_linear_qr`, Hessian by forward
    differences) at theta = z[:2] within the later rounds' bounds, plus what re-solving the
    linear parameters at theta gains as Eq. 14 parameters (evaluated through z: where the
    curve needs huge cancelling A2 and K, b -> 0 with a large tau0, z holds it only to ~1e-7
    of the SSE, and no iteration gains what the projection promises there). 0 at a minimum;
    the stopping rule compares it with the SSE (`_fit`). Four evaluations per call.
    """
    lo, hi = jnp.array([B_MIN, U_LO]), jnp.array([B_MAX, U_HI])
    theta = jnp.clip(z[:2], lo, hi)
    sse_p, h, g, c = _vp_newton_eval(tn, yn, w, theta, accurate=True, forward=True)
    sse_z = jnp.maximum(_z_eval(tn, yn, w, _z_of(theta, c))[0], sse_p)
    gain = jnp.where(jnp.isfinite(sse_z), jnp.maximum(sse - sse_z, 0.0), 0.0)
    out = gain + box_decrement(theta, g, h, lo, hi)
    return jnp.where(jnp.isnan(out), jnp.inf, out)


def refine_one(tn, yn, w, z, *, vp_iter, newton_iter, lm_iter):
    """One further round for a curve that has not met the stopping rule, from its z.

    On the projected SSE (`_linear_qr`, b up to B_MAX) from theta = z[:2]: vp_iter
    Gauss-Newton (VP) steps, which keep descending where the projected SSE is not convex
    (Newton's Hessian is indefinite there, its damped steps stall), then newton_iter Newton
    steps, which finish the flat valleys; then LM on all five parameters from the better of
    z and that result: never worse than z. Returns z, sse, steps that gained, the `sse_drop`
    left and J^T J at z.
    """
    vp_lo, vp_hi = jnp.array([B_MIN, U_LO]), jnp.array([B_MAX, U_HI])
    inf = jnp.inf
    z_lo, z_hi = jnp.array([0.0, U_LO, -inf, -inf, -inf]), jnp.array([B_MAX, U_HI, inf, inf, inf])
    theta, _, _, last_v, _ = _descend(
        lambda th: _vp_eval(tn, yn, w, th, accurate=True),
        jnp.clip(z[:2], vp_lo, vp_hi), vp_lo, vp_hi, vp_iter, early=True,
    )  # fmt: skip
    theta, (_, _, _, c), _, last_n, _ = _descend(
        lambda th: _vp_newton_eval(tn, yn, w, th, accurate=True, forward=True),
        theta, vp_lo, vp_hi, newton_iter, mu0=1e-4, down=0.1, up=10.0, early=True,
    )  # fmt: skip
    z0 = _z_of(theta, c)
    sse_in, sse_0 = _z_eval(tn, yn, w, z)[0], _z_eval(tn, yn, w, z0)[0]
    start = jnp.where(jnp.isfinite(sse_0) & (sse_0 < sse_in), z0, z)
    z, (sse, jtj, _, _), _, last_lm, _ = _descend(
        lambda z: _z_eval(tn, yn, w, z), start, z_lo, z_hi, lm_iter, early=True
    )
    return z, sse, last_v + last_n + last_lm, sse_drop(tn, yn, w, z, sse), jtj


def refine_batch(tn, yn, w, z, **settings):
    """`refine_one` vmapped over curves."""
    return jax.vmap(lambda *a: refine_one(*a, **settings))(tn, yn, w, z)


def sse_drop_batch(tn, yn, w, z, sse):
    """`sse_drop` vmapped over curves."""
    return jax.vmap(sse_drop)(tn, yn, w, z, sse)
