"""Writing side of the dataset format (layout and schema: massact.dataset._load).

Writes are atomic (temporary file in the same folder, then `os.replace`), and the manifest is
read-modified-written under a file lock, so a sweep killed at any point leaves only complete
task files; a task counts as done once its manifest entry exists. Task writing is a pure
function of its inputs, so a distributed engine can run (model, step) tasks anywhere and merge.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MANIFEST_VERSION = 1
KEY_COLUMNS = ["suite", "model", "step", "layer", "sample"]
PROVENANCE_COLUMNS = [
    "source",
    "revision",
    "commit",
    "weights_sha256",
    "input_sha256",
    "duplicate_of",
]
ARCH_COLUMNS = [
    "suite",
    "model",
    "L",
    "d",
    "H",
    "d_ff",
    "rotary_pct",
    "rotary_base",
    "n_params",
    "max_step",
]
_ARCH_INT = ["L", "d", "H", "d_ff", "n_params", "max_step"]
_ARCH_FLOAT = ["rotary_pct", "rotary_base"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
TOP_COLUMN = re.compile(r"^top(\d+)$")


# ----------------------------------------------------------------------------- small helpers
def _check_name(model: object) -> str:
    if not isinstance(model, str) or not _NAME.match(model):
        raise ValueError(
            f"model name {model!r} is not usable as a folder name: use letters, digits and "
            "'.', '_', '+', '-' (for example 'pythia-70m')"
        )
    return model


def task_key(model: str, step: int) -> str:
    """Manifest key of a (model, step) task: '<model>/step<N>'."""
    return f"{_check_name(model)}/step{int(step)}"


def task_path(root: str | os.PathLike, model: str, step: int) -> Path:
    """Where the task file of (model, step) lives under `root`."""
    return Path(root) / "stats" / _check_name(model) / f"step{int(step)}.parquet"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive lock on the dataset's metadata (manifest, architectures, notes)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # non-POSIX: single-writer assumption
        yield
        return
    with open(root / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_manifest(root: Path) -> dict[str, Any]:
    """The dataset manifest at root (an empty one if none); ValueError if it is not ours."""
    path = root / "manifest.json"
    if not path.exists():
        return {"version": MANIFEST_VERSION, "tasks": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rebuild the dataset") from e
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("tasks"), dict):
        raise ValueError(f"{path} is not a massact manifest of version {MANIFEST_VERSION}")
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    _atomic_write_bytes(root / "manifest.json", text.encode())


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _table_bytes(cols: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def top_columns(columns: Sequence[str]) -> list[str]:
    """The top1, top2, ... columns among `columns`, in rank order."""
    tops = sorted((int(m.group(1)), c) for c in columns if (m := TOP_COLUMN.match(str(c))))
    return [c for _, c in tops]


# ----------------------------------------------------------------------------- writing
def frame_from_layer_stats(
    per_layer: Sequence[Any], *, suite: str, model: str, step: int, sample_offset: int = 0
) -> pd.DataFrame:
    """Stats rows of one forward pass from one `LayerStats` per decoder layer.

    per_layer[l].top: [batch, k], per_layer[l].median: [batch] (any array-like or tensor).
    Returns one row per (layer, sample) in the task-file schema (without provenance).
    """
    tops, medians = [], []
    for layer, st in enumerate(per_layer):
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
    return pd.DataFrame(cols)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _normalise_stats(stats: pd.DataFrame) -> tuple[dict[str, Any], str, str, int]:
    """Validated task columns (numpy arrays, rows sorted by layer, sample) and the task key."""
    if not isinstance(stats, pd.DataFrame):
        raise TypeError(f"stats must be a pandas DataFrame, got {type(stats).__name__}")
    missing = [c for c in [*KEY_COLUMNS, "top1", "median"] if c not in stats.columns]
    if missing:
        raise ValueError(
            f"stats is missing columns {missing}; required: {KEY_COLUMNS} + top1..topk, median "
            "(massact.dataset._load.frame_from_layer_stats builds them from LayerStats)"
        )
    if len(stats) == 0:
        raise ValueError("stats has no rows: a task must hold at least one (layer, sample)")
    for c in ["suite", "model", "step"]:
        vals = pd.unique(stats[c])
        if len(vals) != 1:
            raise ValueError(f"a task file holds one {c}; stats has {c} values {list(vals)}")
    suite, model = str(stats["suite"].iat[0]), _check_name(stats["model"].iat[0])
    step = int(stats["step"].iat[0])
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    layer = stats["layer"].to_numpy(np.int64)
    sample = stats["sample"].to_numpy(np.int64)
    if (layer < 0).any() or (sample < 0).any():
        raise ValueError("layer and sample indices must be >= 0 (0-based)")
    order = np.lexsort((sample, layer))
    layer, sample = layer[order], sample[order]
    if ((np.diff(layer) == 0) & (np.diff(sample) == 0)).any():
        raise ValueError("stats has duplicate (layer, sample) rows")
    n = len(order)
    cols: dict[str, Any] = {
        "suite": np.full(n, suite, dtype=object),
        "model": np.full(n, model, dtype=object),
        "step": np.full(n, step, np.int64),
        "layer": layer,
        "sample": sample,
    }
    for c in [*top_columns(stats.columns), "median"]:
        cols[c] = stats[c].to_numpy(np.float64)[order]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = cols["top1"] / cols["median"]
    if "ratio" in stats.columns:
        given = stats["ratio"].to_numpy(np.float64)[order]
        bad = ~np.isclose(given, ratio, rtol=1e-4, equal_nan=True)
        if bad.any():
            raise ValueError(f"ratio != top1/median in {int(bad.sum())} rows (rtol 1e-4)")
    cols["ratio"] = ratio  # stored in float64 from the stored top1 and median
    extra = [c for c in stats.columns if c not in cols]
    for c in extra:
        cols[c] = stats[c].to_numpy()[order]
    return cols, suite, model, step


def _normalise_provenance(provenance: dict) -> dict[str, Any]:
    if not isinstance(provenance, dict):
        raise TypeError(f"provenance must be a dict, got {type(provenance).__name__}")
    if not provenance.get("source"):
        raise ValueError("provenance needs a non-empty 'source' ('mini', 'pythia' or 'archive')")
    out: dict[str, Any] = {c: str(provenance.get(c, "") or "") for c in PROVENANCE_COLUMNS}
    for key, value in provenance.items():
        if key in out:
            continue
        if key in KEY_COLUMNS or TOP_COLUMN.match(key) or key in ("median", "ratio"):
            raise ValueError(f"provenance key {key!r} clashes with a stats column")
        if (
            not isinstance(value, str | int | float | bool)
            or isinstance(value, float)
            and (not math.isfinite(value))
        ):
            raise TypeError(f"provenance[{key!r}] must be a str, int, bool or finite float")
        out[key] = value
    return out


def write_task(root: str | os.PathLike, stats: pd.DataFrame, provenance: dict) -> Path:
    """Write the stats of one (model, step) task atomically and record it in the manifest.

    stats: rows of one model and one step (schema in the module docstring); ratio is
    (re)computed as top1/median in float64. provenance: dict with at least 'source'; the
    standard keys (revision, commit, weights_sha256, input_sha256, duplicate_of) default to "",
    extra scalar keys are kept. Rewriting a task replaces it. Returns the task file's path.
    """
    root = Path(root)
    cols, suite, model, step = _normalise_stats(stats)
    prov = _normalise_provenance(provenance)
    n = len(cols["step"])
    for key, value in prov.items():
        cols[key] = np.full(n, value, dtype=object if isinstance(value, str) else None)
    data = _table_bytes(cols)
    path = task_path(root, model, step)
    _atomic_write_bytes(path, data)
    entry = {
        "file": path.relative_to(root).as_posix(),
        "rows": n,
        "sha256": hashlib.sha256(data).hexdigest(),
        "suite": suite,
        "model": model,
        "step": step,
        "provenance": prov,
    }
    with _locked(root):
        manifest = read_manifest(root)
        manifest["tasks"][task_key(model, step)] = entry
        _write_manifest(root, manifest)
    return path


def task_done(root: str | os.PathLike, model: str, step: int) -> bool:
    """True when (model, step) is in the manifest and its file exists."""
    root = Path(root)
    entry = read_manifest(root)["tasks"].get(task_key(model, step))
    return entry is not None and (root / entry["file"]).is_file()


def _normalise_arch(arch: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(arch, pd.DataFrame):
        raise TypeError(f"arch must be a pandas DataFrame, got {type(arch).__name__}")
    missing = [c for c in ARCH_COLUMNS if c not in arch.columns]
    if missing:
        raise ValueError(f"architectures are missing columns {missing}; required: {ARCH_COLUMNS}")
    df = arch.copy().reset_index(drop=True)
    if df["model"].duplicated().any():
        raise ValueError("architectures has duplicate model rows")
    for m in df["model"]:
        _check_name(m)
    for c in _ARCH_INT:
        df[c] = df[c].astype(np.int64)
    for c in _ARCH_FLOAT:
        df[c] = df[c].astype(np.float64)
    if (df[["L", "d", "H", "d_ff"]] <= 0).any().any():
        raise ValueError("L, d, H and d_ff must be positive")
    return df


def write_architectures(root: str | os.PathLike, arch: pd.DataFrame) -> None:
    """Merge architecture rows into <root>/architectures.parquet (upsert by model)."""
    root = Path(root)
    new = _normalise_arch(arch)
    with _locked(root):
        path = root / "architectures.parquet"
        if path.exists():
            old = pd.read_parquet(path)
            old = old[~old["model"].isin(new["model"])]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        new = new.sort_values("model", kind="stable").reset_index(drop=True)
        _atomic_write_bytes(path, _parquet_bytes(new))


def add_note(root: str | os.PathLike, line: str) -> None:
    """Append one line to <root>/report_lines.txt (skipped inputs etc.); duplicates are dropped."""
    root = Path(root)
    line = " ".join(str(line).split())
    with _locked(root):
        path = root / "report_lines.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        if line not in lines:
            _atomic_write_bytes(path, ("\n".join([*lines, line]) + "\n").encode())


# ----------------------------------------------------------------------------- reading
