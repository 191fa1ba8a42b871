"""Why a Predictor predicts what it does: SHAP values and partial dependence (paper Figs. 9-10).

Functions of a fitted predictor (its best tree model per parameter, `tree_models`, and training
features `X`); `Predictor.shap_values` / `shap_importance` / `shap_figures` / `pdp_figures`
delegate here. The predictor is taken by what it holds (`Explainable`), so this module does not
import `_predictor`. shap, matplotlib and sklearn.inspection are imported on first use only:
importing the prediction stage must stay cheap.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd


class Explainable(Protocol):
    """What the explanations read of a `Predictor` (and fill: the `_shap` cache)."""

    features: list[str]
    X: pd.DataFrame | None  # training features, [n_used, n_features]
    keys: pd.DataFrame | None  # model, layer of each training row
    tree_models: dict[str, Any]  # param -> fitted tree model
    best_tree: dict[str, str]  # param -> its model name
    _shap: dict[str, Any]  # param -> shap.Explanation, a cache


def shap_values(pred: Explainable) -> dict:
    """param -> shap.Explanation of its best tree model over the training features.

    Cached on `pred._shap` (not saved: recomputed after load)."""
    if not pred._shap:
        import shap

        X = pred.X.to_numpy(np.float64)
        for p, m in pred.tree_models.items():
            e = shap.TreeExplainer(m)
            v = np.asarray(e.shap_values(X), np.float64)
            base = np.full(len(X), float(np.ravel(e.expected_value)[0]))
            pred._shap[p] = shap.Explanation(
                values=v, base_values=base, data=X, feature_names=list(pred.features)
            )
    return pred._shap


def shap_importance(pred: Explainable) -> pd.DataFrame:
    """Mean |SHAP| per feature (rows, in `pred.features` order) x parameter (columns)."""
    sv = shap_values(pred)
    return pd.DataFrame({p: np.abs(e.values).mean(0) for p, e in sv.items()}, pred.features)


def shap_figures(pred: Explainable, out_dir) -> list[Path]:
    """Beeswarm and bar per parameter, one waterfall (K's highest prediction, as Fig. 9b)."""
    import shap

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    sv = shap_values(pred)
    for p, e in sv.items():
        for kind, fn in (("beeswarm", shap.plots.beeswarm), ("bar", shap.plots.bar)):
            plt.figure(figsize=(7, 4.5))
            fn(e, max_display=12, show=False)
            paths.append(_save(plt, out / f"shap_{kind}_{p}.png",
                               f"{p} ({pred.best_tree[p]}): SHAP, {kind}"))  # fmt: skip
    if sv:
        p = "K" if "K" in sv else next(iter(sv))
        i = int(np.argmax(sv[p].values.sum(1)))
        plt.figure(figsize=(7, 4.5))
        shap.plots.waterfall(sv[p][i], max_display=10, show=False)
        lay = pred.keys.iloc[i]
        title = f"{p}: layer {lay['layer']} of {lay['model']} (highest prediction)"
        paths.append(_save(plt, out / f"shap_waterfall_{p}.png", title))
    return paths


def pdp_figures(pred: Explainable, out_dir, top: int = 3) -> list[Path]:
    """Partial dependence of each parameter's best tree model on its `top` SHAP features."""
    from sklearn.inspection import PartialDependenceDisplay

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    imp, X, paths = shap_importance(pred), pred.X.to_numpy(np.float64), []
    for p, m in pred.tree_models.items():
        idx = list(np.argsort(-imp[p].to_numpy(), kind="stable")[:top])
        fig, ax = plt.subplots(figsize=(3.2 * len(idx), 3.0))
        PartialDependenceDisplay.from_estimator(
            m, X, [int(i) for i in idx], feature_names=pred.features, grid_resolution=25, ax=ax
        )
        paths.append(_save(plt, out / f"pdp_{p}.png", f"{p} ({pred.best_tree[p]})"))
    return paths


def _plt():
    import matplotlib

    if "inline" not in matplotlib.get_backend():  # keep a notebook's inline backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, path: Path, title: str) -> Path:
    """Write the current figure to `path` atomically (the last good copy survives a kill or a
    full disk) and close it."""
    from ..dataset import atomic_write_bytes

    fig = plt.gcf()
    try:
        fig.suptitle(title + "  [standardised transformed target]", fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
