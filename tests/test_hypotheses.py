"""The model comparison of the paper's Table 5: each hypothesis recovers its own curves."""

import jax
import numpy as np
import pandas as pd
import pytest

from massact.curves import _formulas as _curves
from massact.curves._fit import fit_trajectories
from massact.curves._hypotheses import HYPOTHESES, fit_hypotheses
from massact.curves._result import FitStatus, information_criteria
from massact.curves._scipy_recipe import synthetic_curves

N_COLS = 55  # same shape bucket as tests/test_fit.py: the Eq. 14 fit compiles once
T = np.linspace(0.0, 143000.0, N_COLS)


def _step(name, p):
    with jax.enable_x64(True):
        return np.asarray(getattr(_curves, name)(T, np.asarray(p, float)))


def _inputs():
    """Rows 0-3 Eq. 9, then one clean curve per step model, then a constant and a short one,
    then a slow decay with A2 / A1 = 1000 (gamma = exp(A2 / A1) overflows float64);
    responses start at 0 (the normalisation's offset is their minimum)."""
    d = synthetic_curves(4, seed=11, n_range=(N_COLS, N_COLS))
    noise = 1e-3 * np.random.default_rng(0).standard_normal(N_COLS)
    rows = [d["y"][i] for i in range(4)] + [
        3.0 + _step("step1", [10.0, 30000.0]),
        3.0 + _step("step2_under", [10.0, 0.3, 1 / 15000]),
        3.0 + _step("step2_critical", [10.0, 1 / 20000]),
        3.0 + _step("step2_over", [10.0, 2.5, 1 / 5000]),
        np.full(N_COLS, 7.0),
        np.r_[np.arange(5.0), np.full(N_COLS - 5, np.nan)],
        _curves.curve_reparam(T, [2e-5, 100.0, 0.05, 50.0, 5.0]) + noise,
    ]
    t = np.vstack([d["t"], np.tile(T, (7, 1))])
    return t, np.vstack(rows), d


@pytest.fixture(scope="module")
def table():
    t, y, d = _inputs()
    return fit_hypotheses(t, y), d, fit_trajectories(t, y)


@pytest.fixture(scope="module")
def status_table(table):
    _, _, fit = table
    t, y, _ = _inputs()
    return fit_hypotheses(t, y, fit=fit, status=True)


def test_frame_is_tidy_with_every_hypothesis(table):
    df, *_ = table
    assert list(df.columns) == [
        "curve", "hypothesis", "n_params", "n_points", "sse", "r2", "aic", "bic",
    ]  # fmt: skip
    assert len(df) == 11 * len(HYPOTHESES)
    assert set(df["hypothesis"]) == set(HYPOTHESES)
    n_par = df.groupby("hypothesis")["n_params"].first().to_dict()
    assert n_par == {
        "eq9": 5, "eq14": 5, "step1": 2, "step2_under": 3, "step2_critical": 2, "step2_over": 3,
    }  # fmt: skip
    aic, bic = information_criteria(df["sse"], df["n_points"], df["n_params"])
    np.testing.assert_allclose(df["aic"], aic, equal_nan=True)
    np.testing.assert_allclose(df["bic"], bic, equal_nan=True)


@pytest.mark.parametrize(
    ("row", "name"),
    [(4, "step1"), (5, "step2_under"), (6, "step2_critical"), (7, "step2_over")],
)
def test_each_step_model_recovers_its_own_curve(table, row, name):
    df, *_ = table
    r = df[df["curve"] == row].set_index("hypothesis")
    assert r.loc[name, "r2"] > 1 - 1e-8, r["r2"]


def test_eq9_curves_prefer_eq9(table):
    df, *_ = table
    r2 = df[df["curve"] < 4].pivot(index="curve", columns="hypothesis", values="r2")
    aic = df[df["curve"] < 4].pivot(index="curve", columns="hypothesis", values="aic")
    steps = [h for h in HYPOTHESES if h.startswith("step")]
    assert np.all(r2["eq14"].to_numpy()[:, None] >= r2[steps].to_numpy())
    assert np.all(aic["eq14"].to_numpy()[:, None] <= aic[steps].to_numpy())


def test_eq9_is_fitted_in_its_own_parameters(table):
    """Eq. 9 (lam >= 0, x > 0) spans the Eq. 14 curves with |A2 / A1| = |log gamma| < ~709, so
    its own fit reaches the Eq. 14 optimum there, and comes close where the Eq. 14 -> Eq. 9
    mapping overflows (row 10, A2 / A1 = 1000: Eq. 9 in float64 can only approximate it)."""
    df, _, fit = table
    assert not np.isfinite(fit.params[10]).all() and fit.degenerate[10]
    r2 = df.pivot(index="curve", columns="hypothesis", values="r2")
    assert np.all(np.isfinite(r2["eq9"][[0, 1, 2, 3, 10]]))
    np.testing.assert_allclose(r2["eq9"][:4], r2["eq14"][:4], rtol=0, atol=1e-6)
    assert r2["eq14"][10] - 1e-5 <= r2["eq9"][10] <= r2["eq14"][10] + 1e-9
    # the old shortcut, the Eq. 14 optimum pushed through Eq. 9, cannot even evaluate row 10
    with np.errstate(all="ignore"):
        assert not np.isfinite(_curves.curve(T, fit.params[10])).all()


def test_degenerate_rows_are_nan(table):
    df, *_ = table
    bad = df[df["curve"].isin([8, 9])]
    assert bad["r2"].isna().all() and bad["aic"].isna().all()


def test_reuses_a_given_fit_and_rejects_a_mismatched_one():
    d = synthetic_curves(4, seed=11, n_range=(N_COLS, N_COLS))
    fit = fit_trajectories(d["t"], d["y"])
    again = fit_hypotheses(d["t"], d["y"], fit=fit)
    pd.testing.assert_frame_equal(again, fit_hypotheses(d["t"], d["y"]))
    with pytest.raises(ValueError, match="fit holds 3 curves but y holds 4"):
        fit_hypotheses(d["t"], d["y"], fit=fit_trajectories(d["t"][:3], d["y"][:3]))


def test_statuses_name_every_fit(table, status_table):
    """status=True adds each fit's FitStatus label; the other columns are unchanged."""
    df, _, fit = table
    pd.testing.assert_frame_equal(status_table.drop(columns="status"), df)
    assert list(status_table.columns)[-1] == "status"
    labels = {s.label for s in FitStatus}
    assert set(status_table["status"]) <= labels
    by = status_table.pivot(index="curve", columns="hypothesis", values="status")
    assert (by.loc[8] == "constant").all() and (by.loc[9] == "too few points").all()
    assert list(by["eq14"]) == [FitStatus(s).label for s in fit.status]
    for row, name in [(4, "step1"), (5, "step2_under"), (6, "step2_critical"), (7, "step2_over")]:
        assert by.loc[row, name] == "converged", by.loc[row]
    fitted = status_table[~status_table["curve"].isin([8, 9])]
    assert set(fitted["status"]) <= {"converged", "max iterations"}
    assert (by.loc[[0, 1, 2, 3], "eq9"] == "converged").all()


def test_bad_hypotheses_input_is_a_named_error():
    with pytest.raises(ValueError, match="n_iter must be >= 0"):
        fit_hypotheses(T, np.ones((2, N_COLS)), n_iter=-1)
    with pytest.raises(ValueError, match="y is complex"):
        fit_hypotheses(T, np.ones((2, N_COLS)) * 1j)
    with pytest.raises(ValueError, match="no curves"):
        fit_hypotheses(T, np.ones((0, N_COLS)))
