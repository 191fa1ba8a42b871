"""Model selection: every regression model for every parameter on two splits (Tables 3-4).

Choices, documented once:

- Excluded: curves with ok == False, degenerate original parameters (FitResult.degenerate) or a
  non-finite parameter (counted in `Predictor.exclusions`). Per parameter: a degenerate fit can
  still fix K (`FitResult.usable`), so each parameter learns from its own usable curves; the
  splits are drawn once over every usable curve and restricted to each parameter's curves.
- Transforms (`_features`) are fitted on the training part of each split; R^2, MAE and RMSE are in
  that transformed, standardised space (as the paper's R^2).
- Splits: "random_split" = 80/20 over curves, settings chosen by 5-fold CV inside the 80 (the
  paper's). "model_split" = GroupKFold over whole models (k = min(5, n_models), needs >= 3
  models): every curve is predicted by a model that never saw its architecture, the honest
  "before training" test; metrics are of the pooled out-of-fold predictions of the best grid point
  (a slight optimism from choosing among 2-3 settings; the target transform is fitted on all
  curves there). The bold entry of a table is the best test R^2 of that split (as Table 3).
- Training range: the (min, max) of every feature and architecture column (`_features.EXTRA`,
  with a dense multi-head model's values where the data lacks them) over the usable curves, so
  that a prediction can say which of its inputs lie outside (`Predictor.predict`).
- Kept per parameter: the best out-of-fold R^2 on the model split (random split's CV if there is
  none), never a test score; refit on all usable curves with its chosen settings. SHAP and PDP
  use the best tree model per parameter, chosen the same way.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..curves import PARAM_NAMES
from ._features import (
    DERIVED,
    MODELS,
    NOT_PREDICTED,
    RAW,
    SPLITS,
    TREES,
    TargetTransform,
    architecture_features,
    range_columns,
    training_ranges,
    transform_kind,
)
from ._predictor import Predictor
from ._store import PREDICTOR_FILE

MIN_CURVES = 10  # a parameter learns from at least this many curves


def _candidates(seed: int) -> dict[str, tuple[object, dict]]:
    """Estimator and a small hyperparameter grid per model (kept small: seconds, not minutes)."""
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Lasso, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBRegressor

    def lin(m):
        return Pipeline([("scale", StandardScaler()), ("model", m)])

    return {
        "Ridge": (lin(Ridge()), {"model__alpha": [0.1, 1.0, 10.0]}),
        "Lasso": (lin(Lasso(max_iter=20000)), {"model__alpha": [0.003, 0.03, 0.3]}),
        # RF and GB use fixed, sensible settings: their per-tree overhead in scikit-learn
        # (~1 ms a tree) dominates the stage, and XGBoost already covers the depth choice
        "RandomForest": (
            RandomForestRegressor(
                n_estimators=25, min_samples_leaf=2, max_features=0.6, random_state=seed, n_jobs=1
            ),
            {},
        ),
        "GradientBoosting": (
            GradientBoostingRegressor(
                n_estimators=30, learning_rate=0.2, max_depth=3, random_state=seed
            ),
            {},
        ),
        "XGBoost": (
            # "exact": the "hist" sketch costs ~40 ms a fit on a few hundred rows
            XGBRegressor(
                n_estimators=40,
                learning_rate=0.2,
                max_depth=3,
                n_jobs=1,
                random_state=seed,
                tree_method="exact",
                verbosity=0,
            ),
            {"max_depth": [2, 4]},
        ),
    }


def random_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """80/20 split over curves, and 5-fold CV folds inside the 80 (indices into the train part)."""
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(n), test_size=0.2, random_state=seed)
    tr = np.sort(tr)
    return tr, np.sort(te), _cv_folds(tr, seed)


def _cv_folds(train: np.ndarray, seed: int) -> list:
    """5-fold CV (fewer with fewer curves) inside a training part: indices into `train`."""
    from sklearn.model_selection import KFold

    return list(KFold(min(5, len(train)), shuffle=True, random_state=seed).split(train))


def model_folds(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """GroupKFold over whole models, k = min(5, n_models); None with fewer than 3 models.

    Every curve is predicted once by a model that never saw a layer of its architecture."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        return None
    return list(GroupKFold(min(5, n_groups)).split(np.zeros(len(groups)), groups=groups))


def _fit(est, settings: dict, X: np.ndarray, z: np.ndarray):
    from sklearn import config_context
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning

    # the per-tree validation of scikit-learn costs more than the trees on a few hundred rows
    with (
        warnings.catch_warnings(),
        config_context(assume_finite=True, skip_parameter_validation=True),
    ):
        warnings.simplefilter("ignore", ConvergenceWarning)  # Lasso at the small alphas
        return clone(est).set_params(**settings).fit(X, z)


def _oof(est, grid: dict, X: np.ndarray, z: np.ndarray, folds) -> tuple[float, dict, np.ndarray]:
    """Best grid point by pooled out-of-fold R^2: (r2, settings, out-of-fold predictions)."""
    from sklearn.model_selection import ParameterGrid

    best = None
    for g in ParameterGrid(grid):
        pred = np.empty_like(z)
        for tr, te in folds:
            pred[te] = _fit(est, g, X[tr], z[tr]).predict(X[te])
        r2 = _metrics(z, pred)["r2"]
        if best is None or r2 > best[0]:
            best = (r2, g, pred)
    return best


def _metrics(z_true: np.ndarray, z_pred: np.ndarray) -> dict[str, float]:
    err = z_pred - z_true
    sst = float(((z_true - z_true.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / sst if sst > 0 else np.nan
    return {"r2": r2, "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def train_predictors(
    keys: pd.DataFrame,
    params: np.ndarray,
    ok: np.ndarray,
    *,
    degenerate: np.ndarray | None = None,
    usable: np.ndarray | None = None,
    seed: int = 0,
    out=None,
) -> Predictor:
    """Fit every model for every parameter on both splits; keep the best per parameter.

    keys: N rows with model, layer, L, d, H, d_ff (+ suite, rotary_pct, rotary_base, ...).
    params: [N, 5] (A, lam, gamma, t0, K); ok: [N] bool (FitResult.ok()).
    degenerate: [N] bool (FitResult.degenerate): fitted curves whose original parameters are
      ill-determined (A ~ 1e60+ when lam*t0 is large); excluded and counted separately.
    usable: [N, 5] bool (FitResult.usable()): which parameters of each curve to learn from
      (default: all five of every curve not degenerate). Each parameter trains on its own
      curves; one with fewer than MIN_CURVES is not predicted (NaN, with a note).
    out: a folder; if given, the predictor (predictor.zip + .json) and tables are written there,
      each file atomically (a kill or a full disk leaves the last good copy).
    """
    params = np.asarray(params, np.float64)
    ok = _flags(ok, "ok")
    n = len(params)
    degenerate = np.zeros(n, bool) if degenerate is None else _flags(degenerate, "degenerate")
    if not isinstance(keys, pd.DataFrame):
        raise TypeError(f"keys must be a pandas DataFrame, got {type(keys).__name__}")
    if params.ndim != 2 or params.shape[1] != 5:
        raise ValueError(f"params must be [N, 5] (A, lam, gamma, t0, K), got {params.shape}")
    if len(keys) != n or ok.shape != (n,) or degenerate.shape != ok.shape:
        raise ValueError(
            f"keys ({len(keys)}), params ({n}), ok {ok.shape} and degenerate "
            f"{degenerate.shape} disagree"
        )
    if usable is None:  # a curve learns every parameter or none
        whole = ~degenerate & np.isfinite(params).all(1)
        usable = np.repeat(whole[:, None], 5, 1)
    usable = _flags(usable, "usable")
    if usable.shape != params.shape:
        raise ValueError(f"usable must be [N, 5] like params {params.shape}, got {usable.shape}")
    if "model" not in keys.columns:
        raise ValueError("keys needs a 'model' column (to group the layers of one model)")
    keys = keys.reset_index(drop=True)
    feats = architecture_features(keys)
    every = feats  # before dropping incomplete columns: their training range is still known
    notes = []
    for c in ("rotary_pct", "rotary_base"):  # e.g. absent for GPT-2-style models
        if c in feats and not np.isfinite(feats[c]).all():
            feats = feats.drop(columns=c)
            notes.append(f"{c} is missing for some curves: not used as a feature")
    feat_ok = np.isfinite(feats.to_numpy()).all(1)
    U, exclusions = _usable_rows(params, ok, degenerate, usable, feat_ok)
    use = U.any(1)
    if use.sum() < MIN_CURVES:
        raise ValueError(f"only {int(use.sum())} usable curves, need >= {MIN_CURVES}: {exclusions}")
    kf = feats[use].reset_index(drop=True)
    # raw columns only where they vary: a constant one carries no information
    features = DERIVED + [c for c in RAW if c in kf and kf[c].nunique() > 1]
    X, P, U = kf[features].to_numpy(np.float64), params[use], U[use]
    k = keys[use].reset_index(drop=True)
    suite = k["suite"].astype(str) + "/" if "suite" in k else ""
    groups = (suite + k["model"].astype(str)).to_numpy()
    kinds = {p: transform_kind(p, P[U[:, j], j]) for j, p in enumerate(PARAM_NAMES)}
    cands = _candidates(seed)
    split = random_split(len(X), seed)
    mfolds = model_folds(groups)
    if not mfolds:
        notes.append(f"model_split not run: {len(set(groups))} model(s), need >= 3")
    rows, chosen, skipped = [], {}, set()
    for j, p in enumerate(PARAM_NAMES):
        rows_p = U[:, j]
        Xp, y = X[rows_p], P[rows_p, j]
        if rows_p.sum() < MIN_CURVES:
            skipped.add(p)
            notes.append(
                f"{p} is not predicted: {int(rows_p.sum())} curves with a usable value "
                f"(needs >= {MIN_CURVES})"
            )
            continue
        if np.ptp(y) == 0:
            notes.append(f"{p} is constant ({y[0]:g}) over all curves: predicted as that constant")
            continue
        tr, te, folds = _restrict_split(split, rows_p, seed)
        tt = TargetTransform(kinds[p]).fit(y[tr])
        ztr, zte = tt.transform(y[tr]), tt.transform(y[te])
        mfolds_p = mfolds and model_folds(groups[rows_p])
        for name, (est, grid) in cands.items():
            if grid or not mfolds_p:
                cv, g, _ = _oof(est, grid, Xp[tr], ztr, folds)
            else:  # nothing to choose here, and selection happens on the model split
                cv, g = np.nan, {}
            m = _metrics(zte, _fit(est, g, Xp[tr], ztr).predict(Xp[te]))
            chosen["random_split", p, name] = (cv, g)
            rows.append(("random_split", p, kinds[p], name, m, cv, g, len(tr), len(te)))
        if mfolds_p:
            # out-of-model predictions for every curve; one transform for the pooled metric space
            z = TargetTransform(kinds[p]).fit(y).transform(y)
            n_tr = int(np.mean([len(a) for a, _ in mfolds_p]))
            for name, (est, grid) in cands.items():
                cv, g, pred = _oof(est, grid, Xp, z, mfolds_p)
                chosen["model_split", p, name] = (cv, g)
                m = _metrics(z, pred)
                rows.append(("model_split", p, kinds[p], name, m, cv, g, n_tr, len(z)))
        elif mfolds:
            notes.append(f"model_split not run for {p}: its usable curves span < 3 models")
    cols = ["param", "transform", "model", "r2", "mae", "rmse", "cv_r2", "settings", "n_train"]
    tables = {
        s: pd.DataFrame(
            [(p, kd, nm, m["r2"], m["mae"], m["rmse"], cv, json.dumps(g), a, b)
             for sp, p, kd, nm, m, cv, g, a, b in rows if sp == s],
            columns=[*cols, "n_test"],
        )
        for s in SPLITS
    }  # fmt: skip
    sel = "model_split" if mfolds else "random_split"
    pred = Predictor(
        features=features, seed=seed, exclusions=exclusions, notes=notes, selection_split=sel,
        tables=tables, splits={"random_split": split[:2]},
        model_folds=mfolds or [], X=pd.DataFrame(X, columns=features),
        keys=k[["model", "layer"]].assign(group=groups),
        usable=None if U.all() else pd.DataFrame(U, columns=list(PARAM_NAMES)),
        ranges=training_ranges(range_columns(keys[use], every[use])),
    )  # fmt: skip
    for j, p in enumerate(PARAM_NAMES):
        rows_p = U[:, j]
        y = P[rows_p, j] if rows_p.any() else np.zeros(1)  # a transform for every parameter
        pred.transforms[p] = TargetTransform(kinds[p]).fit(y)
        if p in skipped:
            pred.best[p] = NOT_PREDICTED
            continue
        Xp, z = X[rows_p], pred.transforms[p].transform(y)
        s_p = sel if (sel, p, MODELS[0]) in chosen else "random_split"
        if (s_p, p, MODELS[0]) not in chosen:  # constant parameter
            from sklearn.dummy import DummyRegressor

            pred.models[p], pred.best[p] = DummyRegressor().fit(Xp, z), "constant"
            continue
        score = {m: chosen[s_p, p, m][0] for m in MODELS}
        best = max(MODELS, key=score.get)
        tree = max(TREES, key=score.get)
        pred.best[p], pred.best_tree[p] = best, tree
        pred.models[p] = _fit(cands[best][0], chosen[s_p, p, best][1], Xp, z)
        pred.tree_models[p] = (
            pred.models[p] if tree == best else _fit(cands[tree][0], chosen[s_p, p, tree][1], Xp, z)
        )
    if out is not None:
        from ..dataset import atomic_write_bytes

        out = Path(out)
        pred.save(out / PREDICTOR_FILE)
        for s, t in tables.items():
            atomic_write_bytes(out / f"prediction_{s}.csv", t.to_csv(index=False).encode())
        atomic_write_bytes(out / "prediction_tables.md", pred.markdown().encode())
    return pred


def _usable_rows(params, ok, degenerate, usable, feat_ok) -> tuple[np.ndarray, dict]:
    """[N, 5] bool: the curves each parameter learns from; and the counts of curves left out
    entirely, by reason, with the curves per parameter ("per_param")."""
    kept = ok[:, None] & usable & np.isfinite(params)
    any_kept = kept.any(1)
    U = kept & feat_ok[:, None]
    exclusions = {
        "total": int(len(params)), "fit_failed": int((~ok).sum()),
        "degenerate_params": int((ok & ~any_kept & degenerate).sum()),
        "non_finite_params": int((ok & ~any_kept & ~degenerate).sum()),
        "non_finite_features": int((any_kept & ~feat_ok).sum()), "used": int(U.any(1).sum()),
    }  # fmt: skip
    if not U.all(1)[U.any(1)].all():  # some curves train only some parameters
        exclusions["per_param"] = {p: int(U[:, j].sum()) for j, p in enumerate(PARAM_NAMES)}
        exclusions["partial_degenerate"] = int((U.any(1) & degenerate).sum())
    return U, exclusions


def _restrict_split(split, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """The random split (train, test, CV folds inside train) over the curves in `rows` (bool
    over X): the union split's own train and test curves among them, renumbered; the CV folds
    redrawn over their train part (the same as the union's when `rows` is every curve); a
    split of their own where fewer than 5 train or 2 test curves would be left."""
    tr, te, folds = split
    if rows.all():
        return tr, te, folds
    pos = np.cumsum(rows) - 1  # index among the chosen curves
    tr, te = pos[tr[rows[tr]]], pos[te[rows[te]]]
    if len(tr) < 5 or len(te) < 2:  # too few of them fell on one side: a split of their own
        return random_split(int(rows.sum()), seed)
    return tr, te, _cv_folds(tr, seed)


def _flags(values, name: str) -> np.ndarray:
    """A boolean array as given; anything else (strings, numbers) is refused, since a cast
    would make every non-empty string True."""
    arr = np.asarray(values)
    if arr.dtype != bool:
        raise ValueError(
            f"{name} must be a boolean array (e.g. FitResult.ok()), got dtype {arr.dtype}"
        )
    return arr
