"""The one check of a task file that every reader (load_dataset) and every resume (task_done)
goes through, and the readers of the architecture table and the notes.

A task counts as done when its manifest entry exists and its file passes `read_task` (size and
sha256 as recorded, then contents: columns and dtypes, model, step, rows, layers against the
architecture table); anything else is redone on resume and skipped with a note at load.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._format import (
    KEY_COLUMNS,
    MAX_STEP,
    NAME_PATTERN,
    entry_problem,
    read_architectures,
    read_manifest,
    task_key,
    top_columns,
)


def task_done(root: str | os.PathLike, model: str, step: int) -> bool:
    """True when (model, step) is in the manifest and its file passes `read_task`.

    A task whose file is missing, truncated, replaced or inconsistent with its manifest entry
    (see `check_task` for why) is not done, so every source's resume extracts it again.
    """
    return check_task(root, model, step) is None


def layer_counts(arch: pd.DataFrame | None) -> dict[str, int]:
    """model -> L from an architecture table (models without a usable L are left out)."""
    if arch is None or "L" not in arch.columns:
        return {}
    L = pd.to_numeric(arch["L"], errors="coerce").to_numpy(np.float64)
    return {
        str(m): int(n)
        for m, n in zip(arch["model"], L, strict=True)
        if math.isfinite(n) and n >= 1 and n == int(n)
    }


class TaskError(ValueError):
    """A task file that does not match its manifest entry; the message says which and why."""


def _read_task_bytes(path: Path, rel: str, size: int | None, sha256: str | None) -> bytes:
    """The bytes of a task file, checked against the recorded size and sha256 when given.

    Opened without blocking and refused unless it is a regular file (a FIFO is never read).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise TaskError(f"task file {rel} is missing") from None
    except OSError as e:
        raise TaskError(f"task file {rel} cannot be opened ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TaskError(f"task file {rel} is not a regular file")
        if size is not None and st.st_size != size:
            raise TaskError(
                f"{rel} is {st.st_size} bytes, not the {size} bytes (and sha256) its manifest "
                "records: truncated or replaced"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise TaskError(f"{rel} does not match its manifest sha256")
    return data


def _layer_text(layers: np.ndarray) -> str:
    u = np.unique(layers)
    if len(u) <= 6:
        return "[" + ", ".join(str(int(x)) for x in u) + "]"
    return f"{len(u)} layers from {int(u[0])} to {int(u[-1])}"


def _check_task_frame(
    df: pd.DataFrame, entry: dict[str, Any], rel: str, n_layers: int | None
) -> pd.DataFrame:
    """The task's rows with step/layer/sample as int64 and top*/median/ratio as float64;
    TaskError if columns, dtypes or values disagree with the manifest entry."""
    from pandas.api import types

    tops = top_columns(df.columns)
    missing = [c for c in [*KEY_COLUMNS, "top1", "median", "ratio"] if c not in df.columns]
    if missing:
        raise TaskError(f"{rel} lacks the columns {missing}")
    if len(df) != entry["rows"]:
        raise TaskError(f"{rel} has {len(df)} rows, its manifest entry {entry['rows']}")
    df = df.copy()
    for c in ["step", "layer", "sample"]:
        col = df[c]
        if not types.is_integer_dtype(col.dtype) or types.is_bool_dtype(col.dtype):
            raise TaskError(f"{rel}: column {c!r} is {col.dtype}, not an integer column")
        if col.isna().any():
            raise TaskError(f"{rel}: column {c!r} has missing values")
        df[c] = col.to_numpy(np.int64)
    for c in [*tops, "median", "ratio"]:
        col = df[c]
        dt = col.dtype
        if not types.is_numeric_dtype(dt) or types.is_bool_dtype(dt) or types.is_complex_dtype(dt):
            raise TaskError(f"{rel}: column {c!r} is {dt}, not a numeric column")
        df[c] = col.to_numpy(np.float64, na_value=np.nan)
    for c in ["suite", "model", "step"]:
        bad = df[c] != entry[c]
        if bad.any():
            got = df.loc[bad, c].drop_duplicates().head(3).tolist()
            raise TaskError(f"{rel} holds {c} {got}, its manifest entry {c} {entry[c]!r}")
    layer, sample = df["layer"].to_numpy(), df["sample"].to_numpy()
    if (layer < 0).any() or (sample < 0).any():
        raise TaskError(f"{rel} has negative layer or sample indices")
    if n_layers is not None and not np.array_equal(np.unique(layer), np.arange(n_layers)):
        raise TaskError(
            f"{rel} has layers {_layer_text(layer)}, the architecture table gives "
            f"{entry['model']} {n_layers} layers (0..{n_layers - 1})"
        )
    if df.duplicated(["layer", "sample"]).any():
        raise TaskError(f"{rel} has duplicate (layer, sample) rows")
    top1, median, ratio = (df[c].to_numpy() for c in ["top1", "median", "ratio"])
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = ~np.isclose(ratio, top1 / median, rtol=1e-4, equal_nan=True)
    if bad.any():
        raise TaskError(f"{rel}: ratio != top1/median in {int(bad.sum())} rows")
    return df


def read_task(
    root: str | os.PathLike,
    key: str,
    entry: dict[str, Any],
    *,
    n_layers: int | None = None,
    verify: bool = True,
) -> pd.DataFrame:
    """The rows of one task file, checked against its manifest entry: the one check every
    reader (load_dataset) and every resume (task_done) goes through.

    Checked: the entry's fields and that it names this key and the canonical file path
    stats/<model>/step<N>.parquet (nothing outside the dataset is opened); the file is a regular
    file of the recorded size and sha256 (only when `verify`); it parses as Parquet; it has the
    columns suite, model, step, layer, sample, top1, median, ratio with integer step/layer/sample
    and numeric top*/median/ratio; rows, suite, model and step equal the entry's; layers are
    exactly 0..n_layers-1 when `n_layers` (the architecture table's L) is given; no duplicate
    (layer, sample); ratio = top1/median. Raises TaskError saying what is wrong.
    Returns the rows with step/layer/sample as int64 and top*/median/ratio as float64.
    """
    root = Path(root)
    problem = entry_problem(entry)
    if problem is not None:
        raise TaskError(f"manifest entry {problem}")
    model, step = entry["model"], entry["step"]
    if not NAME_PATTERN.match(model) or not 0 <= step <= MAX_STEP:
        raise TaskError(f"manifest entry names model {model!r} step {step}: not a valid task")
    if key != task_key(model, step):
        raise TaskError(f"manifest entry describes {task_key(model, step)}, not {key}")
    rel = f"stats/{model}/step{step}.parquet"  # task_path relative to root
    if entry["file"] != rel:
        raise TaskError(f"manifest entry points to {entry['file']!r}, not {rel}")
    size = entry.get("bytes") if verify else None
    data = _read_task_bytes(root / rel, rel, size, entry["sha256"] if verify else None)
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # pyarrow's errors for a damaged file span several types
        raise TaskError(f"{rel} is not a readable Parquet file ({type(e).__name__})") from None
    return _check_task_frame(df, entry, rel, n_layers)


def check_task(root: str | os.PathLike, model: str, step: int) -> str | None:
    """None when (model, step) is done (in the manifest, file passes `read_task` with the
    architecture table's L for the model), else why not: one line."""
    root = Path(root)
    key = task_key(model, step)
    entry = read_manifest(root)["tasks"].get(key)
    if entry is None:
        return f"{key} is not in the manifest"
    n_layers = layer_counts(read_architectures(root)).get(model)
    try:
        read_task(root, key, entry, n_layers=n_layers)
    except TaskError as e:
        return str(e)
    return None
