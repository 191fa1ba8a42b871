"""Architecture -> curve parameters: features, target transforms, model selection (Tables 3-4).

Each fitted layer trajectory gives five parameters (A, lam, gamma, t0, K) of Eq. 9. Here they are
predicted from the architecture alone. Choices, documented once:

- Layer index: l = layer + 1 (1-based), so l/L lies in (0, 1] and is 1 for the last layer.
- Features: the ten of the paper's Table 4 (always), plus raw L, d, H, d_ff and the rotary settings
  only where they vary in the training data (a constant column carries no information).
- Targets: log1p for A, lam, gamma, t0 when all their values are >= 0; a sign-safe
  sign(x) log1p(|x|) ("slog1p", equal to log1p for x >= 0) when some are negative; Yeo-Johnson for
  K. Then standardised. Transforms are fitted on the training part of each split; R^2, MAE and RMSE
  are in that transformed, standardised space (as the paper's R^2). No parameter is a feature of
  another.
- Excluded: curves with ok == False, degenerate original parameters (FitResult.degenerate) or a
  non-finite parameter (counted in `Predictor.exclusions`).
- Splits: "random_split" = 80/20 over curves, settings chosen by 5-fold CV inside the 80 (the
  paper's). "model_split" = GroupKFold over whole models (k = min(5, n_models), needs >= 3
  models): every curve is predicted by a model that never saw its architecture, the honest
  "before training" test; metrics are of the pooled out-of-fold predictions of the best grid point
  (a slight optimism from choosing among 2-3 settings; the target transform is fitted on all
  curves there). The bold entry of a table is the best test R^2 of that split (as Table 3).
- Kept per parameter: the best out-of-fold R^2 on the model split (random split's CV if there is
  none), never a test score; refit on all usable curves with its chosen settings. SHAP and PDP
  use the best tree model per parameter, chosen the same way.
- Saved as joblib (pickle: load only files you trust) plus a JSON sidecar with the metadata.

Beside it: `_config` reads a config.json into the architecture dict that `predict` takes, and
`_explain` draws the SHAP and partial-dependence figures (Figs. 9-10) of a fitted Predictor; their
public names are re-exported here.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import lambertw

from . import _explain
from ._config import arch_from_config as arch_from_config

PARAMS: tuple[str, ...] = ("A", "lam", "gamma", "t0", "K")
DERIVED: list[str] = [
    "l/L", "(l/L)^2", "(l/L)^3", "sqrt(l/L)", "H/d", "d_ff/d", "d/L", "H/L", "log(d)", "l*L",
]  # fmt: skip
RAW: list[str] = ["L", "d", "H", "d_ff", "rotary_pct", "rotary_base"]
FEATURES: list[str] = DERIVED + RAW
MODELS: tuple[str, ...] = ("Ridge", "Lasso", "RandomForest", "GradientBoosting", "XGBoost")
TREES: tuple[str, ...] = ("RandomForest", "GradientBoosting", "XGBoost")
SPLITS: tuple[str, ...] = ("random_split", "model_split")
_NEEDED = ("layer", "L", "d", "H", "d_ff")


def architecture_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 4 features, one row per (model, layer) row of `rows`.

    rows: columns layer (0-based), L, d, H, d_ff, optionally rotary_pct, rotary_base.
    Returns the DERIVED columns and RAW columns (rotary ones only if given), same index.
    """
    if not isinstance(rows, pd.DataFrame):
        raise TypeError(f"architecture_features expects a pandas DataFrame, got {type(rows)}")
    missing = [c for c in _NEEDED if c not in rows.columns]
    if missing:
        raise ValueError(f"architecture rows lack columns {missing}; need {list(_NEEDED)}")
    v = {c: pd.to_numeric(rows[c], errors="coerce").to_numpy(np.float64) for c in _NEEDED}
    for c in _NEEDED:
        if not np.isfinite(v[c]).all():
            raise ValueError(f"column {c!r} has missing or non-numeric values")
    for c in ("L", "d", "H", "d_ff"):
        if (v[c] <= 0).any():
            raise ValueError(f"column {c!r} must be positive")
    if ((v["layer"] < 0) | (v["layer"] >= v["L"])).any():
        raise ValueError("layer must be a 0-based index with 0 <= layer < L")
    L, d, H, d_ff = v["L"], v["d"], v["H"], v["d_ff"]
    l = v["layer"] + 1.0  # 1-based: l/L in (0, 1]
    pos = l / L
    out = {
        "l/L": pos, "(l/L)^2": pos**2, "(l/L)^3": pos**3, "sqrt(l/L)": np.sqrt(pos),
        "H/d": H / d, "d_ff/d": d_ff / d, "d/L": d / L, "H/L": H / L, "log(d)": np.log(d),
        "l*L": l * L, "L": L, "d": d, "H": H, "d_ff": d_ff,
    }  # fmt: skip
    for c in ("rotary_pct", "rotary_base"):
        if c in rows.columns:
            out[c] = pd.to_numeric(rows[c], errors="coerce").to_numpy(np.float64)
    return pd.DataFrame(out, index=rows.index)


@dataclass
class TargetTransform:
    """Forward/inverse transform of one parameter: kind then standardisation."""

    kind: str  # "log1p", "slog1p" or "yeo-johnson"
    mean: float = 0.0
    std: float = 1.0
    power: object = None  # fitted sklearn PowerTransformer for yeo-johnson

    def _fwd(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, np.float64)
        if self.kind == "log1p":
            return np.log1p(y)
        if self.kind == "slog1p":
            return np.sign(y) * np.log1p(np.abs(y))
        return self.power.transform(y.reshape(-1, 1)).ravel()

    def fit(self, y: np.ndarray) -> TargetTransform:
        if self.kind not in ("log1p", "slog1p", "yeo-johnson"):
            raise ValueError(f"transform kind must be log1p, slog1p or yeo-johnson: {self.kind!r}")
        y = np.asarray(y, np.float64)
        if self.kind == "log1p" and (y <= -1).any():
            raise ValueError("log1p transform needs values > -1; use kind='slog1p'")
        if self.kind == "yeo-johnson":
            from sklearn.preprocessing import PowerTransformer

            self.power = PowerTransformer(method="yeo-johnson", standardize=False).fit(
                y.reshape(-1, 1)
            )
        z = self._fwd(y)
        self.mean, sd = float(z.mean()), float(z.std())
        self.std = sd if sd > 0 else 1.0
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (self._fwd(y) - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Back to parameter units; NaN where a Yeo-Johnson prediction lies outside its range."""
        u = np.asarray(z, np.float64) * self.std + self.mean
        if self.kind == "log1p":
            return np.expm1(u)
        if self.kind == "slog1p":
            return np.sign(u) * np.expm1(np.abs(u))
        with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.power.inverse_transform(u.reshape(-1, 1)).ravel()


def transform_kind(param: str, values: np.ndarray) -> str:
    """The paper's transform for `param`, made sign-safe when a value is negative."""
    if param == "K":
        return "yeo-johnson"
    return "log1p" if (np.asarray(values) >= 0).all() else "slog1p"


def t_peak(lam, gamma, t0) -> np.ndarray:
    """Eq. 13: (exp(W(1/lam)) - t0) / gamma; NaN where lam <= 0, gamma <= 0 or non-finite."""
    lam, gamma, t0 = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (lam, gamma, t0)))
    good = (lam > 0) & (gamma > 0) & np.isfinite(lam) & np.isfinite(gamma) & np.isfinite(t0)
    out = np.full(lam.shape, np.nan)
    w = lambertw(1.0 / lam[good]).real
    out[good] = (np.exp(w) - t0[good]) / gamma[good]
    return out


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
    from sklearn.model_selection import KFold, train_test_split

    tr, te = train_test_split(np.arange(n), test_size=0.2, random_state=seed)
    tr = np.sort(tr)
    folds = list(KFold(min(5, len(tr)), shuffle=True, random_state=seed).split(tr))
    return tr, np.sort(te), folds


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
    seed: int = 0,
    out=None,
) -> Predictor:
    """Fit every model for every parameter on both splits; keep the best per parameter.

    keys: N rows with model, layer, L, d, H, d_ff (+ suite, rotary_pct, rotary_base, ...).
    params: [N, 5] (A, lam, gamma, t0, K); ok: [N] bool (FitResult.ok()).
    degenerate: [N] bool (FitResult.degenerate): fitted curves whose original parameters are
      ill-determined (A ~ 1e60+ when lam*t0 is large); excluded and counted separately.
    out: a folder; if given, the predictor (predictor.joblib + .json) and tables are written there.
    """
    params = np.asarray(params, np.float64)
    ok = np.asarray(ok, bool)
    degenerate = np.zeros(len(params), bool) if degenerate is None else np.asarray(degenerate, bool)
    if not isinstance(keys, pd.DataFrame):
        raise TypeError(f"keys must be a pandas DataFrame, got {type(keys).__name__}")
    if params.ndim != 2 or params.shape[1] != 5:
        raise ValueError(f"params must be [N, 5] (A, lam, gamma, t0, K), got {params.shape}")
    if len(keys) != len(params) or ok.shape != (len(params),) or degenerate.shape != ok.shape:
        raise ValueError(
            f"keys ({len(keys)}), params ({len(params)}), ok {ok.shape} and degenerate "
            f"{degenerate.shape} disagree"
        )
    if "model" not in keys.columns:
        raise ValueError("keys needs a 'model' column (to group the layers of one model)")
    keys = keys.reset_index(drop=True)
    feats = architecture_features(keys)
    notes = []
    for c in ("rotary_pct", "rotary_base"):  # e.g. absent for GPT-2-style models
        if c in feats and not np.isfinite(feats[c]).all():
            feats = feats.drop(columns=c)
            notes.append(f"{c} is missing for some curves: not used as a feature")
    finite = np.isfinite(params).all(1)
    feat_ok = np.isfinite(feats.to_numpy()).all(1)
    good = ok & ~degenerate
    use = good & finite & feat_ok
    exclusions = {
        "total": int(len(params)), "fit_failed": int((~ok).sum()),
        "degenerate_params": int((ok & degenerate).sum()),
        "non_finite_params": int((good & ~finite).sum()),
        "non_finite_features": int((good & finite & ~feat_ok).sum()), "used": int(use.sum()),
    }  # fmt: skip
    if use.sum() < 10:
        raise ValueError(f"only {int(use.sum())} usable curves, need >= 10: {exclusions}")
    kf = feats[use].reset_index(drop=True)
    # raw columns only where they vary: a constant one carries no information
    features = DERIVED + [c for c in RAW if c in kf and kf[c].nunique() > 1]
    X, P = kf[features].to_numpy(np.float64), params[use]
    k = keys[use].reset_index(drop=True)
    suite = k["suite"].astype(str) + "/" if "suite" in k else ""
    groups = (suite + k["model"].astype(str)).to_numpy()
    kinds = {p: transform_kind(p, P[:, j]) for j, p in enumerate(PARAMS)}
    cands = _candidates(seed)
    tr, te, folds = random_split(len(X), seed)
    mfolds = model_folds(groups)
    if not mfolds:
        notes.append(f"model_split not run: {len(set(groups))} model(s), need >= 3")
    rows, chosen = [], {}
    for j, p in enumerate(PARAMS):
        y = P[:, j]
        if np.ptp(y) == 0:
            notes.append(f"{p} is constant ({y[0]:g}) over all curves: predicted as that constant")
            continue
        tt = TargetTransform(kinds[p]).fit(y[tr])
        ztr, zte = tt.transform(y[tr]), tt.transform(y[te])
        for name, (est, grid) in cands.items():
            if grid or not mfolds:
                cv, g, _ = _oof(est, grid, X[tr], ztr, folds)
            else:  # nothing to choose here, and selection happens on the model split
                cv, g = np.nan, {}
            m = _metrics(zte, _fit(est, g, X[tr], ztr).predict(X[te]))
            chosen["random_split", p, name] = (cv, g)
            rows.append(("random_split", p, kinds[p], name, m, cv, g, len(tr), len(te)))
        if mfolds:
            # out-of-model predictions for every curve; one transform for the pooled metric space
            z = TargetTransform(kinds[p]).fit(y).transform(y)
            n_tr = int(np.mean([len(a) for a, _ in mfolds]))
            for name, (est, grid) in cands.items():
                cv, g, pred = _oof(est, grid, X, z, mfolds)
                chosen["model_split", p, name] = (cv, g)
                m = _metrics(z, pred)
                rows.append(("model_split", p, kinds[p], name, m, cv, g, n_tr, len(z)))
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
        tables=tables, splits={"random_split": (tr, te)},
        model_folds=mfolds or [], X=pd.DataFrame(X, columns=features),
        keys=k[["model", "layer"]].assign(group=groups),
    )  # fmt: skip
    for j, p in enumerate(PARAMS):
        pred.transforms[p] = TargetTransform(kinds[p]).fit(P[:, j])
        z = pred.transforms[p].transform(P[:, j])
        if (sel, p, MODELS[0]) not in chosen:  # constant parameter
            from sklearn.dummy import DummyRegressor

            pred.models[p], pred.best[p] = DummyRegressor().fit(X, z), "constant"
            continue
        score = {m: chosen[sel, p, m][0] for m in MODELS}
        best = max(MODELS, key=score.get)
        tree = max(TREES, key=score.get)
        pred.best[p], pred.best_tree[p] = best, tree
        pred.models[p] = _fit(cands[best][0], chosen[sel, p, best][1], X, z)
        pred.tree_models[p] = (
            pred.models[p] if tree == best else _fit(cands[tree][0], chosen[sel, p, tree][1], X, z)
        )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        pred.save(out / "predictor.joblib")
        for s, t in tables.items():
            t.to_csv(out / f"prediction_{s}.csv", index=False)
        (out / "prediction_tables.md").write_text(pred.markdown())
    return pred


@dataclass
class Predictor:
    """Best model per parameter refit on all usable curves, with its features and transforms.

    tables: split -> tidy DataFrame, one row per (param, model): transform, r2, mae, rmse
    (held-out test, transformed standardised space), cv_r2 (mean CV R^2 of the chosen settings),
    settings (JSON), n_train, n_test. `table(split, metric)` pivots it to param x model.
    splits: {"random_split": (train, test)} row indices into X (usable curves);
    model_folds: the model split's GroupKFold (train, test) folds, also indices into X.
    """

    features: list[str]
    seed: int = 0
    exclusions: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    selection_split: str = "random_split"
    tables: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    model_folds: list = field(default_factory=list)  # [(train, test)] GroupKFold over models
    X: pd.DataFrame | None = None  # [n_used, n_features] training features (for SHAP, PDP)
    keys: pd.DataFrame | None = None  # model, layer, group of each usable curve
    transforms: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    tree_models: dict = field(default_factory=dict)
    best_tree: dict = field(default_factory=dict)
    _shap: dict = field(default_factory=dict, repr=False)

    def __getstate__(self):
        return {**self.__dict__, "_shap": {}}  # SHAP values are a cache, recomputed on demand

    # ---------- prediction ----------
    def layer_rows(self, arch: dict | pd.DataFrame) -> pd.DataFrame:
        """One row per layer: a dict {L, d, H, d_ff, ...} or a frame of models (or of layers)."""
        if isinstance(arch, dict):
            arch = pd.DataFrame([arch])
        if not isinstance(arch, pd.DataFrame):
            raise TypeError(f"arch must be a dict or a DataFrame, got {type(arch).__name__}")
        missing = [c for c in ("L", "d", "H", "d_ff") if c not in arch.columns]
        if missing:
            raise ValueError(
                f"architecture lacks {missing}: give L, d, H, d_ff (layers, hidden size, heads, "
                "MLP width); for a Hugging Face config.json use predict_from_config"
            )
        for c in ("rotary_pct", "rotary_base"):
            if c in self.features and (c not in arch or arch[c].isna().any()):
                raise ValueError(f"this predictor uses {c!r} (it varied in training): give it")
        if "layer" in arch.columns:
            return arch.reset_index(drop=True)
        L = pd.to_numeric(arch["L"], errors="coerce")
        if L.isna().any() or (L < 1).any() or (L != L.round()).any():
            raise ValueError(f"L must be a positive integer, got {list(arch['L'])}")
        reps = arch.loc[arch.index.repeat(L.astype(int))].reset_index(drop=True)
        reps["layer"] = np.concatenate([np.arange(n) for n in L.astype(int)])
        return reps

    def predict(self, arch: dict | pd.DataFrame, *, horizon: int | None = None) -> pd.DataFrame:
        """Per layer: predicted A, lam, gamma, t0, K, steady_state (= K, Eq. 10), t_peak (Eq. 13),
        peak_value (f at t_peak), peak_expected: 0 < t_peak <= horizon (t_peak > 0 if no
        horizon), and extrapolated: a feature lies outside the training range. Rows keep the
        input's other columns (e.g. model)."""
        if horizon is not None and not (np.isscalar(horizon) and horizon > 0):
            raise ValueError(f"horizon must be a positive number of steps, got {horizon!r}")
        rows = self.layer_rows(arch)
        F = architecture_features(rows)
        X = F[self.features].to_numpy(np.float64)
        if not np.isfinite(X).all():
            raise ValueError("architecture features are not finite; check L, d, H, d_ff, rotary")
        out = rows.copy()
        out["l/L"] = F["l/L"].to_numpy()
        for p in PARAMS:
            out[p] = self.transforms[p].inverse(self.models[p].predict(X))
        out["steady_state"] = out["K"]
        tp = t_peak(out["lam"], out["gamma"], out["t0"])
        x = np.where(np.isfinite(tp), out["gamma"] * tp + out["t0"], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["peak_value"] = out["A"] * np.exp(-out["lam"] * x) * np.log(x) + out["K"]
        out["t_peak"] = tp
        lim = np.inf if horizon is None else float(horizon)
        out["peak_expected"] = (tp > 0) & (tp <= lim)
        out["horizon"] = np.nan if horizon is None else float(horizon)
        # outside the training range, trees saturate and linear models extrapolate: flag it
        lo, hi = self.X.min().to_numpy(), self.X.max().to_numpy()
        out["extrapolated"] = ((X < lo - 1e-9 * abs(lo)) | (X > hi + 1e-9 * abs(hi))).any(1)
        return out

    # ---------- tables ----------
    def table(self, split: str = "random_split", metric: str = "r2") -> pd.DataFrame:
        """param x model pivot of one metric (r2, mae, rmse, cv_r2) for one split."""
        if split not in self.tables:
            raise ValueError(f"split must be one of {list(self.tables)}, got {split!r}")
        t = self.tables[split]
        if metric not in ("r2", "mae", "rmse", "cv_r2"):
            raise ValueError(f"metric must be r2, mae, rmse or cv_r2, got {metric!r}")
        if t.empty:
            return pd.DataFrame(columns=list(MODELS))
        w = t.pivot(index="param", columns="model", values=metric)
        return w.reindex(index=[p for p in PARAMS if p in w.index], columns=list(MODELS))

    def markdown(self) -> str:
        """Table 3 analogue (test R^2, best in bold) plus MAE and RMSE, for both splits."""
        head = {
            "random_split": "Random 80/20 split over layers (the paper's)",
            "model_split": "80/20 split over whole models (held-out architectures)",
        }
        parts = []
        for split in SPLITS:
            t = self.tables.get(split)
            if t is None or t.empty:
                why = "; ".join(n for n in self.notes if split in n) or "no rows"
                parts.append(f"### {head[split]}\n\nnot run: {why}\n")
                continue
            n = f"(train {t.n_train.iloc[0]}, test {t.n_test.iloc[0]} curves)"
            parts.append(f"### {head[split]} {n}\n")
            kinds = t.groupby("param")["transform"].first()
            for metric, label, best in (("r2", "test R^2", max), ("mae", "test MAE", min),
                                        ("rmse", "test RMSE", min)):  # fmt: skip
                w = self.table(split, metric)
                lines = [f"| Parameter ({label}) | Transform | " + " | ".join(MODELS) + " |",
                         "|---|---|" + "---:|" * len(MODELS)]  # fmt: skip
                for p, r in w.iterrows():
                    vals = r.to_numpy(np.float64)
                    b = best(np.nan_to_num(vals, nan=-np.inf if best is max else np.inf))
                    cells = [f"**{v:.3f}**" if v == b else f"{v:.3f}" for v in vals]
                    lines.append(f"| {p} | {kinds[p]} | " + " | ".join(cells) + " |")
                parts.append("\n".join(lines) + "\n")
        sel = ", ".join(f"{p}: {m}" for p, m in self.best.items())
        parts.append(f"Kept per parameter (best out-of-fold R^2, {self.selection_split}): {sel}.\n")
        parts.append(f"Curves: {self.exclusions}.\n")
        return "\n".join(parts)

    # ---------- persistence ----------
    def save(self, path) -> Path:
        """joblib file (pickle: load only trusted files) + `<path>.json` metadata sidecar."""
        import joblib
        import sklearn
        import xgboost

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)
        meta = {
            "format": "massact.Predictor", "version": 1, "features": self.features,
            "seed": self.seed, "best": self.best, "best_tree": self.best_tree,
            "selection_split": self.selection_split, "exclusions": self.exclusions,
            "notes": self.notes, "transforms": {p: t.kind for p, t in self.transforms.items()},
            "versions": {"sklearn": sklearn.__version__, "xgboost": xgboost.__version__},
            "tables": {s: t.to_dict(orient="records") for s, t in self.tables.items()},
        }  # fmt: skip
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=float))
        return path

    @classmethod
    def load(cls, path) -> Predictor:
        import joblib

        path = Path(path)
        if path.is_dir():
            path = path / "predictor.joblib"
        if not path.is_file():
            raise FileNotFoundError(f"no saved predictor at {path} (written by an earlier run)")
        obj = joblib.load(path)
        if not isinstance(obj, cls):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a massact Predictor")
        return obj

    # ---------- explanations (massact.predict._explain) ----------
    def shap_values(self) -> dict:
        """param -> shap.Explanation of its best tree model over the training features."""
        return _explain.shap_values(self)

    def shap_importance(self) -> pd.DataFrame:
        """Mean |SHAP| per feature (rows, in `features` order) x parameter (columns)."""
        return _explain.shap_importance(self)

    def shap_figures(self, out_dir) -> list[Path]:
        """Beeswarm and bar per parameter, one waterfall (K's highest prediction, as Fig. 9b)."""
        return _explain.shap_figures(self, out_dir)

    def pdp_figures(self, out_dir, top: int = 3) -> list[Path]:
        """Partial dependence of each parameter's best tree model on its top SHAP features."""
        return _explain.pdp_figures(self, out_dir, top)


def predict_from_config(
    config: str | Path | dict, predictor_path, horizon: int | None = None
) -> pd.DataFrame:
    """Per-layer predictions for the architecture in `config` from a saved predictor
    (a path, a results folder holding predictor.joblib, or a Predictor)."""
    pred = predictor_path
    if not isinstance(pred, Predictor):
        pred = Predictor.load(predictor_path)
    return pred.predict(arch_from_config(config), horizon=horizon)
