"""Source 1: statistics of Pythia checkpoints, one (model, step) task at a time.

Pythia is one instance of the checkpointed Hugging Face suite sweep
(massact.sources._hf_suite): for each model `EleutherAI/pythia-<size>` and checkpoint revision
`step<N>`, the weights are fetched (Hugging Face Hub, its cache, or a local folder), hashed,
loaded alone in memory, run on a fixed set of N token sequences, and only the per-layer
statistics of each decoder layer's output (forward hooks, massact.probe._hooks) are written as
one task file of the dataset format (massact.dataset._load). Finished tasks are skipped, so a
killed sweep resumes where it stopped. Tasks run on the local or the Ray engine
(massact.sources._engine); the calling process writes every task file.

Provenance per task: revision, the Hub commit (the snapshot folder name; "" for local folders),
the sha256 of the weight files, the sha256 of the input token ids, and `duplicate_of`: some Hub
step branches serve the weights of another step (EleutherAI/pythia issues 195, 205, 206); when
any weight file of two steps is identical, every such step but the highest is flagged
`duplicate_of="step<highest>"` (the known bad branches serve the final model's weights).

This module holds Pythia's schedules, names and layout; the generic sweep lives in
massact.sources._hf_suite, the per-task probe in massact.sources._hf_task, the probe inputs in
massact.sources._pythia_inputs and checkpoint resolution, loading and weight hashing in
massact.sources._pythia_checkpoints (their names are re-exported here).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dataset import write_task
from ._engine import Engine, as_engine
from ._hf_revisions import every_kth
from ._hf_suite import ModelPlan, sweep_checkpoints
from ._hf_task import CheckpointJob, checkpoint_task, rotary
from ._hf_task import architecture_row as hf_architecture_row
from ._hf_task import extract_stats as extract_stats
from ._pythia_archs import FINAL_STEP as FINAL_STEP
from ._pythia_archs import PAPER_MODELS as PAPER_MODELS
from ._pythia_archs import PYTHIA_ARCHS as PYTHIA_ARCHS
from ._pythia_archs import PYTHIA_STEPS as PYTHIA_STEPS
from ._pythia_archs import PythiaArch as PythiaArch
from ._pythia_checkpoints import HUB_ORG as HUB_ORG
from ._pythia_checkpoints import Checkpoint as Checkpoint
from ._pythia_checkpoints import duplicate_flags as duplicate_flags
from ._pythia_checkpoints import extraction_dtype
from ._pythia_checkpoints import file_sha256 as file_sha256
from ._pythia_checkpoints import load_model as load_model
from ._pythia_checkpoints import resolve_checkpoint as resolve_checkpoint
from ._pythia_inputs import input_sha256 as input_sha256
from ._pythia_inputs import make_inputs as make_inputs

log = logging.getLogger("massact.pythia")

SUITE = "pythia"


def paper_steps(model: str | int | None = None, n: int = 37) -> list[int]:
    """n regularly spaced checkpoints (the paper used at least 37 per model).

    Targets are evenly spaced over 0..143000 and snapped to the nearest checkpoint of
    PYTHIA_STEPS, so the first is step 0 and the last step 143000. `model` (a Pythia size or
    name, accepted for symmetry with per-model schedules) must be known when given; an int in
    its place is taken as n.
    """
    if isinstance(model, int) and not isinstance(model, bool):
        model, n = None, model
    if model is not None:
        _size_of(model, allow_unknown=False)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= len(PYTHIA_STEPS):
        raise ValueError(f"n must be an int in 2..{len(PYTHIA_STEPS)}, got {n!r}")
    steps = np.asarray(PYTHIA_STEPS)
    picked: list[int] = []
    for target in np.linspace(0, FINAL_STEP, n):
        free = [s for s in steps if s not in picked]
        picked.append(int(min(free, key=lambda s: (abs(s - target), s))))
    return sorted(picked)


def select_steps(spec: str | int | Sequence[int] | None = "paper") -> list[int]:
    """Steps from a choice: "all", "paper" (37 regularly spaced), an int k (every k-th
    checkpoint, always ending at the final one), or an explicit list of schedule steps."""
    if spec is None or spec == "all":
        return list(PYTHIA_STEPS)
    if spec == "paper":
        return paper_steps()
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"every-k step choice needs k >= 1, got {spec}")
        return every_kth(PYTHIA_STEPS, spec)
    if isinstance(spec, str):
        raise ValueError(f"steps must be 'all', 'paper', an int k or a list, got {spec!r}")
    steps = sorted({int(s) for s in spec})
    bad = [s for s in steps if s not in PYTHIA_STEPS]
    if bad or not steps:
        raise ValueError(f"steps {bad or '[]'} are not Pythia checkpoints (see PYTHIA_STEPS)")
    return steps


def _size_of(model: str, *, allow_unknown: bool) -> str:
    """'EleutherAI/pythia-70m' | 'pythia-70m' | '70m' -> '70m'."""
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"a Pythia model is named by a string like '70m', got {model!r}")
    size = model.strip().lower().removeprefix(f"{HUB_ORG.lower()}/").removeprefix("pythia-")
    if size not in PYTHIA_ARCHS and not allow_unknown:
        raise ValueError(
            f"unknown Pythia size {model!r}; known: {', '.join(PYTHIA_ARCHS)} "
            "(other names work only with local_root=...)"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9._+-]*", size):
        raise ValueError(f"bad model name {model!r}")
    return size


_rotary = rotary  # (rotary_pct, rotary_base) of a config: v4 fields or v5 rope_parameters


def architecture_row(model_name: str, config: Any, n_params: int, max_step: int) -> dict:
    """The Pythia architecture row of a GPTNeoX config."""
    return hf_architecture_row(SUITE, model_name, config, n_params, max_step)


def run_task(
    out: str | os.PathLike,
    model_name: str,
    checkpoint: Checkpoint,
    input_ids: torch.Tensor,
    *,
    k: int = 3,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    duplicate_of: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """One (model, step) task: load the checkpoint, probe it, write one task file.

    A pure function of its inputs (checkpoint files, token ids, options) -> one Parquet file;
    the model is freed before returning. Returns the task file's path.
    """
    job = CheckpointJob(
        SUITE,
        model_name,
        "pythia",
        checkpoint,
        duplicate_of=duplicate_of,
        k=k,
        dtype=None if dtype is None else str(dtype).removeprefix("torch."),
        device=None if device is None else str(device),
        batch_size=batch_size,
        extra=dict(extra or {}),
    )
    frame, provenance = checkpoint_task(job, input_ids)
    return write_task(out, frame, provenance)


# --------------------------------------------------------------------------- the sweep


def sweep_pythia(
    models: str | Sequence[str],
    steps: str | int | Sequence[int] | Mapping[str, Sequence[int]] | None,
    out: str | os.PathLike,
    *,
    text: str | os.PathLike | Sequence[str],
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    revision_map: Mapping[Any, Any] | None = None,
    local_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    batch_size: int | None = None,
    engine: Engine | str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Statistics of Pythia checkpoints into the dataset at `out`; returns `out`.

    models: sizes or names ("70m", "pythia-70m", "EleutherAI/pythia-70m"), or "paper" (the
    paper's nine) or "all". steps: "all" (154), "paper" (37 regularly spaced), an int k (every
    k-th, ending at 143000) or a list of schedule steps; with local_root, any non-negative ints;
    or a mapping {model: steps} for steps that differ per model.
    text: local text file/folder (.txt/.md/.rst/.jsonl), a list of documents, or a Hugging Face
    dataset id (online, needs `datasets`). n_seqs x seq_len tokens are drawn with `seed`.
    dtype/device: default bf16 (fp16 without bf16) on CUDA, fp32 on the CPU.
    revision_map: {step: revision} or {model: {step: revision}} overriding "step<N>".
    local_root: read `<local_root>/pythia-<size>/step<N>/` (or `<size>/step<N>/`)
    save_pretrained folders instead of the Hub; HF_HUB_OFFLINE=1 makes the Hub cache-only.
    engine: "local" (default: one task after the other in this process; `workers` > 1: that
    many processes) or "ray" (one task per (model, step) on the Ray cluster at `ray_address`,
    else a local Ray instance; see massact.sources._engine). Every task's commit and weight
    hashes are read before any task runs (online: from the Hub's metadata, no download), so
    duplicate flags are final when a task is written; each task file is written once, by this
    process. Finished tasks in `out` are skipped. max_step in the architecture rows is 143000
    for Pythia sizes, else the highest step of this call. This is the Hugging Face suite sweep
    (massact.sources._hf_suite) with Pythia's schedule, names and layout.
    """
    out = Path(out)
    if isinstance(models, str):
        models = {"paper": list(PAPER_MODELS), "all": list(PYTHIA_ARCHS)}.get(models, [models])
    if not models:
        raise ValueError("models is empty: name at least one Pythia size, e.g. ['70m']")
    if dtype is not None:
        extraction_dtype(torch.device("cpu"), dtype)  # reject a bad dtype before any download
    if local_root is not None and not Path(local_root).is_dir():
        raise FileNotFoundError(f"local_root {local_root} is not a folder")
    plans = []
    for name in models:
        size = _size_of(name, allow_unknown=local_root is not None)
        spec = steps
        if isinstance(steps, Mapping):
            spec = next(
                (steps[key] for key in (name, size, f"pythia-{size}") if key in steps), None
            )
            if spec is None:
                raise ValueError(f"steps has no entry for model {name!r}")
        step_list = _step_list(spec, local_root)
        plans.append(_plan(size, step_list, revision_map, local_root, cache_dir))
    return sweep_checkpoints(
        plans,
        out,
        text=text,
        n_seqs=n_seqs,
        seq_len=seq_len,
        seed=seed,
        dtype=dtype,
        device=device,
        cache_dir=cache_dir,
        k=k,
        batch_size=batch_size,
        engine=as_engine(engine, workers=workers, address=ray_address),
        progress=progress,
    )


def _step_list(spec, local_root) -> list[int]:
    if local_root is not None and not isinstance(spec, str) and not isinstance(spec, int):
        step_list = sorted({int(s) for s in (spec or [])})
        if not step_list or step_list[0] < 0:
            raise ValueError(f"steps must be non-negative ints, got {spec!r}")
        return step_list
    return select_steps(spec)


def _plan(size: str, steps: list[int], revision_map, local_root, cache_dir) -> ModelPlan:
    """Pythia as a checkpointed suite: revisions step<N> (or the map's), Pythia's layout."""
    revisions = _revisions(revision_map, size)

    def locate(step: int, revision: str) -> Checkpoint:
        return resolve_checkpoint(
            size, step, revision=revision, local_root=local_root, cache_dir=cache_dir, fetch=False
        )

    return ModelPlan(
        suite=SUITE,
        model=f"pythia-{size}",
        repo=f"{HUB_ORG}/pythia-{size}",
        checkpoints=[(s, revisions.get(s, f"step{s}")) for s in steps],
        max_step=FINAL_STEP if size in PYTHIA_ARCHS else max(steps),
        locate=locate,
        source="pythia",
        local_root=str(local_root) if local_root is not None else None,
        extra={"source_path": str(local_root) if local_root is not None else ""},
    )


def _revisions(revision_map: Mapping[Any, Any] | None, size: str) -> dict[int, str]:
    if not revision_map:
        return {}
    for key in (size, f"pythia-{size}", f"{HUB_ORG}/pythia-{size}"):
        if isinstance(revision_map.get(key), Mapping):
            return {int(s): str(r) for s, r in revision_map[key].items()}
    return {int(s): str(r) for s, r in revision_map.items() if not isinstance(r, Mapping)}
