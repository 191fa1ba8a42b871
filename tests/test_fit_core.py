"""The fitter's building blocks against independent references: autodiff of the projected SSE,
per-point least squares for the grid, and the box rules of the damped step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from massact.curves import _core as core
from massact.curves import _refine
from massact.curves._scipy_recipe import normalise, synthetic_curves


@pytest.fixture(scope="module")
def curve():
    d = synthetic_curves(4, seed=11)
    m = d["mask"][1]
    tn, yn, _ = normalise(d["t"][1, m], d["y"][1, m])
    return tn, yn, np.ones(m.sum())  # float64: made into JAX arrays inside enable_x64


def _half_sse(tn, yn, w):
    return lambda th: 0.5 * jnp.sum(core._linear(tn, yn, w, th[0], th[1])[1] ** 2)


@pytest.mark.parametrize(
    "theta, h_rtol",
    [((0.7, -1.5), 1e-5), ((3.0, 0.5), 1e-5), ((40.0, -9.0), 1e-5), ((core.B_MIN, -2.0), 1e-2)],
)
def test_projected_gradient_and_hessian_match_autodiff(curve, theta, h_rtol):
    """Kaufman's J^T r is the gradient of SSE / 2 (exact for exact least squares; the 1e-13
    ridge moves it ~1e-6); the Newton Hessian (central differences of it) matches
    forward-over-reverse autodiff. At the bound b = B_MIN the Hessian loses digits to the
    cancellation in d/db of (1 - exp(-b t)) / b, so it is checked to 1e-2 there."""
    with jax.enable_x64(True):
        tn, yn, w = (jnp.asarray(a) for a in curve)
        th = jnp.asarray(theta, dtype=jnp.float64)
        f = _half_sse(tn, yn, w)
        sse, _, g, _ = core._vp_eval(tn, yn, w, th)
        np.testing.assert_allclose(sse, 2 * f(th), rtol=1e-12)
        g_ad = jax.grad(f)(th)
        np.testing.assert_allclose(g, g_ad, rtol=1e-5, atol=1e-10 * np.abs(g_ad).max())
        _, hess, g2, _ = core._vp_newton_eval(tn, yn, w, th)
        h_ad = jax.hessian(f)(th)
        np.testing.assert_allclose(g2, g, rtol=1e-12)
        np.testing.assert_allclose(hess, h_ad, rtol=h_rtol, atol=1e-6 * np.abs(h_ad).max())


def test_grid_sse_is_the_least_squares_sse_at_every_grid_point(curve):
    with jax.enable_x64(True):
        tn, yn, w = (jnp.asarray(a) for a in curve)
        b_grid = jnp.asarray(np.r_[core.B_MIN, np.geomspace(0.03, 500.0, 9)])
        u_grid = jnp.asarray(np.log(np.geomspace(1e-7, 30.0, 7)))
        grid = np.asarray(core._grid_sse(tn, yn, w, b_grid, u_grid))
        direct = np.array(
            [
                [np.sum(np.asarray(core._linear(tn, yn, w, b, u)[1]) ** 2) for u in u_grid]
                for b in b_grid
            ]
        )
    # The grid forms the SSE from the normal equations, y.y - c.(Phi^T y + reg c), whose error
    # is first order in the error of c (the direct residual's is second order). Where the
    # columns are nearly collinear (b = B_MIN: 1, ~t, ~log tau0 + t / tau0; tau0 = 30:
    # log(t + tau0) ~ const) that is ~1e-5 relative (measured on 200 curves with the default
    # grid: at most 8e-5). The grid only ranks starts, so 1e-4 is what it has to meet; the
    # well-conditioned points are far more accurate.
    yy = float(np.sum(curve[1] ** 2))
    np.testing.assert_allclose(grid, direct, rtol=1e-4, atol=1e-12 * yy)
    np.testing.assert_allclose(grid[1:, :-1], direct[1:, :-1], rtol=1e-8, atol=1e-12 * yy)


def test_bounded_step_holds_parameters_pushed_outward():
    with jax.enable_x64(True):
        h = jnp.eye(2)
        lo, hi = jnp.array([0.0, -1.0]), jnp.array([1.0, 1.0])
        # x[0] at its lower bound with descent pointing below it: held; x[1] moves freely
        x = jnp.array([0.0, 0.0])
        new = core.bounded_step(h, jnp.array([1.0, -0.5]), 0.0, x, lo, hi)
        np.testing.assert_allclose(new, [0.0, 0.5])
        # a step past a bound is projected back onto the box
        new = core.bounded_step(h, jnp.array([0.0, -5.0]), 0.0, x, lo, hi)
        np.testing.assert_allclose(new, [0.0, 1.0])


def test_starts_take_the_best_point_of_every_band_cell():
    """n_starts beta bands x n_u_bands u bands: one start per cell, at the cell's minimum
    (checked against a plain loop over the cells)."""
    rng = np.random.default_rng(0)
    sse = rng.random((12, 10))
    b_grid, u_grid = np.geomspace(1e-3, 1e2, 12), np.linspace(-16.0, 3.0, 10)
    with jax.enable_x64(True):
        got = np.asarray(core._starts(jnp.asarray(sse), b_grid, u_grid, 3, 2))
    want = []
    for j in range(2):
        for k in range(3):
            cell = sse[4 * k : 4 * k + 4, 5 * j : 5 * j + 5]
            r, c = np.unravel_index(np.argmin(cell), cell.shape)
            want.append([b_grid[4 * k + r], u_grid[5 * j + c]])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(8))
def test_box_decrement_is_the_models_minimum_over_the_box(seed):
    """Against scipy's bounded minimiser (L-BFGS-B from the centre and every corner) over the
    allowed steps: the box (a bound may cut the step off; a parameter at a bound pushed
    outward is held) and, where the model is not convex, the trust region of b / 10, 1/10."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    lo, hi = np.array([core.B_MIN, core.U_LO]), np.array([core.B_MAX, core.U_HI])
    theta = np.array([rng.uniform(0.5, 5.0), rng.uniform(-3.0, 3.0)])
    if seed in (1, 4, 5):
        theta[1] = core.U_HI - 0.03  # a bound within the step's reach
    a = rng.standard_normal((2, 2))
    h = a @ a.T + 0.1 * np.eye(2) if seed % 2 == 0 else a + a.T  # convex / maybe not
    g = rng.standard_normal(2)
    if seed in (2, 3):
        theta[0], g[0] = core.B_MIN, abs(g[0])  # at the bound, pushed outward: held
    with jax.enable_x64(True):
        got = float(
            _refine.box_decrement(jnp.asarray(theta), jnp.asarray(g), jnp.asarray(h), lo, hi)
        )
    convex = np.all(np.linalg.eigvalsh(h) > 0)
    held = ((theta <= lo) & (g >= 0)) | ((theta >= hi) & (g <= 0))
    trust = np.array([0.1 * theta[0] + core.B_MIN, 0.1]) if not convex else np.full(2, np.inf)
    dlo = np.where(held, 0.0, np.maximum(lo - theta, -trust))
    dhi = np.where(held, 0.0, np.minimum(hi - theta, trust))

    def model(d):
        return 2 * g @ d + d @ h @ d, 2 * g + 2 * h @ d

    box = list(zip(dlo, dhi))
    finite = np.clip(np.c_[dlo, dhi], -10.0, 10.0)
    starts = [np.zeros(2)] + [np.array([x, y]) for x in finite[0] for y in finite[1]]
    best = min(minimize(model, x0, jac=True, bounds=box, method="L-BFGS-B").fun for x0 in starts)
    want = max(-best, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    if convex and not held.any():
        newton = -np.linalg.solve(h, g)
        if np.all((newton > dlo) & (newton < dhi)):  # the Newton decrement g' H^-1 g
            np.testing.assert_allclose(got, g @ np.linalg.solve(h, g), rtol=1e-10)


@pytest.mark.parametrize(
    ("theta", "kind"),
    [((1300.0, np.log(1.3e-2)), "early peak"), ((1e-6, np.log(55.0)), "large tau0")],
)
def test_qr_projection_is_accurate_where_the_normal_equations_are_not(theta, kind):
    """The later rounds' projection (`_linear_qr`) against an SVD least squares on a basis
    that is nearly collinear: its SSE to 1e-9; the normal equations with their ridge
    (`_linear`, the first round's) are off by far more there."""
    d = synthetic_curves(4, seed=11)
    m = d["mask"][1]
    tn, yn, _ = normalise(d["t"][1, m], d["y"][1, m])
    b, tau = theta[0], np.exp(theta[1])
    e = np.exp(-b * tn)
    basis = np.c_[e * np.log(tn + tau), -np.expm1(-b * tn) / b, np.ones_like(tn)]
    coef, *_ = np.linalg.lstsq(basis, yn, rcond=None)
    want = np.sum((basis @ coef - yn) ** 2)
    assert np.linalg.cond(basis) > 1e5, kind
    with jax.enable_x64(True):
        args = (jnp.asarray(tn), jnp.asarray(yn), jnp.ones(tn.size))
        c, r, _ = core._linear_qr(*args, theta[0], theta[1])
        sse_qr = float(np.sum(np.asarray(r) ** 2))
        sse_ne = float(np.sum(np.asarray(core._linear(*args, theta[0], theta[1])[1]) ** 2))
        sse_vp = float(core._vp_eval(*args, jnp.asarray(theta), accurate=True)[0])
    np.testing.assert_allclose([sse_qr, sse_vp], want, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(c) @ basis.T, basis @ coef, rtol=1e-6, atol=1e-9)
    assert abs(sse_ne - want) > 1e-7 * want, kind


def test_a_round_never_ends_worse_and_sse_drop_vanishes_at_a_minimum(curve):
    """refine_one from a poor start gains and reports what is left; from its own result
    (after enough rounds) the model's sse_drop is ~0 relative to the SSE."""
    with jax.enable_x64(True):
        tn, yn, w = (jnp.asarray(a) for a in curve)
        z = jnp.asarray([3.0, -1.0, 0.1, 0.1, 0.5])
        sse0 = float(core._z_eval(tn, yn, w, z)[0])
        kw = {"vp_iter": 20, "newton_iter": 40, "lm_iter": 30}
        refine = jax.jit(lambda tn, yn, w, z: _refine.refine_one(tn, yn, w, z, **kw))
        sse_drop = jax.jit(_refine.sse_drop)
        sse_prev = sse0
        for _ in range(6):
            z, sse, n_steps, drop, jtj = refine(tn, yn, w, z)
            assert float(sse) <= sse_prev and np.isfinite(float(drop))
            sse_prev = float(sse)
        assert sse_prev < 0.5 * sse0
        assert float(sse_drop(tn, yn, w, z, sse)) <= 1e-8 * float(sse)
        np.testing.assert_allclose(float(sse), float(core._z_eval(tn, yn, w, z)[0]), rtol=1e-12)
        # away from the minimum the model sees the drop
        far = z.at[1].add(0.5)
        assert float(sse_drop(tn, yn, w, far, core._z_eval(tn, yn, w, far)[0])) > 1e-6
