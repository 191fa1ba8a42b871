"""The saved predictor: the best model per parameter, its predictions and its tables.

`Predictor.predict` turns an architecture into per-layer Eq. 9 parameters, the steady state and
the peak (Eq. 13, massact.curves.t_peak); `metric_table` is the param x model pivot of a
predictor table that `Predictor.table` and the report's Table 3 both use. A Predictor is saved as
predictor.zip (`_store`: skops and XGBoost JSON models, JSON and Parquet for the rest; no pickle,
so a shared predictor cannot run code when loaded) plus a JSON sidecar with the metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import curves
from ..curves import PARAM_NAMES
from . import _explain, _store
from ._config import arch_from_config
from ._features import MODELS, SPLITS, architecture_features, range_columns


def t_peak(lam, gamma, t0) -> np.ndarray:
    """Eq. 13 (massact.curves.t_peak) from separate lam, gamma, t0 (arrays or scalars); NaN
    where lam <= 0, gamma <= 0 or a value is non-finite."""
    lam, gamma, t0 = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (lam, gamma, t0)))
    good = (lam > 0) & (gamma > 0) & np.isfinite(lam) & np.isfinite(gamma) & np.isfinite(t0)
    zero = np.zeros(lam.shape)
    return np.where(good, curves.t_peak(np.stack([zero, lam, gamma, t0, zero], -1)), np.nan)


def metric_table(
    frame: pd.DataFrame, metric: str, models: Sequence[str] | None = None
) -> pd.DataFrame:
    """param x model pivot of one metric column of a predictor table (long: param, model and
    `metric` columns; a repeated pair is averaged). Rows in PARAM_NAMES order, then any other
    parameter; columns in `models` order (default: the order they first appear in)."""
    wide = frame.pivot_table(
        index="param", columns="model", values=metric, aggfunc="mean", dropna=False
    )
    order = [p for p in PARAM_NAMES if p in wide.index]
    wide = wide.reindex(index=order + [p for p in wide.index if p not in order])
    return wide.reindex(columns=list(dict.fromkeys(frame["model"]) if models is None else models))


@dataclass
class Predictor:
    """Best model per parameter refit on all usable curves, with its features and transforms.

    tables: split -> tidy DataFrame, one row per (param, model): transform, r2, mae, rmse
    (held-out test, transformed standardised space), cv_r2 (mean CV R^2 of the chosen settings),
    settings (JSON), n_train, n_test. `table(split, metric)` pivots it to param x model.
    splits: {"random_split": (train, test)} row indices into X (usable curves);
    model_folds: the model split's GroupKFold (train, test) folds, also indices into X.
    usable: [n_used, 5] bool (None: all True): the rows of X each parameter learned from (a
    degenerate fit can fix K alone); a parameter with best == NOT_PREDICTED has no model.
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
    usable: pd.DataFrame | None = None  # [n_used, 5] bool per parameter; None: every row
    transforms: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    tree_models: dict = field(default_factory=dict)
    best_tree: dict = field(default_factory=dict)
    # feature or architecture column -> (min, max) over the training curves (`_features`)
    ranges: dict = field(default_factory=dict)
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
        horizon), extrapolated: some input lies outside its training range, and
        extrapolated_features: which ("l*L, d, log(d)"; "" when none), over every feature and
        architecture column the predictor keeps a range of (`training_range`), those it does
        not use included (a d never seen is named even where only log(d) enters the model).
        Rows keep the input's other columns (e.g. model)."""
        if horizon is not None and not (np.isscalar(horizon) and horizon > 0):
            raise ValueError(f"horizon must be a positive number of steps, got {horizon!r}")
        rows = self.layer_rows(arch)
        F = architecture_features(rows)
        X = F[self.features].to_numpy(np.float64)
        if not np.isfinite(X).all():
            raise ValueError("architecture features are not finite; check L, d, H, d_ff, rotary")
        out = rows.copy()
        out["l/L"] = F["l/L"].to_numpy()
        for p in PARAM_NAMES:
            if p not in self.models:  # NOT_PREDICTED: too few usable curves to learn from
                out[p] = np.nan
                continue
            out[p] = self.transforms[p].inverse(self.models[p].predict(X))
        out["steady_state"] = out["K"]
        tp = t_peak(out["lam"], out["gamma"], out["t0"])
        at = np.where(np.isfinite(tp), tp, np.nan)[:, None]
        out["peak_value"] = curves.curve(at, out[list(PARAM_NAMES)].to_numpy(np.float64))[:, 0]
        out["t_peak"] = tp
        lim = np.inf if horizon is None else float(horizon)
        out["peak_expected"] = (tp > 0) & (tp <= lim)
        out["horizon"] = np.nan if horizon is None else float(horizon)
        # outside the training range, trees saturate and linear models extrapolate: flag it
        outside = self._outside(range_columns(rows, F))
        out["extrapolated"] = outside.any(axis=1).to_numpy()
        names = np.array(outside.columns, dtype=object)
        out["extrapolated_features"] = [", ".join(names[m]) for m in outside.to_numpy()]
        return out

    # ---------- how far a prediction reaches ----------
    def training_range(self) -> pd.DataFrame:
        """Per feature and architecture column: min and max over the training curves, whether the
        models use it (`feature`) and what it means. Predictors saved before the ranges were
        kept have those of the model features only (from the stored training features X)."""
        from ._features import MEANINGS

        rng = self._ranges()
        frame = pd.DataFrame(
            {
                "min": [lo for lo, _ in rng.values()],
                "max": [hi for _, hi in rng.values()],
                "feature": [c in self.features for c in rng],
                "meaning": [MEANINGS.get(c, "") for c in rng],
            },
            index=pd.Index(list(rng), name="name"),
        )
        return frame

    def extrapolation(self, arch: dict | pd.DataFrame) -> pd.DataFrame:
        """The inputs of `arch` outside the training range: per such feature or column, the
        min and max of its values over the layers outside, the training min and max, and the
        number of layers outside. Empty when the prediction interpolates."""
        rows = self.layer_rows(arch)
        values = range_columns(rows)
        outside = self._outside(values)
        rng = self._ranges()
        out = []
        for c in outside.columns[outside.any(axis=0).to_numpy()]:
            v = values[c].to_numpy(np.float64)[outside[c].to_numpy()]  # the layers outside
            out.append(
                {"name": c, "asked_min": float(np.nanmin(v)), "asked_max": float(np.nanmax(v)),
                 "train_min": rng[c][0], "train_max": rng[c][1],
                 "layers_outside": int(outside[c].sum())}
            )  # fmt: skip
        cols = ["name", "asked_min", "asked_max", "train_min", "train_max", "layers_outside"]
        return pd.DataFrame(out, columns=cols).set_index("name")

    def skill(self) -> pd.DataFrame:
        """Per parameter: the kept model and its test R^2 on whole held-out models
        (model_split_r2: the honest score for an architecture never trained on) and on the
        random layer split (random_split_r2); NaN where a split was not run. R^2 is in the
        transformed, standardised space: 1 is perfect, <= 0 no better than the training mean."""
        rows = []
        for p in PARAM_NAMES:
            kept = self.best.get(p, "")
            row = {"param": p, "model": kept}
            for split in ("model_split", "random_split"):
                t = self.tables.get(split)
                hit = [] if t is None or t.empty else t[(t.param == p) & (t.model == kept)]
                row[f"{split}_r2"] = float(hit["r2"].iloc[0]) if len(hit) else np.nan
            rows.append(row)
        return pd.DataFrame(rows).set_index("param")

    def _ranges(self) -> dict:
        if self.ranges:
            return self.ranges
        X = self.X if self.X is not None else pd.DataFrame()
        return {c: (float(X[c].min()), float(X[c].max())) for c in X.columns}

    def _outside(self, values: pd.DataFrame) -> pd.DataFrame:
        """[rows x ranged columns] bool: a finite value outside its training range (unknown
        values, NaN, are not flagged)."""
        flags = {}
        for c, (lo, hi) in self._ranges().items():
            if c not in values.columns:
                continue
            v = values[c].to_numpy(np.float64)
            with np.errstate(invalid="ignore"):
                flags[c] = np.isfinite(v) & ((v < lo - 1e-9 * abs(lo)) | (v > hi + 1e-9 * abs(hi)))
        return pd.DataFrame(flags, index=values.index, dtype=bool)

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
        return metric_table(t, metric, MODELS)

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
            if t[["n_train", "n_test"]].drop_duplicates().shape[0] > 1:  # per parameter
                counts = t.groupby("param", sort=False)[["n_train", "n_test"]].first()
                n = (
                    "(train/test curves: "
                    + ", ".join(f"{p} {a}/{b}" for p, (a, b) in counts.iterrows())
                    + ")"
                )
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
        parts.append(f"Curves: {self.exclusions_text()}.\n")
        parts.extend(f"- {n}" for n in self.notes if "not predicted" in n)
        return "\n".join(parts)

    def exclusions_text(self) -> str:
        """Which curves trained the predictor, in words: "trained on 18 of 26 curves (left out:
        8 degenerate parameters)"."""
        exc = dict(self.exclusions or {})
        words = {"fit_failed": "fit failed", "degenerate_params": "degenerate parameters",
                 "non_finite_params": "non-finite parameters",
                 "non_finite_features": "non-finite features"}  # fmt: skip
        left = [f"{int(exc[k])} {w}" for k, w in words.items() if exc.get(k)]
        text = f"trained on {int(exc.get('used', 0))} of {int(exc.get('total', 0))} curves"
        text += f" (left out: {', '.join(left)})" if left else ""
        per = exc.get("per_param")
        if per:  # some curves trained only some parameters (degenerate fits that fix K)
            counts = ", ".join(f"{p} {int(c)}" for p, c in per.items())
            text += (
                f"; curves per parameter: {counts} ({int(exc.get('partial_degenerate', 0))} "
                "degenerate fits contribute K alone, where its standard error is small)"
            )
        return text

    # ---------- persistence ----------
    def save(self, path) -> Path:
        """predictor.zip at `path` (a folder gets `predictor.zip` inside) and a `<path>.json`
        metadata sidecar, both written atomically; returns the predictor file's path. The format
        (massact.predict._store) holds no pickle: loading it runs no code from the file."""
        return _store.write(self, path)

    @classmethod
    def load(cls, path) -> Predictor:
        """A saved predictor: its file, its folder or the results folder of the run that saved
        it. `_store.PredictorFileError` (a ValueError, one line) for anything that is not a
        complete massact predictor: old pickle/joblib files, other files, damaged archives,
        unexpected types (refused before anything in them is built)."""
        return cls(**_store.read(path))

    # ---------- explanations (massact.predict._explain, which takes any such object) ----------
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

    def shap_grid_figures(self, out_dir) -> list[Path]:
        """The report's SHAP figures, one per kind: beeswarm (a panel per parameter), mean
        |SHAP| (one heatmap), waterfall (K's highest prediction)."""
        return _explain.shap_grid_figures(self, out_dir)

    def pdp_grid_figures(self, out_dir, top: int = 3) -> list[Path]:
        """The report's partial dependence figure: a row per parameter, `top` features each."""
        return _explain.pdp_grid_figures(self, out_dir, top)


def predict_from_config(config, predictor_path, horizon: int | None = None) -> pd.DataFrame:
    """Per-layer predictions for the architecture in `config` (a config.json or its folder, a
    dict, a transformers PretrainedConfig: `arch_from_config`) from a saved predictor (its
    predictor.zip, a folder holding it, the results folder of a run, or a Predictor)."""
    arch = arch_from_config(config)  # a bad config fails before the predictor is read
    pred = predictor_path
    if not isinstance(pred, Predictor):
        pred = Predictor.load(predictor_path)
    return pred.predict(arch, horizon=horizon)
