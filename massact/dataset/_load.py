"""The one dataset format every trajectory source writes and every later stage reads.

Layout of a dataset root::

    <root>/manifest.json                  {"version": 1, "tasks": {"<model>/step<N>": entry}}
    <root>/architectures.parquet          one row per model
    <root>/stats/<model>/step<N>.parquet  one file per (model, step) task
    <root>/report_lines.txt               skipped or malformed inputs, one line each (optional)

A task file holds one row per (layer, sample): suite, model, step, layer, sample, top1..topk,
median, ratio (= top1 / median), plus the task's provenance as constant columns (source,
revision, commit, weights_sha256, input_sha256, duplicate_of, and any extra keys a source adds).
Optional per-row columns: top1_token, top1_channel (where the top1 sits, original positions;
written whenever the stats came from LayerStats) and bos_attention (the mini-suite's attention-
sink share: the largest over heads of the mean attention weight on the first token).
The manifest entry of a task repeats its provenance, the file's sha256 and its row count.

Writing (atomic task files, manifest under a lock, architectures, notes) and the one check of
a task file against its manifest entry (_validate.read_task, used here and by task_done) live
in massact.dataset._format; both are re-exported by massact.dataset. This module loads: Dataset,
load_dataset, Trajectories, load_trajectories, variability_table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._format import (
    ARCH_COLUMNS,
    KEY_COLUMNS,
    TOP_COLUMN,
    read_architectures,
    read_lines,
    read_manifest,
    top_columns,
)
from ._validate import TaskError, layer_counts, read_task


@dataclass
class Dataset:
    """All task files of a dataset root, concatenated.

    stats: one row per (suite, model, step, layer, sample) with top1..topk, median, ratio
        (provenance columns are moved to `provenance`), sorted by model, step, layer, sample.
    architectures: one row per model (ARCH_COLUMNS plus whatever a source adds).
    provenance: one row per (model, step): suite, model, step, file, rows, sha256, source,
        revision, commit, weights_sha256, input_sha256, duplicate_of, extra keys.
    notes: lines of report_lines.txt plus problems found while loading.
    """

    root: Path | None
    stats: pd.DataFrame
    architectures: pd.DataFrame
    provenance: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def load_dataset(root: str | os.PathLike, *, verify: bool = True) -> Dataset:
    """Read every task in the manifest of `root`.

    Each task goes through massact.dataset._validate.read_task (file size and sha256 against the
    manifest when `verify`; columns, dtypes, model, step, rows and, where the architecture table
    has the model, layers 0..L-1 always). A task that fails is left out with a one-line note in
    `notes` ('<model>/step<N>: why; task ignored'), like a missing file. ValueError naming the
    file for a manifest or architecture table that is not readable.
    """
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{root} has no manifest.json: not a massact dataset (create one with "
            "train_mini_suite, ingest_archive or sweep_pythia)"
        )
    manifest = read_manifest(root)
    arch = read_architectures(root)
    n_layers = layer_counts(arch)
    notes = read_lines(root / "report_lines.txt")
    frames, prov_rows = [], []
    for key in sorted(manifest["tasks"]):
        entry = manifest["tasks"][key]
        try:
            df = read_task(root, key, entry, n_layers=n_layers.get(entry["model"]), verify=verify)
        except TaskError as e:
            notes.append(f"{key}: {e}; task ignored")
            continue
        prov = entry.get("provenance", {})
        frames.append(df.drop(columns=[c for c in prov if c in df.columns]))
        prov_rows.append(
            {
                "suite": entry["suite"],
                "model": entry["model"],
                "step": int(entry["step"]),
                "file": entry["file"],
                "rows": int(entry["rows"]),
                "sha256": entry["sha256"],
                **prov,
            }
        )
    if frames:
        stats = pd.concat(frames, ignore_index=True)
        stats = stats.sort_values(["model", "step", "layer", "sample"], kind="stable")
        stats = stats.reset_index(drop=True)
        tops = top_columns(stats.columns)
        rest = [c for c in stats.columns if c not in {*KEY_COLUMNS, *tops, "median", "ratio"}]
        stats = stats[[*KEY_COLUMNS, *tops, "median", "ratio", *rest]]
    else:
        stats = pd.DataFrame({c: pd.Series(dtype=object) for c in KEY_COLUMNS})
    provenance = pd.DataFrame(prov_rows, columns=None if prov_rows else ["suite", "model", "step"])
    if len(provenance):
        provenance = provenance.sort_values(["model", "step"]).reset_index(drop=True)
    if arch is None:
        arch = pd.DataFrame(columns=ARCH_COLUMNS)
    return Dataset(root, stats, arch, provenance, notes)


def _as_dataset(dataset_or_root: Dataset | str | os.PathLike) -> Dataset:
    if isinstance(dataset_or_root, Dataset):
        return dataset_or_root
    if isinstance(dataset_or_root, str | os.PathLike):
        return load_dataset(dataset_or_root)
    raise TypeError(
        f"expected a Dataset or a dataset root path, got {type(dataset_or_root).__name__}"
    )


def _stat_values(stats: pd.DataFrame, stat: str) -> tuple[pd.Series, str]:
    """Per-row values to average over samples, and how to combine ('mean' or 'ratio_of_means')."""
    if stat == "ratio":
        return stats["ratio"], "mean"
    if stat == "ratio_of_means":
        return stats["top1"], "ratio_of_means"
    if stat == "median" or TOP_COLUMN.match(stat):
        if stat not in stats.columns:
            raise ValueError(f"stat {stat!r}: the dataset has no column {stat!r}")
        return stats[stat], "mean"
    m = re.match(r"^(top\d+)_ratio$", stat)
    if m and m.group(1) in stats.columns:
        return stats[m.group(1)] / stats["median"], "mean"
    raise ValueError(
        f"unknown stat {stat!r}: use 'ratio' (mean of top1/median, Eq. 8), 'ratio_of_means', "
        "'median', 'top<i>' or 'top<i>_ratio'"
    )


@dataclass
class Trajectories:
    """Per (suite, model, layer) series, padded to a common length, ready for fit_trajectories.

    keys: N rows: suite, model, layer, n_points, + architecture columns (L, d, H, d_ff, ...;
        NaN where the dataset has no architecture row). Sorted by model, then layer.
    t: [N, n] float64 steps; y: [N, n] float64 values; mask: [N, n] bool, True = real point.
    Padding repeats the last real (t, y) so padded entries are finite; use `mask` to ignore them.
    """

    keys: pd.DataFrame
    t: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    stat: str = "ratio"

    def __len__(self) -> int:
        return len(self.keys)

    def series(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(t, y) of curve i without padding."""
        m = self.mask[i]
        return self.t[i, m], self.y[i, m]


def load_trajectories(
    dataset_or_root: Dataset | str | os.PathLike, *, stat: str = "ratio", min_step: int = 0
) -> Trajectories:
    """Trajectories of every (model, layer): y[t] = mean over samples of `stat` at step t.

    stat="ratio" is Eq. 8 as computed here: the mean over the probe sequences of each
    sequence's top1/median. "ratio_of_means" is mean(top1)/mean(median) instead. Steps below
    `min_step` are dropped. Non-finite points are masked out.
    """
    ds = _as_dataset(dataset_or_root)
    stats = ds.stats
    if len(stats) == 0:
        raise ValueError("the dataset has no statistics rows: nothing to build trajectories from")
    stats = stats[stats["step"] >= min_step]
    if len(stats) == 0:
        raise ValueError(f"no statistics at step >= min_step={min_step}")
    values, how = _stat_values(stats, stat)
    frame = stats[["suite", "model", "layer", "step"]].assign(_v=values.to_numpy(np.float64))
    group = ["suite", "model", "layer", "step"]
    if how == "ratio_of_means":
        frame = frame.assign(_m=stats["median"].to_numpy(np.float64))
        agg = frame.groupby(group, sort=False)[["_v", "_m"]].mean()
        agg = (agg["_v"] / agg["_m"]).rename("_v").reset_index()
    else:
        agg = frame.groupby(group, sort=False)["_v"].mean().reset_index()
    agg = agg.sort_values(["model", "suite", "layer", "step"], kind="stable")
    curves = list(agg.groupby(["model", "suite", "layer"], sort=False))
    n = max(len(g) for _, g in curves)
    N = len(curves)
    t = np.zeros((N, n))
    y = np.zeros((N, n))
    mask = np.zeros((N, n), dtype=bool)
    rows = []
    for i, ((model, suite, layer), g) in enumerate(curves):
        ti, yi = g["step"].to_numpy(np.float64), g["_v"].to_numpy(np.float64)
        ok = np.isfinite(yi)
        ti, yi = ti[ok], yi[ok]
        k = len(ti)
        if k:
            t[i, :k], y[i, :k], mask[i, :k] = ti, yi, True
            t[i, k:], y[i, k:] = ti[-1], yi[-1]
        rows.append({"suite": suite, "model": model, "layer": int(layer), "n_points": k})
    keys = pd.DataFrame(rows)
    arch = ds.architectures
    if len(arch):
        extra = [c for c in arch.columns if c not in ("suite",)]
        keys = keys.merge(arch[extra], on="model", how="left")
    else:
        for c in ARCH_COLUMNS[2:]:
            keys[c] = np.nan
    return Trajectories(keys.reset_index(drop=True), t, y, mask, stat)


def variability_table(dataset: Dataset | str | os.PathLike, *, stat: str = "ratio") -> pd.DataFrame:
    """Per-model variability of the statistic over the probe sequences (paper Table 2).

    For every (model, layer, step) with n >= 2 samples x_1..x_n of `stat` (default the
    per-sequence top1/median), with mean m and sample standard deviation s (ddof=1):
        cv_pct   = 100 * s / m
        sem_pct  = cv_pct / sqrt(n)                  (standard error of the mean, % of m)
        ci95_pct = t_{0.975, n-1} * sem_pct          (95% CI half-width of the mean, % of m)
    Each column is then the plain average over all (layer, step) groups of the model.
    Columns: suite, model, n_samples (median n), n_groups, cv_pct, sem_pct, ci95_pct.
    """
    from scipy import stats as sps

    ds = _as_dataset(dataset)
    stats = ds.stats
    if len(stats) == 0:
        raise ValueError("the dataset has no statistics rows")
    values, how = _stat_values(stats, stat)
    if how != "mean":
        raise ValueError(f"variability is per sample; stat {stat!r} is not a per-sample value")
    frame = stats[["suite", "model", "layer", "step"]].assign(_v=values.to_numpy(np.float64))
    g = frame.groupby(["suite", "model", "layer", "step"], sort=False)["_v"]
    per = pd.DataFrame({"n": g.count(), "m": g.mean(), "s": g.std(ddof=1)}).reset_index()
    per = per[(per["n"] >= 2) & np.isfinite(per["m"]) & (per["m"] != 0)]
    if len(per) == 0:
        raise ValueError("variability needs at least 2 samples per (layer, step)")
    per["cv_pct"] = 100.0 * per["s"] / per["m"]
    per["sem_pct"] = per["cv_pct"] / np.sqrt(per["n"])
    per["ci95_pct"] = sps.t.ppf(0.975, per["n"] - 1) * per["sem_pct"]
    out = per.groupby(["suite", "model"], sort=True).agg(
        n_samples=("n", "median"),
        n_groups=("n", "size"),
        cv_pct=("cv_pct", "mean"),
        sem_pct=("sem_pct", "mean"),
        ci95_pct=("ci95_pct", "mean"),
    )
    out = out.reset_index().sort_values("model", kind="stable").reset_index(drop=True)
    out["n_samples"] = out["n_samples"].astype(np.int64)
    return out
