"""The report's tables: markdown / HTML rendering and the paper's Tables 1, 2, 3 and 5.

Each table function takes the stage outputs it summarises (Trajectories, FitResult, Dataset,
the hypotheses frame, a Predictor table) and returns a DataFrame; `_document` renders them.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _figures

if TYPE_CHECKING:
    from ..curves import FitResult
    from ..dataset import Dataset, Trajectories


def _fmt(value: Any, floatfmt: str) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "–"
        return format(float(value), floatfmt)
    return str(value)


def markdown_table(
    frame: pd.DataFrame, *, floatfmt: str = ".4f", bold: pd.DataFrame | None = None
) -> str:
    """GitHub markdown table of `frame` (index as the first column). `bold`: same-shape bools.

    pandas' to_markdown needs `tabulate`, which massact does not depend on.
    """
    head = [str(frame.index.name or ""), *map(str, frame.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    rows = frame.itertuples(index=False, name=None)  # keeps each column's dtype
    for r, (idx, row) in enumerate(zip(frame.index, rows)):
        cells = [str(idx)]
        for c, value in enumerate(row):
            text = _fmt(value, floatfmt).replace("|", "\\|")
            if bold is not None and bool(bold.iat[r, c]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(
    frame: pd.DataFrame, *, floatfmt: str = ".4f", bold: pd.DataFrame | None = None
) -> str:
    head = [str(frame.index.name or ""), *map(str, frame.columns)]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    rows = frame.itertuples(index=False, name=None)
    for r, (idx, row) in enumerate(zip(frame.index, rows)):
        cells = [f"<td>{html.escape(str(idx))}</td>"]
        for c, value in enumerate(row):
            text = html.escape(_fmt(value, floatfmt))
            if bold is not None and bool(bold.iat[r, c]):
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def row_best(frame: pd.DataFrame, largest: bool = True) -> pd.DataFrame:
    """Bold mask: the best value in each row, over the numeric columns only."""
    values = frame.apply(pd.to_numeric, errors="coerce")
    best = values.max(axis=1) if largest else values.min(axis=1)
    return values.eq(best, axis=0) & values.notna()


def fit_frame(traj: Trajectories, fit: FitResult) -> pd.DataFrame:
    """Trajectory keys joined with the per-curve fit table."""
    frame = fit.to_frame().reset_index(drop=True)
    keys = traj.keys.reset_index(drop=True)
    dup = [c for c in keys.columns if c in frame.columns]
    return pd.concat([keys, frame.drop(columns=dup)], axis=1)


def status_table(fit: FitResult) -> pd.DataFrame:
    """Curves per fit status, by name (FitResult.status_counts) with what each one means."""
    from ..curves import FitStatus

    counts = fit.status_counts()
    by_label = {s.label: s for s in FitStatus}
    frame = pd.DataFrame(
        {
            "curves": [int(n) for n in counts.values()],
            "meaning": [by_label[k].message if k in by_label else "" for k in counts],
        },
        index=pd.Index(list(counts), name="status"),
    )
    return frame


def table1(traj: Trajectories, fit: FitResult) -> pd.DataFrame:
    """Table 1: mean R^2 of the Eq. 9 fit per model (over curves whose fit converged)."""
    ok = _figures.fitted(fit)
    models = _figures.model_order(keys=traj.keys)
    names = traj.keys["model"].astype(str).to_numpy()
    rows = {}
    for m in [*models, "all"]:
        sel = np.ones_like(ok) if m == "all" else names == m
        r2 = fit.r2[sel & ok]
        rows[m] = {
            "layers": int(sel.sum()),
            "fitted": int((sel & ok).sum()),
            "mean R²": float(np.mean(r2)) if r2.size else np.nan,
            "min R²": float(np.min(r2)) if r2.size else np.nan,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model"
    return frame


def table2(dataset: Dataset) -> pd.DataFrame:
    """Table 2: variability of the ratio across sequences (from `variability_table`)."""
    from ..dataset import variability_table

    frame = variability_table(dataset)
    if "model" in frame.columns:
        frame = frame.set_index("model")
    order = [m for m in _figures.model_order(dataset) if m in frame.index]
    frame = frame.loc[order + [m for m in frame.index if m not in order]]
    names = {"cv_pct": "CV%", "sem_pct": "SEM%", "ci95_pct": "95% CI ±%"}
    frame = frame.rename(columns=names)
    if "suite" in frame.columns and frame["suite"].nunique() <= 1:
        frame = frame.drop(columns="suite")
    frame.index.name = "model"
    return frame


def _hyp_models(hyp: pd.DataFrame, traj: Trajectories) -> pd.Series:
    if "model" in hyp.columns:
        return hyp["model"].astype(str)
    names = traj.keys["model"].astype(str).to_numpy()
    for col in ("curve", "series", "index", "row"):
        if col in hyp.columns:
            return pd.Series(names[hyp[col].to_numpy(int)], index=hyp.index)
    raise ValueError("hypotheses table has no 'model' or 'curve' column to group by")


def table5(hyp: pd.DataFrame, traj: Trajectories) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 5: mean R^2 and mean AIC per hypothesis (rows) and model (columns), plus 'all'."""
    frame = hyp.assign(model=_hyp_models(hyp, traj).to_numpy())
    models = [m for m in _figures.model_order(keys=traj.keys) if m in set(frame["model"])]
    hyps = list(dict.fromkeys(frame["hypothesis"].astype(str)))
    out = []
    for col in ("r2", "aic"):
        values = frame[col].astype(float).where(np.isfinite(frame[col].astype(float)))
        by = values.groupby([frame["hypothesis"].astype(str), frame["model"]]).mean()
        wide = by.unstack("model").reindex(index=hyps, columns=models)
        wide["all"] = values.groupby(frame["hypothesis"].astype(str)).mean().reindex(hyps)
        wide.index.name = "hypothesis"
        wide.columns.name = None
        out.append(wide)
    return out[0], out[1]


def table3(frame: pd.DataFrame, metric: str = "r2") -> pd.DataFrame:
    """Table 3 in the paper's form (parameter rows, a Transform column, then one column per
    regression model in the predictor's order) from a Predictor table, long (param, model and
    metric columns) or already wide. Raises StopIteration when `metric` is absent."""
    if {"param", "model"} <= set(frame.columns):
        from ..predict import metric_table

        col = next(c for c in frame.columns if c.lower() in {metric, f"test_{metric}"})
        wide = metric_table(frame, col)
        if "transform" in frame.columns:
            kinds = frame.drop_duplicates("param").set_index("param")["transform"]
            wide.insert(0, "transform", kinds.reindex(wide.index).astype(str))
        wide.index.name = "parameter"
        wide.columns.name = None
        return wide
    return frame
