"""The report's predictor parts: its summary (training exclusions, notes, each parameter's kept
model and test R²), the feature legend with training ranges (tables/features.csv), and its SHAP
/ partial-dependence figures with their captions. `_document.write_report` calls them in order.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ..predict import Predictor
    from ._doc_builder import _Doc


_PREDICTOR_CAPTIONS = {
    "shap_beeswarm": "Fig. 9a/10: SHAP summary (beeswarm) of each parameter's best tree model, "
    "a panel per parameter.",
    "shap_importance": "Fig. 10b: mean |SHAP| per feature and parameter (the share of the "
    "parameter's total in colour, the value in each cell).",
    "pdp": "Partial dependence of each parameter's best tree model on its three most important "
    "features, a row per parameter.",
}


def _predictor_caption(stem: str) -> str:
    if stem in _PREDICTOR_CAPTIONS:
        return _PREDICTOR_CAPTIONS[stem]
    kind, _, param = stem.rpartition("_")
    text = {
        "shap_beeswarm": "SHAP summary (beeswarm) of the best tree model, as paper Figs. 9a/10",
        "shap_bar": "mean |SHAP| per feature",
        "shap_waterfall": "SHAP waterfall of the highest prediction, as paper Fig. 9b",
        "pdp": "partial dependence on the top SHAP features",
    }.get(kind)
    return f"{param}: {text}." if text else stem


def _predictor_figures(predictor: Predictor, fig_dir: Path) -> list[Path]:
    """SHAP (Figs. 9-10) and partial dependence figures from the predictor, if it makes them:
    one figure per kind (`shap_grid_figures`, `pdp_grid_figures`), else one per parameter."""
    paths: list[Path] = []
    grid = all(hasattr(predictor, n) for n in ("shap_grid_figures", "pdp_grid_figures"))
    names = ("shap_grid_figures", "pdp_grid_figures") if grid else ("shap_figures", "pdp_figures")
    for name in names:
        method = getattr(predictor, name, None)
        if method is None:
            continue
        try:
            paths.extend(Path(p) for p in method(fig_dir))
        except Exception as exc:  # an explainer failing must not lose the rest of the report
            warnings.warn(f"massact report: {name} failed: {exc}", RuntimeWarning, stacklevel=2)
    return paths


def _predictor_summary(doc: _Doc, predictor: Predictor) -> None:
    """Which curves trained the predictor, its notes, and each parameter's kept model with its
    test R^2 on whole held-out models (the score for an architecture it never saw)."""
    if hasattr(predictor, "exclusions_text") and getattr(predictor, "exclusions", None):
        text = predictor.exclusions_text()
        doc.para(text[:1].upper() + text[1:] + ".")
    notes = [str(n) for n in getattr(predictor, "notes", []) or []]
    if notes:
        doc.bullets(notes)
    if hasattr(predictor, "skill"):
        skill = predictor.skill().rename(
            columns={
                "model": "kept model",
                "model_split_r2": "R² whole held-out models",
                "random_split_r2": "R² random layer split",
            }  # fmt: skip
        )
        skill.index.name = "parameter"
        doc.table(
            skill,
            "Kept model per parameter and its test R² (transformed, standardised space; "
            "<= 0: no better than the training mean). `massact predict` prints this beside "
            "every prediction.",
            floatfmt=".3f",
        )


def _predictor_legend(doc: _Doc, predictor: Predictor, tab_dir: Path) -> None:
    """Every feature name explained, whether the models use it, and its training range: the
    range outside which `massact predict` warns that it extrapolates."""
    if hasattr(predictor, "training_range"):
        legend = predictor.training_range()
        legend["feature"] = legend["feature"].map({True: "yes", False: "no"})
        legend = legend.rename(
            columns={"min": "training min", "max": "training max", "feature": "used by models"}
        )[["meaning", "used by models", "training min", "training max"]]
    else:
        from ..predict._features import MEANINGS

        names = list(getattr(predictor, "features", []))
        legend = pd.DataFrame({"meaning": [MEANINGS.get(n, "") for n in names]}, index=names)
    legend.index.name = "feature"
    doc.table(
        legend,
        "Features: what each name means (l: 1-based layer index, L layers, d hidden size, "
        "H heads, d_ff MLP width) and its range over the training curves.",
        floatfmt=".4g",
        csv=tab_dir / "features.csv",
    )
