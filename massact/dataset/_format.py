"""Writing side of the dataset format (layout and schema: massact.dataset._load), and the one
check of a task file that every reader and every resume goes through.

Writes are atomic (`atomic_write_bytes`: temporary file in the same folder, then `os.replace`;
the file gets the usual permissions, 0o666 less the umask), and the manifest is
read-modified-written under a file lock, so a sweep killed at any point leaves only complete
task files. A task counts as done when its manifest entry exists and its file passes
`read_task` (size and sha256 as recorded, then contents: columns and dtypes, model, step, rows,
layers against the architecture table); anything else is redone on resume and skipped with a
note at load. Task writing is a pure function of its inputs, so a distributed engine can run
(model, step) tasks anywhere and merge.
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


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read by setting and restoring it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[io.BufferedWriter]:
    """Binary file object whose contents replace `path` atomically when the block ends.

    The data goes to a temporary file '.<name>.<random>.tmp' in the same folder (created with
    the parents if needed), is flushed and fsynced, gets mode 0o666 less the umask (what a plain
    open() would give, not mkstemp's 0600), then `os.replace`s `path`. Readers see the old file
    or the whole new one; if the block raises (kill, full disk), the old file is untouched and
    the temporary file removed. An OSError without a file name (ENOSPC...) gets `path` as its
    file name, so the message says which output could not be written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    See `atomic_writer` (same folder temporary file, fsync, os.replace, mode 0o666 & ~umask,
    the path named in OSErrors). Use it for every file a later run or reader relies on.
    """
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` of `text` encoded with `encoding` (UTF-8 by default)."""
    atomic_write_bytes(path, text.encode(encoding))


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
