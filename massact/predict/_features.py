"""What is predicted from what: architecture features, target transforms, model and split names.

- Layer index: l = layer + 1 (1-based), so l/L lies in (0, 1] and is 1 for the last layer.
- Features: the ten of the paper's Table 4 (always), plus raw L, d, H, d_ff and the rotary settings
  only where they vary in the training data (a constant column carries no information; the choice
  is made in `_selection.train_predictors`).
- Targets: the five parameters of Eq. 9, in massact.curves.PARAM_NAMES order. log1p for A, lam,
  gamma, t0 when all their values are >= 0; a sign-safe sign(x) log1p(|x|) ("slog1p", equal to
  log1p for x >= 0) when some are negative; Yeo-Johnson for K. Then standardised. No parameter is
  a feature of another.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

DERIVED: list[str] = [
    "l/L", "(l/L)^2", "(l/L)^3", "sqrt(l/L)", "H/d", "d_ff/d", "d/L", "H/L", "log(d)", "l*L",
]  # fmt: skip
RAW: list[str] = ["L", "d", "H", "d_ff", "rotary_pct", "rotary_base"]
FEATURES: list[str] = DERIVED + RAW
# architecture columns that are not features (for reporting and the extrapolation check), and
# their value where a config does not give them: a dense model with multi-head attention
EXTRA: list[str] = ["H_kv", "head_dim", "n_experts", "experts_per_token"]
MEANINGS: dict[str, str] = {
    "l/L": "relative depth: 1-based layer index l over the number of layers L (1 = last layer)",
    "(l/L)^2": "square of the relative depth l/L",
    "(l/L)^3": "cube of the relative depth l/L",
    "sqrt(l/L)": "square root of the relative depth l/L",
    "H/d": "attention heads per hidden unit (1 / head width when heads are d/H wide)",
    "d_ff/d": "MLP expansion: MLP width over hidden size",
    "d/L": "hidden size per layer (width over depth)",
    "H/L": "attention heads per layer",
    "log(d)": "natural logarithm of the hidden size",
    "l*L": "1-based layer index times the number of layers",
    "L": "number of layers (transformer blocks)",
    "d": "hidden size (residual stream width)",
    "H": "attention heads (query heads)",
    "d_ff": "MLP width (intermediate size)",
    "rotary_pct": "fraction of each head's dimensions that rotary embeddings rotate (0: none)",
    "rotary_base": "rotary embedding base (rope_theta)",
    "H_kv": "key/value heads (grouped-query attention; H when not given). Not a feature",
    "head_dim": "width of one attention head (d/H when not given). Not a feature",
    "n_experts": "MLP experts of a mixture-of-experts layer (1 when dense). Not a feature",
    "experts_per_token": "experts each token is routed to (1 when dense). Not a feature",
}
MODELS: tuple[str, ...] = ("Ridge", "Lasso", "RandomForest", "GradientBoosting", "XGBoost")
TREES: tuple[str, ...] = ("RandomForest", "GradientBoosting", "XGBoost")
SPLITS: tuple[str, ...] = ("random_split", "model_split")
# Predictor.best of a parameter with too few usable curves to learn from (no model: NaN)
NOT_PREDICTED = "not predicted"
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

    def to_dict(self) -> dict:
        """Plain JSON-able form (kind, mean, std and the Yeo-Johnson lambda): how a saved
        predictor stores it (no pickle)."""
        lam = None if self.power is None else float(np.ravel(self.power.lambdas_)[0])
        return {"kind": self.kind, "mean": self.mean, "std": self.std, "lambda": lam}

    @classmethod
    def from_dict(cls, d: dict) -> TargetTransform:
        """Inverse of `to_dict`; ValueError naming the problem for anything else."""
        if not isinstance(d, dict) or d.get("kind") not in ("log1p", "slog1p", "yeo-johnson"):
            raise ValueError(
                f"a target transform must have kind log1p, slog1p or yeo-johnson: {d!r}"
            )
        nums = {k: d.get(k) for k in ("mean", "std")}
        if d["kind"] == "yeo-johnson":
            nums["lambda"] = d.get("lambda")
        for k, v in nums.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise ValueError(
                    f"target transform {d['kind']}: {k} must be a finite number, got {v!r}"
                )
        if nums["std"] <= 0:
            raise ValueError(f"target transform {d['kind']}: std must be > 0, got {nums['std']!r}")
        power = None
        if d["kind"] == "yeo-johnson":
            from sklearn.preprocessing import PowerTransformer

            power = PowerTransformer(method="yeo-johnson", standardize=False)
            power.lambdas_ = np.array([float(nums["lambda"])])
            power.n_features_in_ = 1
        return cls(d["kind"], float(nums["mean"]), float(nums["std"]), power)

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


def range_columns(rows: pd.DataFrame, feats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every column whose training range a predictor keeps: the features (`architecture_features`
    of `rows`, or `feats` when already computed) and the EXTRA architecture columns, filled
    where `rows` lacks them (or holds NaN) with a dense multi-head model's values: H_kv = H,
    head_dim = d / H, n_experts = experts_per_token = 1."""
    F = architecture_features(rows) if feats is None else feats
    out = F.copy()
    H = pd.to_numeric(rows["H"], errors="coerce").to_numpy(np.float64)
    d = pd.to_numeric(rows["d"], errors="coerce").to_numpy(np.float64)
    default = {"H_kv": H, "head_dim": d / H, "n_experts": 1.0, "experts_per_token": 1.0}
    for c in EXTRA:
        given = (
            pd.to_numeric(rows[c], errors="coerce").to_numpy(np.float64)
            if c in rows.columns
            else np.full(len(rows), np.nan)
        )
        out[c] = np.where(np.isfinite(given), given, default[c])
    return out


def training_ranges(columns: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """name -> (min, max) over the finite values of each column (columns with none left out)."""
    out = {}
    for c in columns.columns:
        v = pd.to_numeric(columns[c], errors="coerce").to_numpy(np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            out[str(c)] = (float(v.min()), float(v.max()))
    return out
