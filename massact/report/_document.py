"""The results folder: fits, hypotheses, predictor, figures, report.md and report.html.

Layout of `out` (the dataset itself is written by the source, usually into `out/dataset`):
```
fits.parquet         FitResult.to_frame() joined with the trajectory keys
hypotheses.parquet   fit_hypotheses() table
predictor/           Predictor.save()
predictions.parquet  predicted parameters per (model, layer) for the suite's own architectures
figures/*.png        paper Figs. 2-8 (Figs. 3-4: every model), SHAP/PDP Figs. 9-10 (one figure
                     per kind, a panel per parameter)
tables/*.csv         Tables 1, 2, 3, 5 and features.csv (every feature name, its meaning and its
                     training range) as CSV
provenance.json      versions, seed, git commit, device, wall time per stage
report.md, report.html (figures embedded as base64)
```
The tables come from `_tables`, the figures from `_figures` (`all_figures` lists them with
their captions) and the predictor's own SHAP / partial-dependence figures (`_predictor_section`,
with the predictor's summary and feature legend). Both documents are built by `_doc_builder._Doc`
and open with a table of contents: every heading, table and figure has an anchor (the same id in
report.md and report.html). Markdown in the text (`code`, **bold**) is rendered in the HTML;
fit statuses are named (FitResult.status_counts, FitStatus.message).
Every file is written atomically (massact.dataset.atomic_write_bytes): a kill or a full disk
during a re-run leaves the last good copy of each file, and the error names the file.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..dataset import atomic_write_bytes
from . import _figures
from ._doc_builder import _CSS, _Doc
from ._location import write_location_section
from ._predictor_section import (
    _predictor_caption,
    _predictor_figures,
    _predictor_legend,
    _predictor_summary,
)
from ._tables import fit_frame, row_best, status_table, table1, table2, table3, table5

if TYPE_CHECKING:
    from ..curves import FitResult
    from ..dataset import Dataset, Trajectories
    from ..predict import Predictor


def all_figures(
    out_dir: str | Path,
    dataset: Dataset,
    traj: Trajectories,
    fit: FitResult | None,
    *,
    max_trajectory_models: int | None = None,
) -> dict[str, Any]:
    """Every figure the report shows: name -> (path, caption). Skips fit figures without a fit.
    Figs. 3 and 4 show every model (Fig. 4 one figure per model) unless max_trajectory_models
    limits Fig. 4 to that many, spread over the size order (the caption then says so)."""
    out = Path(out_dir)
    figs: dict[str, Any] = {}
    figs["fig2"] = (
        _figures.fig_final_ratio(dataset, out / "fig2_final_ratio.png"),
        "Fig. 2: parameter count vs the final top1/median ratio (max over layers, last step).",
    )
    present = set(dataset.stats["model"].astype(str))
    order = [m for m in _figures.model_order(dataset) if m in present]
    figs["fig3"] = (
        _figures.fig_top_activations(dataset, out / "fig3_top_activations.png", order),
        "Fig. 3: top-1..3 activations and median per layer at the first (dashed) and last "
        f"(solid) step, a panel per model (all {len(order)}).",
    )
    shown = (
        order
        if max_trajectory_models is None
        else _figures.pick_models(order, max_trajectory_models)
    )
    partial = len(shown) < len(order)
    for model in shown:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
        figs[f"fig4_{safe}"] = (
            _figures.fig_ratio_trajectories(dataset, out / f"fig4_trajectories_{safe}.png", model),
            f"Fig. 4: top-1..3 to median ratios during training, {model}, one panel per layer"
            + (f" ({len(shown)} of {len(order)} models shown)." if partial else "."),
        )
    figs["fig5"] = (
        _figures.fig_peak_heatmaps(traj, out / "fig5_peak_heatmaps.png"),
        "Fig. 5: peak ratio (a) and step of the peak (b) by relative depth and model (data).",
    )
    if fit is not None:
        figs["fig6"] = (
            _figures.fig_fit_examples(traj, fit, out / "fig6_fit_examples.png"),
            "Fig. 6: data and Eq. 9 fits (95% band) for a shallow, middle and deep layer.",
        )
        figs["fig7"] = (
            _figures.fig_r2(traj, fit, out / "fig7_r2.png"),
            "Fig. 7: coefficients of determination of the trajectory fits.",
        )
        figs["fig8"] = (
            _figures.fig_t_peak(fit, out / "fig8_t_peak.png", last_step=float(np.max(traj.t))),
            "Fig. 8: t_peak (Eq. 13) over (λ, γ) with t0 fixed at the median fitted value; "
            "masked where no peak is observable.",
        )
    return figs


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
    doc.contents()
    run_notes = [str(n) for n in (provenance or {}).get("notes") or []]
    if run_notes:
        doc.heading("Notes")
        doc.bullets(run_notes)
    if dataset.notes:
        doc.heading("Skipped inputs")
        doc.bullets([str(n) for n in dataset.notes])

    doc.heading("Fits of Eq. 9")
    if fit is not None:
        atomic_write_bytes(out / "fits.parquet", fit_frame(traj, fit).to_parquet(index=False))
        status = ", ".join(f"{name} {n}" for name, n in fit.status_counts().items())
        doc.para(
            f"{int(_figures.fitted(fit).sum())} of {len(fit.r2)} curves fitted, "
            f"{int((fit.ok() & ~fit.degenerate).sum())} with usable Eq. 9 parameters "
            f"(used for prediction; {int(fit.degenerate.sum())} degenerate: the curve is fitted "
            "but A, lam, gamma, t0 are ill-determined; of these, "
            f"{int((fit.usable()[:, -1] & fit.degenerate).sum())} fix K, the level the curve "
            "settles at, and train its predictor) "
            f"(status counts: {status}); "
            f"compile {fit.compile_seconds:.2f} s, run {fit.run_seconds:.2f} s."
        )
        doc.table(status_table(fit), "Fit status: curves per outcome, and what it means.")
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
        atomic_write_bytes(out / "hypotheses.parquet", hyp.to_parquet(index=False))
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

    write_location_section(doc, dataset, fig_dir, tab_dir, out)

    pred_figs: list[Path] = []
    if predictor is not None:
        doc.heading("Predicting the curve from the architecture")
        _predictor_summary(doc, predictor)
        for split, caption in (
            ("random_split", "random 80/20 split over layers (the paper's protocol)"),
            ("model_split", "held-out whole models (prediction before training)"),
        ):
            frame = predictor.tables.get(split)
            if frame is None:
                continue
            atomic_write_bytes(tab_dir / f"table3_{split}_full.csv", frame.to_csv().encode())
            for metric, fmt in (("r2", ".3f"), ("mae", ".3f"), ("rmse", ".3f")):
                try:
                    wide = table3(frame, metric)
                except StopIteration:
                    continue
                best = row_best(wide, largest=metric == "r2")
                doc.table(
                    wide,
                    f"Table 3 ({metric.upper()}, test set). {caption}; best in bold.",
                    floatfmt=fmt,
                    bold=best,
                    csv=tab_dir / f"table3_{split}_{metric}.csv",
                )
                if metric == "r2" and wide is frame:
                    break  # already wide: one table holds everything
        _predictor_legend(doc, predictor, tab_dir)
        pred_figs = _predictor_figures(predictor, fig_dir)

    doc.heading("Figures")
    for path, caption in all_figures(fig_dir, dataset, traj, fit).values():
        doc.figure(Path(path), caption, out)
    pred_figs = [p for p in pred_figs if p.suffix.lower() == ".png" and p.exists()]
    if pred_figs:
        doc.heading("SHAP and partial dependence (paper Figs. 9-10)", 3)
    for path in pred_figs:
        doc.figure(path, _predictor_caption(path.stem), out)

    provenance = dict(provenance or {})
    prov_text = json.dumps(provenance, indent=2, default=str)
    atomic_write_bytes(out / "provenance.json", prov_text.encode())
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
    md_text, page = doc.render()
    atomic_write_bytes(md_path, md_text.encode("utf-8"))
    atomic_write_bytes(
        out / "report.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n{page}\n</body></html>\n".encode(),
    )
    return md_path
