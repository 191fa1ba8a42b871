"""Stats rows of one forward pass in the task-file schema, built from one `LayerStats` per
decoder layer (what every source hands to write_task; schema: massact.dataset._load).

LayerStats arrive duck-typed (top, median, and top_token / top_channel where present), and
tensors are converted without importing torch. Imports: numpy, pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def frame_from_layer_stats(
    per_layer: Sequence[Any], *, suite: str, model: str, step: int, sample_offset: int = 0
) -> pd.DataFrame:
    """Stats rows of one forward pass from one `LayerStats` per decoder layer.

    per_layer[l].top: [batch, k], per_layer[l].median: [batch] (any array-like or tensor).
    Returns one row per (layer, sample) in the task-file schema (without provenance), with
    top1_token and top1_channel when the entries are LayerStats (they hold positions).
    """
    tops, medians, where = [], [], []
    for layer, st in enumerate(per_layer):
        if hasattr(st, "top_token") and hasattr(st, "top_channel"):  # a LayerStats
            pos = [_as_numpy(st.top_token), _as_numpy(st.top_channel)]
            where.append([p.reshape(-1, p.shape[-1])[:, 0].astype(np.int64) for p in pos])
        top = _as_numpy(st.top)
        median = _as_numpy(st.median)
        if top.ndim == 1:  # a single sequence without batch dim
            top, median = top[None], median.reshape(1)
        if top.ndim != 2 or median.shape != top.shape[:1]:
            raise ValueError(
                f"layer {layer}: expected top [batch, k] and median [batch], got "
                f"{tuple(top.shape)} and {tuple(median.shape)}"
            )
        if tops and top.shape != tops[0].shape:
            raise ValueError(f"layer {layer}: top has shape {top.shape}, layer 0 {tops[0].shape}")
        tops.append(top.astype(np.float64))
        medians.append(median.astype(np.float64))
    if not tops:
        raise ValueError("per_layer is empty: the model has no decoder layers to report")
    L, (n, k) = len(tops), tops[0].shape
    top = np.concatenate(tops)  # [L * n, k], layer-major
    cols: dict[str, Any] = {
        "suite": suite,
        "model": model,
        "step": np.full(L * n, step, np.int64),
        "layer": np.repeat(np.arange(L, dtype=np.int64), n),
        "sample": np.tile(np.arange(sample_offset, sample_offset + n, dtype=np.int64), L),
    }
    for i in range(k):
        cols[f"top{i + 1}"] = top[:, i]
    cols["median"] = np.concatenate(medians)
    cols["ratio"] = cols["top1"] / cols["median"]
    if len(where) == L:  # where the top1 sits: its token and channel (original positions)
        cols["top1_token"] = np.concatenate([w[0] for w in where])
        cols["top1_channel"] = np.concatenate([w[1] for w in where])
    return pd.DataFrame(cols)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)
