"""The per-curve JAX core of the batched fitter: one normalised curve, vmapped by `_fit`; the
later rounds built on it are in `_refine`.

On normalised data (t_n, y_n in [0, 1]; weights w = 1 on usable points, 0 on padding):

1. Grid over the two nonlinear parameters (beta, u = log tau0) with the linear ones solved in
   closed form. The whole grid's normal equations come from a few small matmuls (the basis
   factorises into a beta part and a tau0 part), so the grid costs O((n_b + n_u) n)
   transcendentals, not O(n_b n_u n).
2. Variable projection: Levenberg-Marquardt over (beta, u) only, with (A1, A2, K) re-solved at
   every step (Kaufman's Jacobian), a few iterations from the best grid point of each cell of
   (beta band) x (small / large tau0) and from the paper's initial guess (scipy's start): the
   small-tau0 half holds the narrow minima where log(t + tau0) bends sharply at the first
   checkpoints, which the large-tau0 half's row minima hide. Then damped Newton steps (exact
   gradient, Hessian by central differences of it) from the best: in the flat valleys of the
   projected SSE Gauss-Newton's J^T J misses the residual curvature by orders of magnitude and
   crawls, where Newton converges in a few steps.
3. Levenberg-Marquardt polish on all five parameters (analytic Jacobian).

That is the first round (`fit_one`). `_refine.sse_drop` then says how far the SSE could still
drop by the local model of the projected SSE (`_refine.box_decrement`); curves whose drop is
above the stopping rule go on with further rounds (`_refine.refine_one`: Gauss-Newton, Newton
and LM steps from where they stopped, the projection solved by QR, `_linear_qr`, and b allowed
up to B_MAX). The host side (`_fit`) runs the rounds and assigns the statuses.

Every loop is the same damped, bounded descent (`_descend`): a step solves
(H + mu |diag H|) d = -g over the free parameters and is kept only if it lowers the SSE.
beta >= 0 (lam >= 0) holds by projection and x > 0 on the data by tau0 = exp(u) > 0 = -t_min.
Small systems use unrolled Cholesky (`_chol`): batched LAPACK calls on 2x2..5x5 systems were
far slower on the CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

N_PARAMS = 5
B_MIN = 1e-6  # lower bound of normalised beta during variable projection (see _vp_eval)
U_LO, U_HI = -700.0, float(np.log(1e3))  # tau0 = exp(u) may approach 0: scipy goes there too
_FD_STEP = 1e-4  # relative central-difference step for the projected Hessian
# upper bound of normalised b: the first round's, and the later rounds' (early peaks with
# large lam and gamma reach the first; at 1e6 exp(-b t) is gone by the second checkpoint of
# the Pythia grid, t_n = 7e-6, so nothing is left to fit beyond it)
B_MAX_ROUND1, B_MAX = 1e4, 1e6
_EARLY_REJECTS = 8  # `_descend(early=True)` stops after this many rejected steps in a row


# --------------------------------------------------------------------------- small solves


def _chol(a):
    """Unrolled Cholesky factor of a small SPD matrix, as nested lists of arrays.

    `a` is an array [p, p, ...] or nested lists; `a[i][j]` may be a scalar or an array (a
    batch of matrices stored entrywise): scalar code that fuses into vector kernels under vmap.
    """
    p = len(a)
    lo = [[None] * p for _ in range(p)]
    for i in range(p):
        for j in range(i + 1):
            acc = a[i][j] - sum(lo[i][k] * lo[j][k] for k in range(j))
            lo[i][j] = jnp.sqrt(jnp.maximum(acc, 1e-300)) if i == j else acc / lo[j][j]
    return lo


def _chol_apply(lo, b):
    """Solve (L L^T) x = b given `_chol`'s factor; b [p, ...]."""
    p = len(lo)
    x = [None] * p
    for i in range(p):  # forward: L z = b
        x[i] = (b[i] - sum(lo[i][k] * x[k] for k in range(i))) / lo[i][i]
    for i in reversed(range(p)):  # backward: L^T x = z
        x[i] = (x[i] - sum(lo[k][i] * x[k] for k in range(i + 1, p))) / lo[i][i]
    return jnp.stack(x)


def bounded_step(h, g, mu, x, lo, hi):
    """One damped step from x within the box lo <= x <= hi, for curvature h [p, p] and
    gradient g [p]: solves (h + mu |diag h|) d = -g over the free parameters. A parameter at a
    bound whose descent direction (-g) points outward is held (d = 0); the result is then
    projected on the box."""
    held = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
    free = jnp.where(held, 0.0, 1.0)
    d = jnp.abs(jnp.diag(h))
    a = h * free[:, None] * free[None, :] + jnp.diag(1.0 - free)
    a = a + jnp.diag(free * (mu * d + 1e-12 * jnp.max(d) + 1e-300))
    return jnp.clip(x - _chol_apply(_chol(a), g * free), lo, hi)


def _descend(evaluate, x0, lo, hi, n_iter, *, mu0=1e-3, down=0.3, up=4.0, early=False):
    """Damped, bounded descent from x0: n_iter steps, each kept only if it lowers the SSE (else
    the damping grows). evaluate(x) -> (sse, curvature [p, p], gradient [p], aux).

    The loop evaluates one candidate per pass (x0 first), so `evaluate` is traced once: every
    traced copy costs compile time. Returns the best x, its evaluation, the final damping, the
    last step that gained and the last accepted step's relative gain. early: stop after
    _EARLY_REJECTS rejected steps in a row (the damping has grown by up**_EARLY_REJECTS: the
    steps are negligible); under vmap the loop runs until every row has stopped (the later
    rounds, whose small batches finish early; the first round keeps its fixed loop).
    """
    # every carry derives from x0, so under vmap it is batched from the start and the loop body
    # is batched (traced) once instead of again for each carry found batched later
    zero = jnp.zeros_like(x0[0])
    dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) + zero, jax.eval_shape(evaluate, x0))
    dummy = (zero + jnp.inf,) + tuple(dummy[1:])

    def body(i, s):
        x, best, cand, mu, last, rel = s
        ev = evaluate(cand)
        sse = best[0]
        ok = jnp.isfinite(ev[0]) & (ev[0] < sse)
        keep = lambda a, b: jnp.where(ok, a, b)  # noqa: E731
        x, best = keep(cand, x), jax.tree.map(keep, ev, best)
        step = i > 0  # pass 0 only evaluates x0
        mu = jnp.where(step, keep(mu * down, mu * up), mu)
        last = jnp.where(step & ok & (sse - ev[0] > 1e-12 * sse), i, last)
        rel = jnp.where(step & ok, (sse - ev[0]) / jnp.maximum(sse, 1e-300), rel)
        cand = bounded_step(best[1], best[2], mu, x, lo, hi)
        return x, best, cand, mu, last, rel

    s0 = (x0, dummy, x0, zero + mu0, zero.astype(jnp.int32), zero)
    if not early:
        x, best, _, mu, last, rel = jax.lax.fori_loop(0, n_iter + 1, body, s0)
        return x, best, mu, last, rel

    def body_early(s):
        i, rejects, inner = s
        out = body(i, inner)
        gained = out[1][0] < inner[1][0]
        return i + 1, jnp.where(gained | (i == 0), 0, rejects + 1), out

    def going(s):
        i, rejects, _ = s
        return (i <= n_iter) & (rejects < _EARLY_REJECTS)

    s0 = (zero.astype(jnp.int32), zero.astype(jnp.int32), s0)
    _, _, (x, best, _, mu, last, rel) = jax.lax.while_loop(going, body_early, s0)
    return x, best, mu, last, rel


# --------------------------------------------------------------------------- the linear part


def _gram(w, cols):
    """Weighted Gram matrix of a few columns as nested lists (symmetric; each entry once)."""
    p = len(cols)
    g = [[None] * p for _ in range(p)]
    for i in range(p):
        for j in range(i + 1):
            g[i][j] = g[j][i] = jnp.sum(w * cols[i] * cols[j])
    return g


def _linear(tn, yn, w, b, u):
    """Masked least squares of y on the basis spanning Eq. 14 at fixed (b, tau0 = exp(u)).

    exp(-b t) A2 + K is written c2 (1 - exp(-b t)) / b + c3: the same span for b > 0 but well
    conditioned as b -> 0, where exp(-b t) and 1 become collinear. Normal equations with a
    ridge of 1e-13 of the trace (the first round; `_linear_qr` is the accurate twin).
    Returns (coefficients [3], weighted residual [n], basis parts for the Jacobian).
    """
    tau = jnp.exp(u)
    e = jnp.exp(-b * tn)
    p2 = -jnp.expm1(-b * tn) / b
    lg = jnp.log(tn + tau)
    phi = [e * lg, p2, jnp.ones_like(tn)]
    g = _gram(w, phi)
    reg = 1e-13 * (g[0][0] + g[1][1] + g[2][2]) + 1e-300
    lo = _chol([[g[i][j] + (reg if i == j else 0.0) for j in range(3)] for i in range(3)])
    c = _chol_apply(lo, [jnp.sum(w * x * yn) for x in phi])
    r = w * (yn - c[0] * phi[0] - c[1] * p2 - c[2])
    return c, r, (tau, e, p2, lg, phi, lo)


def _linear_qr(tn, yn, w, b, u):
    """`_linear` by a QR factorisation (modified Gram-Schmidt) of the weighted basis, constant
    column first. w in {0, 1}.

    The normal equations square the basis' condition number, and their ridge biases the
    solution: where the columns are nearly collinear (early peaks with b > ~1e3, where
    (1 - exp(-b t)) / b ~ 1 / b is nearly constant; log increases with a large tau0, where
    log(t + tau0) is nearly affine; conditions of 1e6 are common) `_linear`'s projected SSE is
    off by ~3e-3 relative at a condition of 1e6 and by tens of percent at 1e9 (measured
    against an SVD least squares on corpus curves), enough to mislead Newton and any
    stopping test. This one is accurate to ~eps x condition. A column that is
    dependent on the previous ones to 1e-11 of its norm is dropped (coefficient 0).
    Returns (coefficients [3] in `_linear`'s order, weighted residual [n], basis parts for the
    Jacobian with `residual_of(v)`: the part of w v orthogonal to the weighted basis).
    """
    tau = jnp.exp(u)
    e = jnp.exp(-b * tn)
    p2 = -jnp.expm1(-b * tn) / b
    lg = jnp.log(tn + tau)
    cols = [w, w * p2, w * e * lg]  # order: 1, p2, e lg
    qs, rr = [], [[jnp.zeros_like(b)] * 3 for _ in range(3)]
    for j, a in enumerate(cols):
        norm = jnp.sqrt(jnp.sum(a * a))
        for i, q in enumerate(qs):
            rr[i][j] = jnp.sum(q * a)
            a = a - rr[i][j] * q
        r = jnp.sqrt(jnp.sum(a * a))
        keep = r > 1e-11 * norm
        inv = jnp.where(keep, 1.0 / jnp.where(keep, r, 1.0), 0.0)
        rr[j][j] = jnp.where(keep, r, 0.0)
        qs.append(a * inv)

    def residual_of(v):
        """(Q^T v, v - Q Q^T v) for a weighted v, column by column as the factorisation
        (modified Gram-Schmidt on [basis | v]: a backward-stable least squares)."""
        proj = []
        for q in qs:
            proj.append(jnp.sum(q * v))
            v = v - proj[-1] * q
        return proj, v

    proj, r = residual_of(w * yn)
    coef = [None] * 3  # back substitution R coef = Q^T y, dropped columns 0
    for i in reversed(range(3)):
        acc = proj[i] - sum(rr[i][k] * coef[k] for k in range(i + 1, 3))
        d = rr[i][i]
        coef[i] = jnp.where(d > 0, acc / jnp.where(d > 0, d, 1.0), 0.0)
    c = jnp.stack([coef[2], coef[1], coef[0]])
    return c, r, (tau, e, p2, lg, None, residual_of)


def _vp_eval(tn, yn, w, theta, accurate=False):
    """Projected problem at theta = (b, u): (sse, J^T J, J^T r) with Kaufman's Jacobian
    J = -W (I - Phi (Phi^T W Phi)^-1 Phi^T W) (d Phi / d theta) c. J^T r is the exact gradient
    of SSE / 2 (the term Kaufman drops is orthogonal to r). accurate: `_linear_qr` in place
    of `_linear` (the later rounds and the stopping test)."""
    b = theta[0]
    if accurate:
        c, r, (tau, e, p2, lg, _, residual_of) = _linear_qr(tn, yn, w, b, theta[1])
    else:
        c, r, (tau, e, p2, lg, phi, lo) = _linear(tn, yn, w, b, theta[1])
    vs = [c[0] * (-tn * e * lg) + c[1] * (tn * e - p2) / b, c[0] * e * tau / (tn + tau)]
    js = []
    for v in vs:
        if accurate:
            js.append(-residual_of(w * v)[1])
            continue
        q = _chol_apply(lo, [jnp.sum(w * x * v) for x in phi])
        js.append(-w * (v - q[0] * phi[0] - q[1] * p2 - q[2]))
    jtr = jnp.stack([jnp.sum(j * r) for j in js])
    return jnp.sum(r * r), jnp.array(_gram(1.0, js)), jtr, c


def _vp_newton_eval(tn, yn, w, theta, accurate=False, forward=False):
    """`_vp_eval` with the exact Hessian of SSE / 2 in place of J^T J, by central differences
    of the exact gradient (forward-over-reverse autodiff of the projection compiled 3x slower).
    One vmapped evaluation at theta and the four offset points. forward: forward differences,
    theta and two offset points (the later rounds and the stopping test: their O(h) error,
    ~1e-4 relative, is harmless to Newton steps and to the test, and costs 3 evaluations)."""
    # b near its bound B_MIN: h <= b / 2 keeps b - h > 0 (the basis divides by b)
    h_b = jnp.minimum(_FD_STEP * jnp.maximum(theta[0], 1e-2), 0.5 * theta[0])
    h = jnp.stack([h_b, _FD_STEP])
    if forward:
        pts = jnp.concatenate([theta[None], theta + jnp.diag(h)])
        sse, _, g, c = jax.vmap(lambda th: _vp_eval(tn, yn, w, th, accurate))(pts)
        hess = ((g[1:3] - g[0]) / h[:, None]).T
        return sse[0], 0.5 * (hess + hess.T), g[0], c[0]
    pts = jnp.concatenate([theta[None], theta + jnp.diag(h), theta - jnp.diag(h)])
    sse, _, g, c = jax.vmap(lambda th: _vp_eval(tn, yn, w, th, accurate))(pts)
    hess = ((g[1:3] - g[3:5]) / (2 * h[:, None])).T
    return sse[0], 0.5 * (hess + hess.T), g[0], c[0]


# --------------------------------------------------------------------------- one curve


def _grid_sse(tn, yn, w, b_grid, u_grid):
    """Projected SSE on the (b, u) grid [n_b, n_u] from the normal equations. The basis columns
    e_b(t) log(t + tau_u), p_b(t) and 1 factorise into a b part and a u part, so the Gram
    entries are small matmuls and only (2 n_b + n_u) n transcendentals are needed."""
    e = jnp.exp(-b_grid[:, None] * tn)  # [n_b, n]
    p2 = -jnp.expm1(-b_grid[:, None] * tn) / b_grid[:, None]
    lg = jnp.log(tn + jnp.exp(u_grid)[:, None])  # [n_u, n]
    we = w * e
    g11 = (we * e) @ (lg * lg).T  # [n_b, n_u]
    g12, g13, r1 = ((we * p2) @ lg.T, we @ lg.T, (we * yn) @ lg.T)
    g22, g23, r2 = (
        (w * p2 * p2).sum(1)[:, None],
        (w * p2).sum(1)[:, None],
        (w * p2 * yn).sum(1)[:, None],
    )
    g33, r3 = jnp.sum(w), jnp.sum(w * yn)
    reg = 1e-13 * (g11 + g22 + g33) + 1e-300  # as in _linear
    gram = [[g11 + reg, g12, g13], [g12, g22 + reg, g23], [g13, g23, g33 + reg]]
    rhs = [r1, r2, r3]
    c = _chol_apply(_chol(gram), rhs)
    # |y - Phi c|^2 for the ridge solution (G + reg) c = Phi^T y
    sse = jnp.sum(w * yn * yn) - sum(c[i] * (rhs[i] + reg * c[i]) for i in range(3))
    return jnp.where(jnp.isfinite(sse), sse, jnp.inf)


def _starts(sse_grid, b_grid, u_grid, n_starts, n_u_bands=1):
    """The (beta, u) grid cut into n_starts beta bands x n_u_bands u bands, each cell giving its
    best grid point: the starts cover every decay scale and both the small-tau0 and large-tau0
    regimes (neighbouring points of one basin would not). [n_starts * n_u_bands, 2]"""
    n_b, n_u = sse_grid.shape
    band = (np.arange(n_b) * n_starts) // n_b
    out = []
    for j in range(n_u_bands):
        cols = slice((j * n_u) // n_u_bands, ((j + 1) * n_u) // n_u_bands)
        sub = sse_grid[:, cols]
        row_best = jnp.argmin(sub, axis=1) + cols.start
        row_sse = jnp.min(sub, axis=1)
        rows = [jnp.argmin(jnp.where(band == k, row_sse, jnp.inf)) for k in range(n_starts)]
        out += [jnp.stack([b_grid[r], u_grid[row_best[r]]]) for r in rows]
    return jnp.stack(out)


def _paper_start(tn, w):
    """The paper's initial guess in (b, u): lam = 1 / std(t), gamma = 1 / range(t) = 1, t0 = 1
    on normalised data (scipy's start; its basin is the one the bound compares against)."""
    n = jnp.sum(w)
    mean = jnp.sum(w * tn) / n
    return jnp.stack([1.0 / jnp.sqrt(jnp.sum(w * (tn - mean) ** 2) / n), 0.0])


def _z_eval(tn, yn, w, z):
    """Full problem in z = (b, u, A1, A2, K): (sse, J^T J, J^T r), analytic Jacobian (the tau0
    column by the chain rule through tau0 = exp(u))."""
    tau = jnp.exp(z[1])
    e, lg = jnp.exp(-z[0] * tn), jnp.log(tn + tau)
    shape = z[2] * lg + z[3]
    r = w * (yn - e * shape - z[4])
    # d r / d z = -w d model / d z; the sign cancels in J^T J and is kept in J^T r
    dm = [-tn * e * shape, e * z[2] * tau / (tn + tau), e * lg, e, jnp.ones_like(tn)]
    jtj = jnp.array(_gram(w, dm))
    return jnp.sum(r * r), jtj, -jnp.stack([jnp.sum(w * x * r) for x in dm]), None


def _z_of(theta, c):
    """z = (b, u, A1, A2, K) from theta = (b, u) and `_linear`'s coefficients c."""
    a2 = -c[1] / theta[0]
    return jnp.stack([theta[0], theta[1], c[0], a2, c[2] - a2])


def fit_one(
    tn, yn, w, b_grid, u_grid, *, n_starts, n_u_bands, vp_iter, n_newton, newton_iter, lm_iter
):
    """Fit one normalised curve. Returns z [5] (b, u, A1, A2, K), sse, n_iter, converged and
    J^T J [5, 5] at z (for the covariance, computed on the host)."""
    vp_lo, vp_hi = jnp.array([B_MIN, U_LO]), jnp.array([B_MAX_ROUND1, U_HI])
    inf = jnp.inf
    z_lo = jnp.array([0.0, U_LO, -inf, -inf, -inf])
    z_hi = jnp.array([B_MAX_ROUND1, U_HI, inf, inf, inf])

    def vp(theta, n_iter):
        return _descend(lambda th: _vp_eval(tn, yn, w, th), theta, vp_lo, vp_hi, n_iter)

    # 1-2. grid starts (and the paper's) and a short VP run from each
    bu0 = _starts(_grid_sse(tn, yn, w, b_grid, u_grid), b_grid, u_grid, n_starts, n_u_bands)
    bu0 = jnp.concatenate([bu0, _paper_start(tn, w)[None]])
    thetas, evs, _, lasts, _ = jax.vmap(lambda th: vp(th, vp_iter))(bu0)
    order = jnp.argsort(jnp.where(jnp.isfinite(evs[0]), evs[0], inf))[:n_newton]

    # 2b. Newton on the projected SSE from the best n_newton: it finishes what the short VP
    # runs started (Gauss-Newton crawls in the flat valleys near many minima)
    def newton(theta):
        return _descend(
            lambda th: _vp_newton_eval(tn, yn, w, th), theta, vp_lo, vp_hi, newton_iter,
            mu0=1e-4, down=0.1, up=10.0,
        )  # fmt: skip

    thetas, (sses, _, _, cs), _, _, _ = jax.vmap(newton)(thetas[order])
    best = jnp.argmin(jnp.where(jnp.isfinite(sses), sses, inf))
    theta, c, last_vp = thetas[best], cs[best], lasts[order[best]]
    z0 = _z_of(theta, c)

    # 3. LM polish on all five parameters
    z, (sse, jtj, _, _), mu, last_lm, rel = _descend(
        lambda z: _z_eval(tn, yn, w, z), z0, z_lo, z_hi, lm_iter
    )
    # converged: the last accepted step gained < 1e-8 relative, or no step can gain any more
    # (damping grew huge: a minimum), or the fit is exact to rounding (R^2 > 1 - 1e-16)
    sst = jnp.sum(w * (yn - jnp.sum(w * yn) / jnp.sum(w)) ** 2)
    converged = (rel < 1e-8) | (mu > 1e8) | (sse <= 1e-16 * sst)

    return z, sse, last_vp + last_lm, converged, jtj


def fit_batch(tn, yn, w, b_grid, u_grid, **settings):
    """`fit_one` vmapped over curves (rows of tn, yn, w)."""
    return jax.vmap(lambda *c: fit_one(*c, b_grid, u_grid, **settings))(tn, yn, w)
