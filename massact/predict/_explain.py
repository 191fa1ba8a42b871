"""Why a Predictor predicts what it does: SHAP values and partial dependence (paper Figs. 9-10).

Functions of a fitted predictor (its best tree model per parameter, `tree_models`, and training
features `X`); `Predictor.shap_values` / `shap_importance` / `shap_figures` / `pdp_figures`
(a figure per parameter) and `shap_grid_figures` / `pdp_grid_figures` (the report's: one figure
per kind, every parameter in it) delegate here. The predictor is taken by what it holds
(`Explainable`), so this module does not import `_predictor`. shap, matplotlib and
sklearn.inspection are imported on first use only: importing the prediction stage must stay
cheap.
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
    usable: pd.DataFrame | None  # [n_used, 5] bool: the rows each parameter learned from
    tree_models: dict[str, Any]  # param -> fitted tree model
    best_tree: dict[str, str]  # param -> its model name
    _shap: dict[str, Any]  # param -> shap.Explanation, a cache


def shap_values(pred: Explainable) -> dict:
    """param -> shap.Explanation of its best tree model over the training features.

    Cached on `pred._shap` (not saved: recomputed after load)."""
    if not pred._shap:
        import shap

        for p, m in pred.tree_models.items():
            X = _rows_of(pred, p)
            e = shap.TreeExplainer(m)
            v = np.asarray(e.shap_values(X), np.float64)
            base = np.full(len(X), float(np.ravel(e.expected_value)[0]))
            pred._shap[p] = shap.Explanation(
                values=v, base_values=base, data=X, feature_names=list(pred.features)
            )
    return pred._shap


def _rows_of(pred: Explainable, param: str, keys: bool = False):
    """The training features [n_p, n_features] parameter `param` learned from (every row of X
    unless `pred.usable` says otherwise); with keys=True, those rows' keys instead."""
    rows = getattr(pred, "usable", None)
    frame = pred.keys if keys else pred.X
    if rows is not None:
        frame = frame[rows[param].to_numpy(bool)]
    return frame.reset_index(drop=True) if keys else frame.to_numpy(np.float64)


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
        lay = _rows_of(pred, p, keys=True).iloc[i]
        title = f"{p}: layer {lay['layer']} of {lay['model']} (highest prediction)"
        paths.append(_save(plt, out / f"shap_waterfall_{p}.png", title))
    return paths


def pdp_figures(pred: Explainable, out_dir, top: int = 3) -> list[Path]:
    """Partial dependence of each parameter's best tree model on its `top` SHAP features."""
    from sklearn.inspection import PartialDependenceDisplay

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    imp, paths = shap_importance(pred), []
    for p, m in pred.tree_models.items():
        X = _rows_of(pred, p)
        idx = list(np.argsort(-imp[p].to_numpy(), kind="stable")[:top])
        fig, ax = plt.subplots(figsize=(3.2 * len(idx), 3.0))
        PartialDependenceDisplay.from_estimator(
            m, X, [int(i) for i in idx], feature_names=pred.features, grid_resolution=25, ax=ax
        )
        paths.append(_save(plt, out / f"pdp_{p}.png", f"{p} ({pred.best_tree[p]})"))
    return paths


# the report's figures: one per kind, every parameter in it, labels legible at page width
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
       "ytick.labelsize": 10, "legend.fontsize": 9}  # fmt: skip


def shap_grid_figures(pred: Explainable, out_dir) -> list[Path]:
    """The report's SHAP figures, one per kind: shap_beeswarm.png (a panel per parameter, as
    paper Figs. 9a/10), shap_importance.png (mean |SHAP|, features x parameters, one heatmap)
    and shap_waterfall_<p>.png (K's highest prediction, as Fig. 9b)."""
    import shap

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sv = shap_values(pred)
    if not sv:
        return []
    paths = []
    with plt.rc_context(_RC):
        ncol = min(3, len(sv) + 1)
        nrow = -(-(len(sv) + 1) // ncol)  # one cell more: the colour key
        fig, axes = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, 4.4 * nrow), squeeze=False)
        cells = axes.ravel()
        for ax, (p, e) in zip(cells, sv.items()):
            shap.plots.beeswarm(e, max_display=8, ax=ax, show=False, plot_size=None,
                                color_bar=False, s=14)  # fmt: skip
            ax.set_title(f"{p} ({pred.best_tree[p]})", fontsize=13)
            ax.set_xlabel("SHAP value")
            ax.tick_params(axis="y", labelsize=11)
        key = cells[len(sv)]
        key.axis("off")
        from matplotlib.cm import ScalarMappable

        cax = key.inset_axes([0.05, 0.15, 0.06, 0.7])
        bar = fig.colorbar(ScalarMappable(cmap=shap.plots.colors.red_blue), cax=cax, ticks=[0, 1])
        bar.ax.set_yticklabels(["low", "high"])
        key.text(0.3, 0.5, "colour: the feature's value\n(low to high, per feature)\n\n"
                 "one dot per training layer;\nx: its SHAP value, the effect on\nthe "
                 "standardised transformed\nparameter; rows: the 8 most\nimportant features",
                 transform=key.transAxes, va="center", fontsize=11)  # fmt: skip
        for ax in cells[len(sv) + 1 :]:
            ax.set_visible(False)
        fig.suptitle("SHAP per parameter (beeswarm) of its best tree model", fontsize=14)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        paths.append(_save(plt, out / "shap_beeswarm.png", None))

        imp = shap_importance(pred)
        fig, ax = plt.subplots(figsize=(1.3 * imp.shape[1] + 3.5, 0.42 * len(imp) + 1.6))
        share = imp / imp.sum(axis=0).where(imp.sum(axis=0) > 0, 1.0)
        im = ax.imshow(share.to_numpy(), aspect="auto", cmap="Blues", vmin=0)
        ax.set_xticks(range(imp.shape[1]), [f"{p}\n({pred.best_tree[p]})" for p in imp.columns])
        ax.set_yticks(range(len(imp)), list(imp.index))
        for (i, j), v in np.ndenumerate(imp.to_numpy()):
            dark = share.iat[i, j] > 0.6 * float(np.nanmax(share.to_numpy()))
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")  # fmt: skip
        fig.colorbar(im, ax=ax, label="share of the parameter's total mean |SHAP|")
        paths.append(_save(plt, out / "shap_importance.png", "mean |SHAP| per feature"))

        p = "K" if "K" in sv else next(iter(sv))
        i = int(np.argmax(sv[p].values.sum(1)))
        plt.figure(figsize=(8, 5))
        shap.plots.waterfall(sv[p][i], max_display=10, show=False)
        lay = _rows_of(pred, p, keys=True).iloc[i]
        title = f"{p}: layer {lay['layer']} of {lay['model']} (highest prediction)"
        paths.append(_save(plt, out / f"shap_waterfall_{p}.png", title))
    return paths


def pdp_grid_figures(pred: Explainable, out_dir, top: int = 3) -> list[Path]:
    """The report's partial dependence figure, pdp.png: a row per parameter, its best tree
    model's partial dependence on its `top` SHAP features."""
    from sklearn.inspection import PartialDependenceDisplay

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    imp = shap_importance(pred)
    params = list(pred.tree_models)
    if not params:
        return []
    top = max(1, min(top, len(pred.features)))
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(len(params), top, figsize=(4.0 * top, 2.9 * len(params)),
                                 squeeze=False)  # fmt: skip
        for r, p in enumerate(params):
            idx = [int(i) for i in np.argsort(-imp[p].to_numpy(), kind="stable")[:top]]
            PartialDependenceDisplay.from_estimator(
                pred.tree_models[p], _rows_of(pred, p), idx, feature_names=pred.features,
                grid_resolution=25, ax=axes[r, : len(idx)],
            )  # fmt: skip
            for ax in axes[r, : len(idx)]:
                ax.set_ylabel("")
            axes[r, 0].set_ylabel(f"{p} ({pred.best_tree[p]})")
        fig.suptitle("Partial dependence of each parameter's best tree model on its top SHAP "
                     "features [standardised transformed target]", fontsize=13)  # fmt: skip
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
        path = _save(plt, out / "pdp.png", None)
    return [path]


def _plt():
    import matplotlib

    if "inline" not in matplotlib.get_backend():  # keep a notebook's inline backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, path: Path, title: str | None) -> Path:
    """Write the current figure to `path` atomically (the last good copy survives a kill or a
    full disk) and close it; `title` (None: the figure has its own) says what the axes show."""
    from ..dataset import atomic_write_bytes

    fig = plt.gcf()
    try:
        if title is not None:
            fig.suptitle(title + "  [standardised transformed target]", fontsize=12)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
