"""Source 2: the paper's released statistics archive, read into the massact dataset format.

The Hugging Face dataset `Aimpoint-Digital/pythia-massive-activations` (MIT) holds, per model,
`pythia_<size>/stats/exp2_pythia_<size>_step<N>`: a Python literal (nested lists, no code) of
shape [sequences (10)][4: top1, top2, top3, median][L layers]. `ingest_archive` parses each file
with `ast.literal_eval` (never `eval`), validates shape, finiteness, positivity and ordering, and
writes one task per (model, step). A malformed file is skipped with a line in the dataset's
report_lines.txt saying which file and why; the rest goes on.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import add_note, task_done, write_architectures, write_task
from ._pythia_archs import FINAL_STEP as FINAL_STEP
from ._pythia_archs import PYTHIA_ARCHS as PYTHIA_ARCHITECTURES
from ._pythia_archs import PythiaArch as PythiaArch

SUITE = "pythia"
_FILE = re.compile(r"^exp2_pythia_(?P<size>\d+(?:\.\d+)?[mb])_step(?P<step>\d+)(?:\.\w+)?$")
_MAX_BYTES = 64 << 20  # a [10][4][36] literal is ~50 kB; refuse anything absurdly large


def pythia_architecture_rows(sizes: Sequence[str], max_step: int = FINAL_STEP) -> pd.DataFrame:
    """Architecture rows (dataset schema) for Pythia sizes; max_step = the final training step."""
    rows = []
    for size in sizes:
        a = PYTHIA_ARCHITECTURES[size]
        rows.append(
            {
                "suite": SUITE,
                "model": f"pythia-{size}",
                "L": a.L,
                "d": a.d,
                "H": a.H,
                "d_ff": a.d_ff,
                "rotary_pct": a.rotary_pct,
                "rotary_base": a.rotary_base,
                "n_params": a.n_params,
                "max_step": int(max_step),
                "vocab_size": a.vocab_size,
                "parallel_residual": a.parallel_residual,
            }
        )
    return pd.DataFrame(rows)


class MalformedFile(ValueError):
    """A statistics file that cannot be used; the message says why."""


def parse_stats_file(path: str | os.PathLike, n_layers: int) -> np.ndarray:
    """Parse and validate one archive file. Returns [sequences, 4, L] float64.

    Raises MalformedFile with the reason: not a literal, wrong shape, non-finite or
    non-positive values, or top1 >= top2 >= top3 >= median violated.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > _MAX_BYTES:
        raise MalformedFile(f"file is {size} bytes, more than the {_MAX_BYTES} allowed")
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise MalformedFile(f"not a Python literal ({type(e).__name__}: {e})") from None
    if not isinstance(value, list | tuple) or len(value) == 0:
        raise MalformedFile("expected a non-empty list of sequences at the top level")
    for i, seq in enumerate(value):
        if not isinstance(seq, list | tuple) or len(seq) != 4:
            raise MalformedFile(f"sequence {i}: expected 4 rows (top1, top2, top3, median)")
        for j, row in enumerate(seq):
            if not isinstance(row, list | tuple) or len(row) != n_layers:
                got = len(row) if isinstance(row, list | tuple) else type(row).__name__
                raise MalformedFile(f"sequence {i} row {j}: expected {n_layers} layers, got {got}")
            for v in row:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise MalformedFile(f"sequence {i} row {j}: non-numeric value {v!r}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise MalformedFile("contains non-finite values")
    if (arr <= 0).any():
        raise MalformedFile(f"contains {int((arr <= 0).sum())} non-positive values")
    # selection results: top1 >= top2 >= top3 >= median (tiny slack for printed rounding)
    if (np.diff(arr, axis=1) > 1e-6 * arr[:, :-1]).any():
        raise MalformedFile("values are not ordered top1 >= top2 >= top3 >= median")
    return arr


def _find_files(root: Path) -> list[tuple[str, int, Path]]:
    found = []
    for model_dir in sorted(root.glob("pythia_*")):
        stats_dir = model_dir / "stats"
        if not stats_dir.is_dir():
            continue
        for f in sorted(stats_dir.iterdir()):
            m = _FILE.match(f.name)
            if m and f.is_file():
                found.append((m.group("size"), int(m.group("step")), f))
    return sorted(found, key=lambda x: (x[0], x[1], x[2].name))


def ingest_archive(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a local copy of the archive at `path` into the dataset at `out`.

    Models are named 'pythia-<size>' (suite 'pythia', source 'archive', revision 'step<N>').
    Tasks already in `out` are skipped, so ingesting again is cheap. Malformed files and
    files of unknown sizes are skipped with a line in <out>/report_lines.txt. Returns `out`.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"archive folder {root} does not exist: download the Hugging Face dataset "
            "Aimpoint-Digital/pythia-massive-activations and pass its local folder"
        )
    files = _find_files(root)
    if not files:
        raise ValueError(
            f"{root} holds no files named pythia_<size>/stats/exp2_pythia_<size>_step<N>: "
            "is it the root of the Aimpoint-Digital/pythia-massive-activations copy?"
        )
    out = Path(out)
    sizes: set[str] = set()
    seen: set[tuple[str, int]] = set()
    for size, step, f in files:
        rel = f.relative_to(root).as_posix()
        arch = PYTHIA_ARCHITECTURES.get(size)
        if arch is None:
            add_note(out, f"archive: skipped {rel}: unknown Pythia size {size!r}")
            continue
        if (size, step) in seen:
            add_note(out, f"archive: skipped {rel}: a second file for pythia-{size} step {step}")
            continue
        seen.add((size, step))
        model = f"pythia-{size}"
        if task_done(out, model, step):
            sizes.add(size)
            continue
        try:
            arr = parse_stats_file(f, arch.L)
        except MalformedFile as e:
            add_note(out, f"archive: skipped {rel}: {e}")
            continue
        write_task(out, _frame(arr, model, step), _provenance(f, rel, step))
        sizes.add(size)
    if sizes:
        write_architectures(out, pythia_architecture_rows(sorted(sizes)))
    else:
        add_note(out, f"archive: no usable file in {root}")
    return out


def _frame(arr: np.ndarray, model: str, step: int) -> pd.DataFrame:
    """[sequences, 4, L] -> stats rows (layer-major, then sample)."""
    n, _, L = arr.shape
    layer = np.repeat(np.arange(L, dtype=np.int64), n)
    sample = np.tile(np.arange(n, dtype=np.int64), L)
    vals = arr.transpose(2, 0, 1).reshape(L * n, 4)  # [L*n, 4]
    return pd.DataFrame(
        {
            "suite": SUITE,
            "model": model,
            "step": np.full(L * n, step, np.int64),
            "layer": layer,
            "sample": sample,
            "top1": vals[:, 0],
            "top2": vals[:, 1],
            "top3": vals[:, 2],
            "median": vals[:, 3],
        }
    )


def _provenance(f: Path, rel: str, step: int) -> dict:
    return {
        "source": "archive",
        "revision": f"step{step}",
        "archive_file": rel,
        "archive_file_sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
    }


__all__ = [
    "PYTHIA_ARCHITECTURES",
    "PythiaArch",
    "MalformedFile",
    "ingest_archive",
    "parse_stats_file",
    "pythia_architecture_rows",
]
