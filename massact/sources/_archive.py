"""Source 2: the paper's released statistics archive, read into the massact dataset format.

The Hugging Face dataset `Aimpoint-Digital/pythia-massive-activations` (MIT) holds, per model,
`pythia_<size>/stats/exp2_pythia_<size>_step<N>`: a Python literal (nested lists, no code) of
shape [sequences (10)][4: top1, top2, top3, median][L layers].

Reading is built for hostile input. A file is opened without blocking and only if it is a
regular file (FIFOs, devices, directories and symlink loops are noted, never opened), and read
only up to a size cap derived from the largest shape a real file can have (`max_file_bytes`:
a few hundred kB, where real files are ~50 kB), before any parsing. It is then parsed by a
small tokenizer of nested lists of numbers (`parse_stats_bytes`: memory proportional to the
values, no AST, no code ever executed) and validated (shape, finiteness, positivity, ordering).

`ingest_archive` writes one task per (model, step). The file of a (size, step) is chosen by
its name, never by sorting: the canonical `exp2_pythia_<size>_step<N>` wins over variants such
as `..._step0001`; a file whose size disagrees with its folder, an unrecognised name, an
unreadable or malformed file is skipped with a line in the dataset's report_lines.txt saying
which file and why; the rest goes on. Re-ingesting redoes tasks whose file in the dataset fails
its check (massact.dataset.read_task) and tasks whose archive file changed since (sha256), with
a note.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import (
    MAX_STEP,
    TaskError,
    add_note,
    read_manifest,
    read_task,
    remove_task,
    task_key,
    write_architectures,
    write_task,
)
from ._archive_parser import MalformedFile, max_file_bytes, parse_stats_bytes, read_capped
from ._archive_parser import parse_stats_file as parse_stats_file
from ._pythia_archs import FINAL_STEP as FINAL_STEP
from ._pythia_archs import PYTHIA_ARCHS as PYTHIA_ARCHITECTURES
from ._pythia_archs import PythiaArch as PythiaArch

SUITE = "pythia"
_DIR = re.compile(r"^pythia_(?P<size>\d+(?:\.\d+)?[mb])$")
_FILE = re.compile(r"^exp2_pythia_(?P<size>\d+(?:\.\d+)?[mb])_step(?P<step>\d+)(?:\.\w+)?$")


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


@dataclass(frozen=True)
class _Found:
    size: str
    step: int
    path: Path
    rel: str

    @property
    def canonical(self) -> bool:
        return self.path.name == f"exp2_pythia_{self.size}_step{self.step}"


def _kind(path: Path) -> str | None:
    """None for a regular file (symlinks followed), else what it is, for a note."""
    try:
        st = os.stat(path)
    except OSError as e:  # a broken link, a symlink loop (ELOOP), no permission
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (FIFO, socket or device); not opened"
    return None


def _scan(root: Path) -> tuple[list[_Found], list[str]]:
    """Every file named like a statistics file under root/pythia_<size>/stats/, and notes on
    everything else there (skipped folders, unrecognised names, non-files)."""
    found: list[_Found] = []
    notes: list[str] = []
    for model_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if not model_dir.name.startswith("pythia_"):
            continue  # README.md, .gitattributes, .cache/: not statistics
        folder = _DIR.match(model_dir.name)
        if folder is None:
            notes.append(f"skipped {model_dir.name}: not a folder named pythia_<size>")
            continue
        stats_dir = model_dir / "stats"
        try:
            entries = sorted(stats_dir.iterdir(), key=lambda p: p.name)
        except FileNotFoundError:
            notes.append(f"skipped {model_dir.name}/: it has no stats folder")
            continue
        except OSError as e:  # not a folder, a symlink loop, no permission
            notes.append(f"skipped {model_dir.name}/stats: cannot be listed ({e.strerror})")
            continue
        for f in entries:
            rel = f.relative_to(root).as_posix()
            m = _FILE.match(f.name)
            what = _kind(f)
            if what is not None:
                notes.append(f"skipped {rel}: {what}")
            elif m is None:
                notes.append(f"skipped {rel}: not named exp2_pythia_<size>_step<N>")
            elif m.group("size") != folder.group("size"):
                notes.append(
                    f"skipped {rel}: a pythia-{m.group('size')} file in the folder of "
                    f"pythia-{folder.group('size')}"
                )
            elif int(m.group("step")) > MAX_STEP:
                notes.append(f"skipped {rel}: step number {m.group('step')} is out of range")
            else:
                found.append(_Found(m.group("size"), int(m.group("step")), f, rel))
    return found, notes


def _choose(found: list[_Found]) -> tuple[list[_Found], list[str]]:
    """One file per (size, step): the canonical name, or the only file; notes for the rest."""
    groups: dict[tuple[str, int], list[_Found]] = {}
    for f in found:
        groups.setdefault((f.size, f.step), []).append(f)
    chosen, notes = [], []
    for (size, step), files in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        files = sorted(files, key=lambda f: f.rel)
        canonical = [f for f in files if f.canonical]
        if len(files) == 1:
            chosen.append(files[0])
        elif canonical:
            chosen.append(canonical[0])
            for f in files:
                if f is not canonical[0]:
                    notes.append(
                        f"skipped {f.rel}: {canonical[0].rel} is the canonical file of "
                        f"pythia-{size} step {step}"
                    )
        else:
            names = ", ".join(f.rel for f in files)
            notes.append(
                f"skipped {names}: {len(files)} files for pythia-{size} step {step} and none "
                f"named exp2_pythia_{size}_step{step}"
            )
    return chosen, notes


def ingest_archive(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a local copy of the archive at `path` into the dataset at `out`.

    Models are named 'pythia-<size>' (suite 'pythia', source 'archive', revision 'step<N>').
    Tasks already in `out` whose file passes its check and whose archive file is unchanged
    (same sha256) are skipped, so ingesting again is cheap; a task whose archive file changed is
    ingested again (or removed, if the new file is unusable), with a note. Malformed, unreadable
    or ambiguous files, unrecognised names and files of unknown sizes are skipped with a line in
    <out>/report_lines.txt. Returns `out`.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"archive folder {root} does not exist: download the Hugging Face dataset "
            "Aimpoint-Digital/pythia-massive-activations and pass its local folder"
        )
    found, notes = _scan(root)
    if not found:
        raise ValueError(
            f"{root} holds no files named pythia_<size>/stats/exp2_pythia_<size>_step<N>: "
            "is it the root of the Aimpoint-Digital/pythia-massive-activations copy?"
        )
    chosen, more = _choose(found)
    out = Path(out)
    for line in [*notes, *more]:
        add_note(out, f"archive: {line}")
    tasks = read_manifest(out)["tasks"]
    sizes: set[str] = set()
    for f in chosen:
        arch = PYTHIA_ARCHITECTURES.get(f.size)
        if arch is None:
            add_note(out, f"archive: skipped {f.rel}: unknown Pythia size {f.size!r}")
            continue
        model = f"pythia-{f.size}"
        key = task_key(model, f.step)
        old_sha = _ingested_sha(out, key, tasks.get(key), arch.L)  # None: not done
        if old_sha == "":  # done, by another source or before hashes were kept
            sizes.add(f.size)
            continue
        try:
            data = read_capped(f.path, max_file_bytes(arch.L))
            sha = hashlib.sha256(data).hexdigest()
            if old_sha == sha:  # done, and the file is unchanged
                sizes.add(f.size)
                continue
            arr = parse_stats_bytes(data, arch.L)
        except MalformedFile as e:
            add_note(out, f"archive: skipped {f.rel}: {e}")
            if old_sha:  # ingested from an earlier version of this file: now stale
                remove_task(out, model, f.step)
                add_note(
                    out,
                    f"archive: {model} step {f.step} removed: it came from an earlier version "
                    f"of {f.rel} (sha256 {old_sha[:12]}), which is now unusable",
                )
            continue
        if old_sha:
            add_note(
                out,
                f"archive: {f.rel} changed since {model} step {f.step} was ingested (sha256 "
                f"{old_sha[:12]} -> {sha[:12]}); ingested again",
            )
        write_task(out, _frame(arr, model, f.step), _provenance(f.rel, f.step, sha))
        sizes.add(f.size)
    if sizes:
        write_architectures(out, pythia_architecture_rows(sorted(sizes)))
    else:
        add_note(out, f"archive: no usable file in {root}")
    return out


def _ingested_sha(out: Path, key: str, entry: dict | None, n_layers: int) -> str | None:
    """None if the task is not done (no entry, or its file fails read_task); else the sha256
    of the archive file it was ingested from ('' when another source wrote it)."""
    if entry is None:
        return None
    try:
        read_task(out, key, entry, n_layers=n_layers)
    except TaskError:
        return None
    prov = entry.get("provenance", {})
    if prov.get("source") != "archive":
        return ""
    return str(prov.get("archive_file_sha256", "") or "")


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


def _provenance(rel: str, step: int, sha256: str) -> dict:
    return {
        "source": "archive",
        "revision": f"step{step}",
        "archive_file": rel,
        "archive_file_sha256": sha256,
    }


__all__ = [
    "PYTHIA_ARCHITECTURES",
    "PythiaArch",
    "MalformedFile",
    "ingest_archive",
    "max_file_bytes",
    "parse_stats_bytes",
    "parse_stats_file",
    "pythia_architecture_rows",
]
