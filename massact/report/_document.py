"""The results folder: fits, hypotheses, predictor, figures, report.md and report.html.

Layout of `out` (the dataset itself is written by the source, usually into `out/dataset`):
```
fits.parquet         FitResult.to_frame() joined with the trajectory keys
hypotheses.parquet   fit_hypotheses() table
predictor/           Predictor.save()
predictions.parquet  predicted parameters per (model, layer) for the suite's own architectures
figures/*.png        paper Figs. 2-8, SHAP/PDP Figs. 9-10
tables/*.csv         Tables 1, 2, 3, 5 as CSV
provenance.json      versions, seed, git commit, device, wall time per stage
report.md, report.html (figures embedded as base64)
```
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _figures

if TYPE_CHECKING:
    from ..curves import FitResult
    from ..dataset import Dataset, Trajectories
    from ..predict import Predictor

PARAMS = ("A", "lam", "gamma", "t0", "K")


# --------------------------------------------------------------------------- tables


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


def _row_best(frame: pd.DataFrame, largest: bool = True) -> pd.DataFrame:
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
        col = next(c for c in frame.columns if c.lower() in {metric, f"test_{metric}"})
        models = list(dict.fromkeys(frame["model"]))
        wide = frame.pivot_table(index="param", columns="model", values=col, aggfunc="mean")
        order = [p for p in PARAMS if p in wide.index]
        wide = wide.reindex(index=order + [p for p in wide.index if p not in order])
        wide = wide.reindex(columns=models)
        if "transform" in frame.columns:
            kinds = frame.drop_duplicates("param").set_index("param")["transform"]
            wide.insert(0, "transform", kinds.reindex(wide.index).astype(str))
        wide.index.name = "parameter"
        wide.columns.name = None
        return wide
    return frame


# --------------------------------------------------------------------------- report


class _Doc:
    """A report as blocks, rendered to both markdown and HTML."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append("#" * level + " " + text)
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text)
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(
        self, frame: pd.DataFrame, caption: str, *, floatfmt=".4f", bold=None, csv: Path = None
    ) -> None:
        self.md.append(f"**{caption}**\n\n" + markdown_table(frame, floatfmt=floatfmt, bold=bold))
        self.html.append(
            f"<p><b>{html.escape(caption)}</b></p>"
            + html_table(frame, floatfmt=floatfmt, bold=bold)
        )
        if csv is not None:
            csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(csv)

    def figure(self, path: Path, caption: str, root: Path) -> None:
        rel = path.relative_to(root).as_posix()
        self.md.append(f"![{caption}]({rel})\n\n*{caption}*")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;"
    "padding:3px 8px;text-align:right}img{max-width:100%}figure{margin:1em 0 2em}"
    "pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
)


def _predictor_caption(stem: str) -> str:
    kind, _, param = stem.rpartition("_")
    text = {
        "shap_beeswarm": "SHAP summary (beeswarm) of the best tree model, as paper Figs. 9a/10",
        "shap_bar": "mean |SHAP| per feature",
        "shap_waterfall": "SHAP waterfall of the highest prediction, as paper Fig. 9b",
        "pdp": "partial dependence on the top SHAP features",
    }.get(kind)
    return f"{param}: {text}." if text else stem


def _predictor_figures(predictor: Predictor, fig_dir: Path) -> list[Path]:
    """SHAP (Figs. 9-10) and partial dependence figures from the predictor, if it makes them."""
    paths: list[Path] = []
    for name in ("shap_figures", "pdp_figures"):
        method = getattr(predictor, name, None)
        if method is None:
            continue
        try:
            paths.extend(Path(p) for p in method(fig_dir))
        except Exception as exc:  # an explainer failing must not lose the rest of the report
            warnings.warn(f"massact report: {name} failed: {exc}", RuntimeWarning, stacklevel=2)
    return paths


def write_report(
    out: str | Path,
    dataset: Dataset,
    traj: Trajectories,
    fit: FitResult | None,
    hyp: pd.DataFrame | None = None,
    predictor: Predictor | None = None,
    provenance: dict[str, Any] | None = None,
    *,
    title: str = "massact report",
) -> Path:
    """Write the results folder (see the module docstring) and return the path of report.md."""
    out = Path(out)
    fig_dir, tab_dir = out / "figures", out / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    doc = _Doc()
    doc.heading(title, 1)
    n_models = dataset.stats["model"].nunique()
    doc.para(
        f"{n_models} models, {len(traj.keys)} layer trajectories, "
        f"{dataset.stats['step'].nunique()} distinct checkpoints, "
        f"{dataset.stats['sample'].nunique()} sequences per checkpoint."
        + (f" Dataset: `{dataset.root}`." if dataset.root is not None else "")
    )
    run_notes = list((provenance or {}).get("notes") or [])
    if run_notes:
        doc.heading("Notes", 3)
        doc.md.append("\n".join(f"- {n}" for n in run_notes))
        doc.html.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in run_notes))
        doc.html.append("</ul>")
    if dataset.notes:
        doc.heading("Skipped inputs", 3)
        doc.md.append("\n".join(f"- {n}" for n in dataset.notes))
        doc.html.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in dataset.notes))
        doc.html.append("</ul>")

    doc.heading("Fits of Eq. 9")
    if fit is not None:
        fit_frame(traj, fit).to_parquet(out / "fits.parquet", index=False)
        status = pd.Series(fit.status).value_counts().sort_index()
        doc.para(
            f"{int(_figures.fitted(fit).sum())} of {len(fit.r2)} curves fitted, "
            f"{int((fit.ok() & ~fit.degenerate).sum())} with usable Eq. 9 parameters "
            f"(used for prediction; {int(fit.degenerate.sum())} degenerate: the curve is fitted "
            "but A, lam, gamma, t0 are ill-determined) "
            f"(status counts: {dict((int(k), int(v)) for k, v in status.items())}); "
            f"compile {fit.compile_seconds:.2f} s, run {fit.run_seconds:.2f} s."
        )
        doc.table(
            table1(traj, fit),
            "Table 1. Mean layer-wise R² of the Eq. 9 fit per model.",
            csv=tab_dir / "table1_fit_r2.csv",
        )
    try:
        t2 = table2(dataset)
        doc.table(
            t2,
            "Table 2. Variability of the top1/median ratio across input sequences.",
            floatfmt=".2f",
            csv=tab_dir / "table2_variability.csv",
        )
    except (ImportError, KeyError, ValueError) as exc:
        doc.para(f"Table 2 unavailable: {exc}")

    if hyp is not None and len(hyp):
        hyp.to_parquet(out / "hypotheses.parquet", index=False)
        r2, aic = table5(hyp, traj)
        doc.table(
            r2,
            "Table 5a. Mean R² per hypothesis (Eq. 9, Eq. 14, step responses Eq. 15-18).",
            bold=r2.round(4).eq(r2.round(4).max(axis=0), axis=1),  # ties as displayed
            csv=tab_dir / "table5_r2.csv",
        )
        doc.table(
            aic,
            "Table 5b. Mean AIC per hypothesis (lower is better).",
            floatfmt=".1f",
            bold=aic.round(1).eq(aic.round(1).min(axis=0), axis=1),
            csv=tab_dir / "table5_aic.csv",
        )

    pred_figs: list[Path] = []
    if predictor is not None:
        doc.heading("Predicting the curve from the architecture")
        for split, caption in (
            ("random_split", "random 80/20 split over layers (the paper's protocol)"),
            ("model_split", "held-out whole models (prediction before training)"),
        ):
            frame = predictor.tables.get(split)
            if frame is None:
                continue
            frame.to_csv(tab_dir / f"table3_{split}_full.csv")
            for metric, fmt in (("r2", ".3f"), ("mae", ".3f"), ("rmse", ".3f")):
                try:
                    wide = table3(frame, metric)
                except StopIteration:
                    continue
                best = _row_best(wide, largest=metric == "r2")
                doc.table(
                    wide,
                    f"Table 3 ({metric.upper()}, test set). {caption}; best in bold.",
                    floatfmt=fmt,
                    bold=best,
                    csv=tab_dir / f"table3_{split}_{metric}.csv",
                )
                if metric == "r2" and wide is frame:
                    break  # already wide: one table holds everything
        pred_figs = _predictor_figures(predictor, fig_dir)

    doc.heading("Figures")
    for path, caption in _figures.all_figures(fig_dir, dataset, traj, fit).values():
        doc.figure(Path(path), caption, out)
    pred_figs = [p for p in pred_figs if p.suffix.lower() == ".png" and p.exists()]
    if pred_figs:
        doc.heading("SHAP and partial dependence (paper Figs. 9-10)", 3)
    for path in pred_figs:
        doc.figure(path, _predictor_caption(path.stem), out)

    provenance = dict(provenance or {})
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))
    doc.heading("Provenance")
    stage = provenance.get("stage_seconds") or {}
    if stage:
        timing = pd.DataFrame(
            {
                "wall s": pd.Series(stage, dtype=float),
                "CPU s": pd.Series(provenance.get("stage_cpu_seconds") or {}, dtype=float),
            }
        )
        timing.index.name = "stage"
        doc.table(
            timing, "Time per stage (the report stage itself is not included).", floatfmt=".2f"
        )
    hidden = {"stage_seconds", "stage_cpu_seconds"}
    listing = json.dumps({k: v for k, v in provenance.items() if k not in hidden}, indent=2)
    doc.md.append(f"```json\n{listing}\n```")
    doc.html.append(f"<pre>{html.escape(listing)}</pre>")

    md_path = out / "report.md"
    md_path.write_text("\n\n".join(doc.md) + "\n", encoding="utf-8")
    page = "\n".join(doc.html)
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n{page}\n</body></html>\n",
        encoding="utf-8",
    )
    return md_path
