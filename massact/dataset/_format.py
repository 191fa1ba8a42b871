"""The dataset format's names and columns, its manifest, the writing of tasks, architectures
and notes, and the readers of the manifest, the architecture table and the notes (layout and
schema: massact.dataset._load; the check of a task file: massact.dataset._validate).

Writes are atomic and the manifest is read-modified-written under a file lock (both helpers in
massact.dataset._atomic), so a sweep killed at any point leaves only complete task files. A
task counts as done when its manifest entry exists and its file passes `read_task`; anything
else is redone on resume and skipped with a note at load. Task writing is a pure function of
its inputs, so a distributed engine can run (model, step) tasks anywhere and merge.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import _locked, atomic_write_bytes

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
# model names: safe as a folder name and in a task key
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MAX_STEP = 2**63 - 1  # steps are stored as int64
TOP_COLUMN = re.compile(r"^top(\d+)$")


# ----------------------------------------------------------------------------- small helpers
def _check_name(model: object) -> str:
    if not isinstance(model, str) or not NAME_PATTERN.match(model):
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


# manifest entry field -> required type (bool is refused where int is asked)
_ENTRY_FIELDS: dict[str, type] = {
    "file": str,
    "rows": int,
    "sha256": str,
    "suite": str,
    "model": str,
    "step": int,
    "provenance": dict,
}


_ENTRY_OPTIONAL: dict[str, type] = {"bytes": int}  # older manifests lack the file size
_KIND = {int: "an integer", str: "a string", dict: "an object"}


def entry_problem(entry: object) -> str | None:
    """Why a manifest entry does not have the fields and types write_task gives it, or None."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    for name, kind in {**_ENTRY_FIELDS, **_ENTRY_OPTIONAL}.items():
        if name not in entry:
            if name in _ENTRY_OPTIONAL:
                continue
            return f"has no {name!r} field"
        value = entry[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"field {name!r} is {value!r}, not {_KIND[kind]}"
    return None


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The dataset manifest at root (an empty one if none).

    ValueError naming the file if it is not a massact manifest: not UTF-8 JSON, not an object
    of this version, or a task entry that is not an object with write_task's fields and types.
    """
    path = Path(root) / "manifest.json"
    if not path.exists():
        return {"version": MANIFEST_VERSION, "tasks": {}}
    hint = "delete it to rebuild the dataset"
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file (not UTF-8: {e.reason}); {hint}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"{path} is a JSON {type(manifest).__name__}, not a massact manifest (an object with "
            f"'version' and 'tasks'); {hint}"
        )
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("tasks"), dict):
        raise ValueError(f"{path} is not a massact manifest of version {MANIFEST_VERSION}; {hint}")
    for key, entry in manifest["tasks"].items():
        problem = entry_problem(entry)
        if problem is not None:
            raise ValueError(f"{path}: task entry {key!r} {problem}; {hint}")
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(root / "manifest.json", text.encode())


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
def _normalise_stats(stats: pd.DataFrame) -> tuple[dict[str, Any], str, str, int]:
    """Validated task columns (numpy arrays, rows sorted by layer, sample) and the task key."""
    if not isinstance(stats, pd.DataFrame):
        raise TypeError(f"stats must be a pandas DataFrame, got {type(stats).__name__}")
    missing = [c for c in [*KEY_COLUMNS, "top1", "median"] if c not in stats.columns]
    if missing:
        raise ValueError(
            f"stats is missing columns {missing}; required: {KEY_COLUMNS} + top1..topk, median "
            "(massact.dataset.frame_from_layer_stats builds them from LayerStats)"
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
    if step > MAX_STEP:
        raise ValueError(f"step {step} does not fit a 64-bit integer (at most {MAX_STEP})")
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
    atomic_write_bytes(path, data)
    entry = {
        "file": path.relative_to(root).as_posix(),
        "rows": n,
        "bytes": len(data),
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


def remove_task(root: str | os.PathLike, model: str, step: int) -> bool:
    """Drop (model, step) from the manifest, then delete its file. True if it was there."""
    root = Path(root)
    key = task_key(model, step)
    with _locked(root):
        manifest = read_manifest(root)
        found = manifest["tasks"].pop(key, None) is not None
        if found:
            _write_manifest(root, manifest)
    task_path(root, model, step).unlink(missing_ok=True)
    return found


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
        old = read_architectures(root)
        if old is not None:
            old = old[~old["model"].isin(new["model"])]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        new = new.sort_values("model", kind="stable").reset_index(drop=True)
        atomic_write_bytes(path, _parquet_bytes(new))


def add_note(root: str | os.PathLike, line: str) -> None:
    """Append one line to <root>/report_lines.txt (skipped inputs etc.); duplicates are dropped."""
    root = Path(root)
    line = " ".join(str(line).split())
    with _locked(root):
        path = root / "report_lines.txt"
        lines = read_lines(path)
        if line not in lines:
            atomic_write_bytes(path, ("\n".join([*lines, line]) + "\n").encode())


# ----------------------------------------------------------------------------- reading
def read_lines(path: Path) -> list[str]:
    """Lines of a text file (none if it does not exist); bytes that are not UTF-8 are replaced."""
    if not path.exists():
        return []
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def read_architectures(root: str | os.PathLike) -> pd.DataFrame | None:
    """<root>/architectures.parquet as a DataFrame, None if there is none.

    ValueError naming the file if it is not a readable Parquet table with a 'model' column.
    """
    path = Path(root) / "architectures.parquet"
    if not path.exists():
        return None
    try:
        arch = pd.read_parquet(path)
    except Exception as e:  # pyarrow's errors for a damaged file span ValueError, OSError, ...
        raise ValueError(
            f"{path} is not a readable Parquet file ({type(e).__name__}: {e}); delete it and "
            "re-run the source that made the dataset to rebuild it"
        ) from None
    if "model" not in arch.columns:
        raise ValueError(f"{path} has no 'model' column: not a massact architecture table")
    return arch
