"""Per-parameter usable curves: a degenerate fit that still fixes K trains K's predictor only.

Fits: curves with a known plateau (levelling off, or peaking and settling) must keep K close to
the generator's value; a curve still rising at the end (log increase) whose fit is degenerate
must not keep K. Prediction: on the constructed dataset of test_predict (K depends on H/d, lam
on l/L), curves marked K-only carry absurd A, lam, gamma, t0; the predictor must not see them
(lam still recovered), must count the curves per parameter, and must leave a parameter with too
few curves unpredicted (NaN), through save and load.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_predict import make_dataset

from massact.curves import PARAM_NAMES, fit_trajectories
from massact.predict import Predictor
from massact.predict._features import NOT_PREDICTED
from massact.predict._selection import train_predictors

K = PARAM_NAMES.index("K")


@pytest.fixture(scope="module")
def curves():
    """(fit, kind [N], true K [N]): curves that settle at a known K inside the window (Eq. 14
    with beta tau0 of 60-200, the regime where Eq. 9's parameters degenerate, and plain
    exponential levelling off) and curves still rising at the end (log increase)."""
    rng = np.random.default_rng(0)
    t = np.geomspace(1, 4500, 40)
    rows, kind, k_true = [], [], []
    for _ in range(12):  # Eq. 14 rising from 3 to K, its peak far beyond the window
        beta = 1 / rng.uniform(300, 1200)
        tau0, k, a1 = rng.uniform(60, 200) / beta, rng.uniform(20, 200), rng.uniform(0.5, 3)
        a2 = -(k - 3) - a1 * np.log(tau0)
        rows.append(np.exp(-beta * t) * (a1 * np.log(t + tau0) + a2) + k)
        kind.append("settle"), k_true.append(k)
    for _ in range(12):  # exponential levelling off at K
        k, tau = rng.uniform(20, 200), rng.uniform(200, 900)
        rows.append(k - (k - 3) * np.exp(-t / tau))
        kind.append("settle"), k_true.append(k)
    for _ in range(12):  # still rising at the end: no level in sight
        rows.append(3 + rng.uniform(3, 10) * np.log1p(t / rng.uniform(20, 200)))
        kind.append("log"), k_true.append(np.nan)
    y = np.array(rows)  # noise: 1% of the level, 0.3 on the log curves
    y += 0.01 * np.nan_to_num(np.array(k_true), nan=30.0)[:, None] * rng.standard_normal(y.shape)
    fit = fit_trajectories(np.broadcast_to(t, y.shape), y, np.ones(y.shape, bool))
    return fit, np.array(kind), np.array(k_true)


def test_usable_keeps_k_where_the_data_fix_it(curves):
    fit, kind, k_true = curves
    usable = fit.usable()
    assert usable.shape == (len(kind), 5) and usable.dtype == bool
    whole = fit.ok() & ~fit.degenerate
    np.testing.assert_array_equal(usable[:, :K], np.repeat(whole[:, None], K, 1))
    settles = kind == "settle"
    assert usable[settles, K].all()
    # K alone from a degenerate fit: close to the level the generator settles at
    k_only = settles & fit.degenerate
    assert k_only.any()
    np.testing.assert_allclose(fit.params[k_only, K], k_true[k_only], rtol=0.05)
    # a degenerate log-increase fit puts K far beyond its data: never kept
    log_deg = (kind == "log") & fit.degenerate
    assert log_deg.any() and not usable[log_deg, K].any()
    span = fit.y_range[:, 1] - fit.y_range[:, 0]
    assert (np.abs(fit.params[log_deg, K]) > 100 * span[log_deg]).all()
    np.testing.assert_array_equal(fit.to_frame()["K_usable"], usable[:, K])


def _k_only(n_k_only: int, seed: int = 1):
    """test_predict's dataset with n_k_only curves marked degenerate and usable for K alone,
    their other parameters replaced by values that would wreck any model that saw them."""
    keys, params, ok = make_dataset()
    rng = np.random.default_rng(seed)
    good = np.flatnonzero(ok & np.isfinite(params).all(1))
    pick = rng.choice(good, n_k_only, replace=False)
    params = params.copy()
    params[pick, :K] = 1e60
    degenerate = np.zeros(len(keys), bool)
    degenerate[pick] = True
    usable = np.ones(params.shape, bool)
    usable[pick, :K] = False
    return keys, params, ok, degenerate, usable


@pytest.fixture(scope="module")
def partial():
    keys, params, ok, degenerate, usable = _k_only(30)
    return train_predictors(keys, params, ok, degenerate=degenerate, usable=usable, seed=0), (
        keys,
        params,
        ok,
        degenerate,
        usable,
    )


def test_each_parameter_learns_from_its_own_curves(partial):
    pred, (keys, params, ok, degenerate, usable) = partial
    fine = ok[:, None] & np.isfinite(params) & usable
    per = pred.exclusions["per_param"]
    assert per == {p: int(fine[:, j].sum()) for j, p in enumerate(PARAM_NAMES)}
    assert per["K"] - per["lam"] > 25 and pred.exclusions["partial_degenerate"] == 30
    for split in ("random_split", "model_split"):
        t = pred.tables[split]
        n = t.groupby("param")[["n_train", "n_test"]].first()
        if split == "random_split":  # each parameter's curves, split once
            assert (n.n_train + n.n_test).to_dict() == {p: per[p] for p in n.index}
        else:  # pooled out-of-model predictions: every curve once
            assert n.n_test.to_dict() == {p: per[p] for p in n.index}
    # the absurd values never reached a model: lam's relation to l/L is still recovered
    assert pred.table("model_split", "r2").loc["lam"].max() > 0.8
    assert pred.table("model_split", "r2").loc["K"].max() > 0.8
    assert "curves per parameter" in pred.exclusions_text()
    assert "train/test curves" in pred.markdown()


def test_shap_uses_each_parameters_rows(partial):
    pred, _ = partial
    sv = pred.shap_values()
    per = pred.exclusions["per_param"]
    assert {p: len(e.values) for p, e in sv.items()} == {p: per[p] for p in sv}


def test_a_parameter_with_too_few_curves_is_not_predicted(tmp_path):
    keys, params, ok, degenerate, usable = _k_only(30)
    keep_lam = np.flatnonzero(usable[:, 1] & ok & np.isfinite(params[:, 1]))[:6]
    usable[:, 1] = False
    usable[keep_lam, 1] = True
    pred = train_predictors(
        keys, params, ok, degenerate=degenerate, usable=usable, seed=0, out=tmp_path
    )
    assert pred.best["lam"] == NOT_PREDICTED and "lam" not in pred.models
    assert any("lam is not predicted: 6 curves" in n for n in pred.notes)
    arch = {"L": 6, "d": 128, "H": 4, "d_ff": 512}
    out = pred.predict(arch)
    assert out["lam"].isna().all() and out["t_peak"].isna().all()
    assert np.isfinite(out[["A", "gamma", "t0", "K"]].to_numpy()).all()
    back = Predictor.load(tmp_path)
    np.testing.assert_array_equal(back.usable.to_numpy(), pred.usable.to_numpy())
    again = back.predict(arch)
    np.testing.assert_array_equal(again["K"], out["K"])
    assert again["lam"].isna().all() and "lam" not in back.shap_values()
    assert "lam is not predicted" in (tmp_path / "prediction_tables.md").read_text()


def test_bad_usable_is_refused():
    keys, params, ok, degenerate, usable = _k_only(5)
    with pytest.raises(ValueError, match=r"usable must be \[N, 5\]"):
        train_predictors(keys, params, ok, usable=usable[:, :4])
    with pytest.raises(ValueError, match="usable must be a boolean array"):
        train_predictors(keys, params, ok, usable=usable.astype(int))


def test_report_of_a_predictor_without_some_parameters(tmp_path):
    """The real report writer with a predictor that learnt K from every curve and lam from too
    few: Table 3 holds K, not lam; the notes say why; the SHAP figure is drawn."""
    from test_report import build_dataset

    from massact import dataset as _dataset
    from massact.report import _document, base_provenance

    archs = {f"m{i}": (L, d, H, 4 * d, 10**5) for i, (L, d, H) in enumerate(
        [(3, 32, 2), (4, 64, 4), (6, 64, 2), (5, 96, 4), (8, 128, 4)])}  # fmt: skip
    build_dataset(tmp_path / "dataset", archs=archs)
    ds = _dataset.load_dataset(tmp_path / "dataset")
    traj = _dataset.load_trajectories(ds)
    fit = fit_trajectories(traj.t, traj.y, traj.mask)
    usable = fit.usable()
    assert usable[:, K].sum() >= 12
    usable[np.flatnonzero(usable[:, 1])[5:], 1] = False  # lam: 5 curves
    pred = train_predictors(
        traj.keys, fit.params, fit.ok(), degenerate=fit.degenerate, usable=usable, seed=0
    )
    _document.write_report(tmp_path, ds, traj, fit, None, pred, base_provenance(seed=0))
    text = (tmp_path / "report.md").read_text()
    assert "lam is not predicted: 5 curves" in text
    table3 = (tmp_path / "tables" / "table3_random_split_r2.csv").read_text().splitlines()
    params = {line.split(",")[0] for line in table3[1:]}
    assert "K" in params and "lam" not in params
    assert (tmp_path / "figures" / "shap_beeswarm.png").exists()
