"""Figures of the report, in the paper's form (matplotlib, no display).

Each function takes the data it draws (a Dataset, Trajectories and/or FitResult) and an output
path, writes one PNG and returns the path. Figures are built on `matplotlib.figure.Figure`
directly, never through pyplot, so no backend or global state is touched (works headless and
in threads). Paper numbering: Fig. 2 final ratio vs size, Fig. 3 top activations per layer,
Fig. 4 ratio trajectories, Fig. 5 peak heatmaps, Fig. 6 fits, Fig. 7 R^2, Fig. 8 t_peak surface.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..dataset import atomic_write_bytes, top_columns

if TYPE_CHECKING:
    from ..curves import FitResult
    from ..dataset import Dataset, Trajectories

_DPI = 110


def save_figure(fig: Figure, path: str | Path) -> Path:
    """PNG of `fig` written atomically (a kill or a full disk leaves the last good copy)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def model_order(dataset: Dataset | None = None, keys: pd.DataFrame | None = None) -> list[str]:
    """Models sorted by parameter count (then name); falls back to name order."""
    frames = []
    if dataset is not None and len(dataset.architectures):
        frames.append(dataset.architectures)
    if keys is not None:
        frames.append(keys)
    for frame in frames:
        if "n_params" in frame.columns:
            order = frame.drop_duplicates("model").sort_values(["n_params", "model"])
            return [str(m) for m in order["model"]]
    for frame in frames:
        if "model" in frame.columns:
            return sorted(str(m) for m in frame["model"].unique())
    if dataset is not None:
        return sorted(str(m) for m in dataset.stats["model"].unique())
    return []


def layer_means(stats: pd.DataFrame) -> pd.DataFrame:
    """Mean over samples per (model, step, layer) of top-k, median and top-k/median ratios.

    Ratios are averaged per sequence (Eq. 8), not formed from averaged tops.
    """
    tops = top_columns(stats.columns)
    frame = stats[["model", "step", "layer", *tops, "median"]].copy()
    for c in tops:
        frame[f"ratio{c[3:]}"] = frame[c] / frame["median"]
    return frame.groupby(["model", "step", "layer"], as_index=False).mean(numeric_only=True)


def fig_final_ratio(dataset: Dataset, path: str | Path) -> Path:
    """Fig. 2: parameter count vs the largest layer top1/median ratio at each model's last step."""
    means = layer_means(dataset.stats)
    last = means[means["step"] == means.groupby("model")["step"].transform("max")]
    final = last.groupby("model")["ratio1"].max()
    arch = dataset.architectures
    n_params = (
        arch.drop_duplicates("model").set_index("model")["n_params"]
        if "n_params" in arch.columns
        else pd.Series(dtype=float)
    )
    models = [m for m in model_order(dataset) if m in final.index]
    x = np.array([float(n_params.get(m, np.nan)) for m in models])
    y = final.loc[models].to_numpy(float)
    fig = Figure(layout="constrained", figsize=(5.5, 4))
    ax = fig.add_subplot()
    if np.isfinite(x).all() and (x > 0).all():
        ax.plot(x, y, "o-")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
    else:  # no parameter counts: order by size rank
        x = np.arange(len(models), dtype=float)
        ax.plot(x, y, "o-")
        ax.set_xlabel("model (by size)")
    for xi, yi, m in zip(x, y, models):
        ax.annotate(m, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if (y > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel("final max top1/median ratio")
    ax.set_title("Final massive-activation ratio vs model size")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def pick_models(order: list[str], n: int = 3) -> list[str]:
    """Up to n models spread over the size order (smallest, middle, largest)."""
    if len(order) <= n:
        return list(order)
    idx = sorted({round(i * (len(order) - 1) / (n - 1)) for i in range(n)})
    return [order[i] for i in idx]


def fig_top_activations(
    dataset: Dataset, path: str | Path, models: list[str] | None = None
) -> Path:
    """Fig. 3: top-k |h| and median per layer at the first (dashed) and last (solid) step, a
    panel per model (every model of the dataset unless `models` names some), in size order."""
    means = layer_means(dataset.stats)
    present = set(means["model"].astype(str))
    models = models or [m for m in model_order(dataset) if m in present]
    tops = top_columns(dataset.stats.columns)[:3]
    ncol = max(1, min(len(models), 3))
    nrow = math.ceil(len(models) / ncol)
    fig = Figure(layout="constrained", figsize=(3.7 * ncol, 3.2 * nrow + 0.5))
    grid = fig.subplots(nrow, ncol, squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    for ax, model in zip(axes, models):
        sub = means[means["model"] == model]
        first, last = sub["step"].min(), sub["step"].max()
        for step, style in ((first, "--"), (last, "-")):
            rows = sub[sub["step"] == step].sort_values("layer")
            for j, c in enumerate([*tops, "median"]):
                ax.plot(
                    rows["layer"],
                    rows[c],
                    style,
                    color=f"C{j}",
                    marker="o",
                    ms=3,
                    label=f"{c} step {int(step)}",
                )
        ratio = sub[sub["step"] == last]["ratio1"].max()
        ax.set_title(f"{model}: final top1/median {ratio:.3g}", fontsize=11)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
    for row in grid:
        row[0].set_ylabel("|activation|, mean over sequences")
    # one key for every panel: colour = statistic, dashed = first step, solid = last step
    from matplotlib.lines import Line2D

    names = [*tops, "median"]
    handles = [Line2D([], [], color=f"C{j}", marker="o", ms=3) for j in range(len(names))]
    handles += [Line2D([], [], color="k", ls="--"), Line2D([], [], color="k", ls="-")]
    fig.legend(handles, [*names, "first step", "last step"], fontsize=9, loc="outside lower center",
               ncol=len(handles))  # fmt: skip
    return save_figure(fig, path)


def fig_ratio_trajectories(dataset: Dataset, path: str | Path, model: str) -> Path:
    """Fig. 4: top-1..3 / median ratio vs training step, one panel per layer of `model`."""
    means = layer_means(dataset.stats)
    sub = means[means["model"] == model]
    if sub.empty:
        raise ValueError(f"model {model!r} is not in the dataset")
    layers = sorted(sub["layer"].unique())
    ncol = min(len(layers), 4)
    nrow = math.ceil(len(layers) / ncol)
    fig = Figure(layout="constrained", figsize=(3.2 * ncol, 2.4 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    ratio_cols = [c for c in sub.columns if c.startswith("ratio") and c[5:].isdigit()][:3]
    for ax, layer in zip(axes, layers):
        rows = sub[sub["layer"] == layer].sort_values("step")
        for j, c in enumerate(ratio_cols):
            ax.plot(rows["step"], rows[c], color=f"C{j}", lw=1.2, label=f"top{c[5:]}/median")
        ax.set_title(f"layer {int(layer)}", fontsize=11)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model}: ratio of top activations to median during training")
    fig.supxlabel("training step")
    return save_figure(fig, path)


def _layer_table(keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per curve: layer index and number of layers L (from the keys, else the max layer + 1)."""
    layer = keys["layer"].to_numpy(int)
    depth = keys.groupby("model")["layer"].transform("max").to_numpy(int) + 1
    if "L" in keys.columns:  # NaN where the dataset has no architecture row for the model
        known = pd.to_numeric(keys["L"], errors="coerce").to_numpy(float)
        depth = np.where(np.isfinite(known), known, depth).astype(int)
    return layer, depth


def peak_table(traj: Trajectories) -> pd.DataFrame:
    """Per curve: model, layer, L, observed peak ratio and the step where it occurs."""
    y = np.where(traj.mask, traj.y, -np.inf)
    idx = np.argmax(y, axis=1)
    rows = np.arange(len(y))
    layer, depth = _layer_table(traj.keys)
    peak = y[rows, idx]
    return pd.DataFrame(
        {
            "model": traj.keys["model"].astype(str).to_numpy(),
            "layer": layer,
            "L": depth,
            "peak_ratio": np.where(np.isfinite(peak), peak, np.nan),
            "peak_step": traj.t[rows, idx],
        }
    )


def fig_peak_heatmaps(traj: Trajectories, path: str | Path, n_bins: int = 10) -> Path:
    """Fig. 5: (a) peak ratio and (b) peak step by relative depth (rows) and model (columns).

    Each depth bin shows the layer that covers its centre, so shallow models repeat layers
    instead of leaving holes.
    """
    table = peak_table(traj)
    models = model_order(keys=traj.keys)
    n_bins = max(1, min(n_bins, int(table["L"].max())))
    centres = (np.arange(n_bins) + 0.5) / n_bins
    mag = np.full((n_bins, len(models)), np.nan)
    step = np.full_like(mag, np.nan)
    for j, model in enumerate(models):
        sub = table[table["model"] == model].set_index("layer")
        depth = int(sub["L"].iloc[0])
        for i, c in enumerate(centres):
            layer = min(int(c * depth), depth - 1)
            if layer in sub.index:
                mag[i, j] = sub.at[layer, "peak_ratio"]
                step[i, j] = sub.at[layer, "peak_step"]
    # about the page's width (1100 px at 110 dpi): labels print near their nominal size
    fig = Figure(layout="constrained", figsize=(min(max(8.0, 1.1 * len(models) + 3), 12.0), 4.6))
    axes = fig.subplots(1, 2)
    for ax, data, title, cmap in (
        (axes[0], mag, "a) peak top1/median ratio", "magma"),
        (axes[1], step, "b) step of the peak", "viridis"),
    ):
        finite = data[np.isfinite(data)]
        norm = LogNorm() if finite.size and (finite > 0).all() and ax is axes[0] else None
        im = ax.imshow(
            np.ma.masked_invalid(data), aspect="auto", origin="upper", cmap=cmap, norm=norm
        )
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=10)
        ax.set_yticks(range(n_bins), [f"{c:.2f}" for c in centres], fontsize=10)
        ax.set_title(title, fontsize=12)
    axes[0].set_ylabel("relative depth (layer / L)", fontsize=11)
    return save_figure(fig, path)


def fitted(fit: FitResult) -> np.ndarray:
    """[N] bool: the Eq. 14 fit converged (or hit max-iterations) with a finite R^2.

    Wider than `fit.ok()`, which also needs finite Eq. 9 parameters: a log-increase curve
    fitted with beta -> 0 has a good fit (and curve) but gamma = exp(A2/A1) overflows.
    """
    from ..curves import FitStatus

    usable = (FitStatus.CONVERGED, FitStatus.MAX_ITERATIONS)
    return np.isfinite(fit.r2) & np.isin(fit.status, [int(s) for s in usable])


def _row_of(keys: pd.DataFrame, model: str, layer: int) -> int | None:
    hit = np.flatnonzero((keys["model"].astype(str) == model).to_numpy() & (keys["layer"] == layer))
    return int(hit[0]) if hit.size else None


def fig_fit_examples(
    traj: Trajectories, fit: FitResult, path: str | Path, models: list[str] | None = None
) -> Path:
    """Fig. 6: data (Eq. 8) and fitted Eq. 9 with a 95% band for a shallow, middle, deep layer."""
    order = model_order(keys=traj.keys)
    if models is None:  # the two largest models, as the paper shows 1B and 6.9B
        models = order[-2:]
    fig = Figure(layout="constrained", figsize=(11, 3.0 * len(models)))
    axes = fig.subplots(len(models), 3, squeeze=False)
    for r, model in enumerate(models):
        sub = traj.keys[traj.keys["model"].astype(str) == model]
        depth = int(sub["layer"].max()) + 1
        for c, (name, layer) in enumerate(
            (("shallow", 0), ("middle", depth // 2), ("deep", depth - 1))
        ):
            ax = axes[r, c]
            i = _row_of(traj.keys, model, layer)
            if i is None:
                ax.set_visible(False)
                continue
            m = traj.mask[i]
            t, y = traj.t[i][m], traj.y[i][m]
            ax.plot(t, y, "o", ms=3, color="k", label="data (Eq. 8)")
            if fitted(fit)[i] and t.size:
                dense = np.linspace(t.min(), t.max(), 200)
                yf, lo, hi = fit.evaluate(dense)
                ax.plot(dense, yf[i], color="C3", label=f"Eq. 9 fit, R²={fit.r2[i]:.3f}")
                if np.isfinite(lo[i]).all() and np.isfinite(hi[i]).all():
                    ax.fill_between(dense, lo[i], hi[i], color="C3", alpha=0.2, lw=0)
            else:
                ax.text(0.5, 0.5, "fit failed", transform=ax.transAxes, ha="center")
            ax.set_title(f"{model}, {name} layer {layer}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.supxlabel("training step")
    fig.supylabel("top1/median")
    return save_figure(fig, path)


def fig_r2(traj: Trajectories, fit: FitResult, path: str | Path) -> Path:
    """Fig. 7: (a) R^2 distribution per model, (b) R^2 by relative depth per model."""
    models = model_order(keys=traj.keys)
    ok = fitted(fit)
    layer, depth = _layer_table(traj.keys)
    names = traj.keys["model"].astype(str).to_numpy()
    fig = Figure(layout="constrained", figsize=(11, 4))
    ax_a, ax_b = fig.subplots(1, 2)
    data = [fit.r2[(names == m) & ok] for m in models]
    shown = [d if d.size else np.array([np.nan]) for d in data]
    ax_a.boxplot(shown, tick_labels=models)
    ax_a.tick_params(axis="x", rotation=45, labelsize=10)
    ax_a.set_ylabel("R²")
    ax_a.set_title("a) R² of the Eq. 9 fit per model")
    for j, m in enumerate(models):
        sel = (names == m) & ok
        order = np.argsort(layer[sel])
        rel = (layer[sel] + 0.5) / depth[sel]
        ax_b.plot(rel[order], fit.r2[sel][order], "o-", ms=3, color=f"C{j % 10}", label=m)
    ax_b.set_xlabel("relative depth (layer / L)")
    ax_b.set_title("b) R² by layer")
    ax_b.legend(fontsize=7, ncol=2)
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def t_peak_grid(lam: np.ndarray, gamma: np.ndarray, t0: float) -> np.ndarray:
    """Eq. 13 (massact.curves.t_peak) on a grid: t_peak[i, j] for lam[j], gamma[i]; NaN where
    t_peak <= 0 (or lam <= 0: no peak)."""
    from ..curves import t_peak

    lam, gamma = np.asarray(lam, float), np.asarray(gamma, float)
    params = np.zeros((gamma.size, lam.size, 5))
    params[..., 1], params[..., 2], params[..., 3] = lam[None, :], gamma[:, None], t0
    tp = t_peak(params)
    return np.where(tp > 0, tp, np.nan)


def _span(values: np.ndarray, default: tuple[float, float]) -> tuple[float, float]:
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return default
    lo, hi = float(v.min()) / 3, float(v.max()) * 3
    return (lo, hi) if hi > lo else default


def fig_t_peak(
    fit: FitResult, path: str | Path, t0: float | None = None, last_step: float | None = None
) -> Path:
    """Fig. 8: t_peak over (lam, gamma) at fixed t0 (median fitted t0); masked where <= 0.

    The fitted layers are overlaid as points; a contour marks t_peak = last_step (peaks above
    it are not observable within training).
    """
    ok = fit.ok() & ~fit.degenerate
    params = fit.params[ok] if ok.any() else np.empty((0, 5))
    lam_f, gam_f, t0_f = params[:, 1], params[:, 2], params[:, 3]
    if t0 is None:
        finite = t0_f[np.isfinite(t0_f)]
        t0 = float(np.median(finite)) if finite.size else 1.0
    lam = np.geomspace(*_span(lam_f, (1e-2, 10.0)), 160)
    gamma = np.geomspace(*_span(gam_f, (1e-5, 1e-1)), 160)
    tp = t_peak_grid(lam, gamma, t0)
    fig = Figure(layout="constrained", figsize=(6, 4.6))
    ax = fig.add_subplot()
    finite = tp[np.isfinite(tp)]
    norm = LogNorm(finite.min(), finite.max()) if finite.size and finite.max() > 0 else None
    mesh = ax.pcolormesh(lam, gamma, np.ma.masked_invalid(tp), norm=norm, shading="auto")
    fig.colorbar(mesh, ax=ax, label="t_peak (steps)")
    if last_step is not None and finite.size and finite.min() < last_step < finite.max():
        cs = ax.contour(lam, gamma, np.nan_to_num(tp, nan=0.0), levels=[last_step], colors="w")
        ax.clabel(cs, fmt={last_step: f"last step {last_step:.0f}"}, fontsize=7)
    ax.scatter(lam_f, gam_f, s=10, c="w", edgecolors="k", lw=0.5, label="fitted layers")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("γ")
    ax.set_title(f"t_peak (Eq. 13), t0 = {t0:.3g}; blank: no peak (t_peak <= 0)")
    if lam_f.size:
        ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)
