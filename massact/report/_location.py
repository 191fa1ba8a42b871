"""Where the massive activations sit (beyond the paper): per model and layer at the last step,
the share of probe sequences whose top1 is on the first token, the dominant top1 channel, and
the attention-sink share; as a table and a figure.

A top1 on the first (BOS) token in one fixed channel, with a head per layer resting its
attention on that token, is what marks the ratio as an attention-sink activation rather than a
large value anywhere. Needs the optional task columns top1_token / top1_channel (and
bos_attention for the sink share); datasets without them (the paper's archive) get no table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import _figures

if TYPE_CHECKING:
    from ..dataset import Dataset

LOCATION_COLUMNS = ("top1_token", "top1_channel")


def has_locations(dataset: Dataset) -> bool:
    return all(c in dataset.stats.columns for c in LOCATION_COLUMNS)


def _last_step(stats: pd.DataFrame) -> pd.DataFrame:
    last = stats.groupby("model")["step"].transform("max")
    return stats[stats["step"] == last]


def location_table(dataset: Dataset) -> pd.DataFrame:
    """One row per (model, layer) at the model's last step: ratio (mean over sequences),
    first-token share of the top1, the dominant top1 channel and its share, and the mean
    attention-sink share (when recorded). Models in size order."""
    if not has_locations(dataset):
        raise KeyError("the dataset has no top1_token / top1_channel columns")
    stats = _last_step(dataset.stats).copy()
    stats = stats[np.isfinite(stats["ratio"]) & (stats["top1_token"] >= 0)]
    stats["on_first"] = stats["top1_token"] == 0
    group = stats.groupby(["model", "layer"], sort=False)
    # the most frequent top1 channel per layer (first of equals) and its share of the sequences
    counts = group["top1_channel"].value_counts(normalize=True, sort=True)
    dominant = counts.groupby(level=["model", "layer"], sort=False).head(1)
    dominant = dominant.reset_index("top1_channel")
    table = pd.DataFrame(
        {
            "step": group["step"].first(),
            "ratio": group["ratio"].mean(),
            "top1 on token 0": group["on_first"].mean(),
            "top1 channel": dominant["top1_channel"].astype(int),
            "channel share": dominant["proportion"],
        }
    )
    if "bos_attention" in stats.columns:
        table["sink share"] = group["bos_attention"].mean()
    order = {m: i for i, m in enumerate(_figures.model_order(dataset))}
    table = table.reset_index()
    table["_o"] = table["model"].map(order).fillna(len(order))
    table = table.sort_values(["_o", "model", "layer"]).drop(columns="_o")
    return table.set_index(["model", "layer"])


def location_summary(table: pd.DataFrame) -> str:
    """One sentence: how many layers have their top1 mostly on token 0, and their sink share."""
    on_first = table["top1 on token 0"] >= 0.5
    text = (
        f"At the last step, {int(on_first.sum())} of {len(table)} layers have their top1 on the "
        f"first token in at least half of the probe sequences"
    )
    if on_first.any():
        share = table.loc[on_first, "channel share"].mean()
        text += f", one channel holding it in {share:.0%} of the sequences on average"
    if "sink share" in table.columns and table["sink share"].notna().any():
        text += (
            f"; the most sink-like head per layer puts {table['sink share'].mean():.2f} of its "
            "attention on the first token on average"
        )
    return text + "."


def fig_location(table: pd.DataFrame, path: str | Path) -> Path:
    """Two panels over relative depth, a line per model (table: `location_table`): (a) share
    of sequences whose top1 is on the first token, (b) attention-sink share (when recorded)."""
    table = table.reset_index()
    sinks = "sink share" in table.columns
    fig = Figure(figsize=(10 if sinks else 5.5, 3.6))
    axes = fig.subplots(1, 2 if sinks else 1, squeeze=False)[0]
    panels = [("top1 on token 0", "(a) top1 on the first token")]
    if sinks:
        panels.append(("sink share", "(b) attention-sink share (max over heads)"))
    for ax, (column, title) in zip(axes, panels):
        for model, rows in table.groupby("model", sort=False):
            depth = (rows["layer"] + 1) / (rows["layer"].max() + 1)
            ax.plot(depth, rows[column], marker="o", ms=3, label=str(model))
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("relative depth (layer + 1) / L")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of probe sequences / attention")
    axes[-1].legend(fontsize=7, loc="best")
    return _figures.save_figure(fig, path)


def write_location_section(doc, dataset: Dataset, fig_dir: Path, tab_dir: Path, root: Path) -> None:
    """The report's section on where the top1 sits (doc: the report's document builder)."""
    doc.heading("Where the massive activations sit")
    if not has_locations(dataset):
        doc.para(
            "Not recorded: this dataset's task files hold no top1 positions (the paper's archive "
            "has none; every source of this package writes them)."
        )
        return
    table = location_table(dataset)
    doc.para(location_summary(table))
    doc.table(
        table.reset_index().set_index("model"),
        "Top1 location per model and layer at the last step: share of probe sequences whose "
        "top1 is on token 0, the most frequent top1 channel and its share, and the attention-"
        "sink share (largest mean attention of a head on token 0).",
        floatfmt=".2f",
        csv=tab_dir / "top1_location.csv",
    )
    path = fig_location(table, fig_dir / "top1_location.png")
    doc.figure(
        path,
        "Where the top1 sits: share of sequences with the top1 on the first token, and the "
        "attention-sink share, per layer (relative depth), a line per model.",
        root,
    )
