"""Source 4: any checkpointed Hugging Face suite, one (model, checkpoint) task at a time.

A suite is one or more Hub repos of causal LMs whose training checkpoints are revisions
(branches) named after their step: `step1000` (Pythia), `stage1-step1000-tokens4B` (OLMo),
`ckpt_100` (LLM360), or any name a pattern with one group of digits reads (`step_pattern`).
Revisions are chosen as "all" (every revision whose name gives a step), "every:K" (every K-th of
those, ending at the last) or a list of revision names (or steps, looked up in the listing).
The architecture row comes from `transformers.AutoConfig` (layers, width, heads, FFN width,
rotary fraction and base, and where the config has them: key/value heads `H_kv` of grouped-query
attention, `head_dim`, MoE `n_experts`, `experts_per_token`, `d_ff_expert`); parameters are
counted on the meta device (nothing allocated).

Each task records what Pythia tasks record (massact.sources._pythia is one instance of this
sweep): revision, Hub commit, sha256 of the weight files (per file in `weight_files` and
combined), sha256 of the input token ids, and `duplicate_of` for checkpoints serving the
weights of a higher step. Everything a task needs is planned on the driver before any weights
move: the commit and weight hashes of every checkpoint (from the Hub's metadata online, the
cache's blob names offline, the files of a local root), hence the duplicate flags, the
architecture rows and the probe inputs. Each task then loads its checkpoint alone, checks its
weight files against the plan, and returns (statistics frame, provenance); the driver writes
each task file as it arrives (massact.sources._engine: local or Ray). Finished tasks are skipped,
so a killed sweep resumes where it stopped; a task is written once.

Local roots: `<local_root>/<model>/<revision>/` (or `<local_root>/<org>/<model>/<revision>/`)
save_pretrained folders; HF_HUB_OFFLINE=1 makes the Hub cache-only (revisions are then listed
from the cache's refs).

The parts: revision names and choices in massact.sources._hf_revisions, the architecture row and
the per-checkpoint task (what a worker runs) in massact.sources._hf_task; this module plans the
tasks of every model and runs the sweep.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..dataset import (
    read_manifest,
    task_done,
    task_path,
    write_architectures,
    write_task,
)
from ._engine import Engine, Task, as_engine, raise_failures, run_tasks
from ._hf_revisions import STEP_PATTERNS as STEP_PATTERNS  # re-exported: in this module's API
from ._hf_revisions import _model_folder, list_revisions, parse_step, select_revisions
from ._hf_task import CheckpointJob, architecture_row, checkpoint_task, n_params_of
from ._pythia_checkpoints import (
    Checkpoint,
    _weight_hashes,
    duplicate_flags,
    extraction_dtype,
    hub_checkpoint,
    load_config,
    load_tokenizer,
    task_weight_hashes,
)
from ._pythia_inputs import make_inputs

log = logging.getLogger("massact.hf_suite")

SOURCE = "hf"


@dataclass(frozen=True)
class ModelPlan:
    """One model of a suite to sweep: its checkpoints and how to find them (driver side)."""

    suite: str
    model: str
    repo: str  # Hub repo id: the tokenizer's fallback home
    checkpoints: list[tuple[int, str]]  # (step, revision), sorted by step
    max_step: int
    locate: Callable[[int, str], Checkpoint]  # resolve and hash one checkpoint, no weights moved
    source: str = SOURCE
    local_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _known_files(out: Path, model_name: str, source: str) -> dict[int, dict]:
    """step -> manifest entry of this model's finished tasks of this source."""
    if not (out / "manifest.json").exists():
        return {}
    tasks = read_manifest(out)["tasks"]
    return {
        int(e["step"]): e
        for e in tasks.values()
        if e.get("model") == model_name and e.get("provenance", {}).get("source") == source
    }


def _reflag(out: Path, model_name: str, entries: Mapping[int, dict], flags: Mapping[int, str]):
    """Rewrite finished tasks (of earlier sweeps) whose duplicate_of changed; stats untouched."""
    for step, entry in entries.items():
        prov = dict(entry.get("provenance", {}))
        if prov.get("duplicate_of", "") == flags.get(step, ""):
            continue
        prov["duplicate_of"] = flags.get(step, "")
        frame = pd.read_parquet(task_path(out, model_name, step))
        write_task(out, frame, prov)
        log.warning("%s step %d: duplicate_of set to %r", model_name, step, prov["duplicate_of"])


def _text_name(text) -> str:
    return f"<{len(text)} documents>" if isinstance(text, list | tuple) else str(text)


def _plan_model(
    plan: ModelPlan, out: Path, *, text, n_seqs, seq_len, seed, job_options, cache_dir
) -> list[Task]:
    """Driver side of one model: architecture row, inputs, duplicate flags -> its tasks."""
    todo = [(s, r) for s, r in plan.checkpoints if not task_done(out, plan.model, s)]
    arch_path = out / "architectures.parquet"
    has_arch = arch_path.exists() and plan.model in set(pd.read_parquet(arch_path)["model"])
    if not todo and has_arch:
        log.info("%s: all %d checkpoints already done", plan.model, len(plan.checkpoints))
        return []
    first = plan.locate(*(todo[0] if todo else plan.checkpoints[-1]))
    config = load_config(first, cache_dir)
    row = architecture_row(plan.suite, plan.model, config, n_params_of(config), plan.max_step)
    write_architectures(out, pd.DataFrame([row]))
    if not todo:
        return []
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len {seq_len} exceeds {plan.model}'s context of {context} tokens")
    ckpts = [first] + [plan.locate(s, r) for s, r in todo[1:]]
    tokenizer = load_tokenizer(
        first.folder, plan.repo, plan.local_root, cache_dir, first.commit or first.revision
    )
    input_ids = make_inputs(tokenizer, text, n_seqs, seq_len, seed)
    done = _known_files(out, plan.model, plan.source)
    hashes = {s: task_weight_hashes(e.get("provenance", {})) for s, e in done.items()}
    hashes.update({c.step: set(c.weight_files.values()) for c in ckpts})
    flags = duplicate_flags(hashes)
    _reflag(out, plan.model, {s: e for s, e in done.items() if s in flags}, flags)
    extra = {
        "text": _text_name(text),
        "n_seqs": n_seqs,
        "seq_len": seq_len,
        "seed": seed,
        **plan.extra,
    }
    cost = float(row["n_params"])
    return [
        Task(
            name=f"{plan.model}/{c.revision}",
            model=plan.model,
            fn=checkpoint_task,
            args=(
                CheckpointJob(
                    plan.suite,
                    plan.model,
                    plan.source,
                    c,
                    duplicate_of=flags[c.step],
                    extra=extra,
                    cache_dir=str(cache_dir) if cache_dir else None,
                    **job_options,
                ),
                input_ids,
            ),
            cost=cost,
        )
        for c in ckpts
    ]


def sweep_checkpoints(
    plans: Sequence[ModelPlan],
    out: str | os.PathLike,
    *,
    text,
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    batch_size: int | None = None,
    engine: Engine | str | None = None,
    progress: bool | None = None,
) -> Path:
    """Plan every model's tasks on the driver, run them on `engine`, write each as it arrives.

    Raises massact.sources._engine.SweepError naming the tasks that failed, after the others
    are written (a re-run retries only those).
    """
    out = Path(out)
    engine = as_engine(engine)
    if dtype is not None:
        extraction_dtype(torch.device("cpu"), dtype)  # reject a bad dtype before any download
    names = [p.model for p in plans]
    if len(set(names)) != len(names):
        raise ValueError(f"two models share a name: {names}")
    job_options = {
        "k": k,
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "device": None if device is None else str(device),
        "batch_size": batch_size,
    }
    tasks: list[Task] = []
    for plan in plans:
        tasks += _plan_model(
            plan,
            out,
            text=text,
            n_seqs=n_seqs,
            seq_len=seq_len,
            seed=seed,
            job_options=job_options,
            cache_dir=cache_dir,
        )

    def write(task: Task, value: tuple[pd.DataFrame, dict]) -> None:
        frame, provenance = value
        write_task(out, frame, provenance)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    failures = run_tasks(tasks, engine, write, title="checkpoints", show=show)
    raise_failures(failures, len(tasks))
    return out


class _Listing:
    """A repo's revisions, listed once when first needed."""

    def __init__(self, repo: str, local_root, cache_dir) -> None:
        self.repo, self.local_root, self.cache_dir = repo, local_root, cache_dir
        self.names: list[str] | None = None

    def __call__(self) -> list[str]:
        if self.names is None:
            self.names = list_revisions(
                self.repo, local_root=self.local_root, cache_dir=self.cache_dir
            )
        return self.names

    def top_step(self, pattern: str | None) -> int | None:
        """The highest step among the revisions, None when they cannot be listed."""
        try:
            steps = [parse_step(r, pattern) for r in self()]
        except (OSError, RuntimeError, ValueError) as exc:
            log.info("%s: revisions not listed (%s); max_step from this sweep", self.repo, exc)
            return None
        return max((s for s in steps if s is not None), default=None)


def default_suite(repo: str) -> str:
    """A suite name from a repo id: its name up to the first '-', lower case
    ('EleutherAI/pythia-70m' -> 'pythia', 'allenai/OLMo-2-0425-1B' -> 'olmo')."""
    return repo.split("/")[-1].split("-")[0].lower() or repo


def _local_checkpoint(root: Path, repo: str, name: str, step: int, revision: str) -> Checkpoint:
    folder = _model_folder(root, repo) / revision
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no checkpoint for {repo} revision {revision} under {root}: expected a "
            f"save_pretrained folder (with config.json) at {folder}"
        )
    return Checkpoint(name, step, folder, revision, "", _weight_hashes(folder))


def sweep_hf_suite(
    repos: str | Sequence[str],
    revisions: str | Sequence[str],
    out: str | os.PathLike,
    *,
    text: str | os.PathLike | Sequence[str],
    suite: str | None = None,
    step_pattern: str | None = None,
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    local_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    batch_size: int | None = None,
    engine: Engine | str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Statistics of a checkpointed Hugging Face suite into the dataset at `out`; returns `out`.

    repos: "ORG/NAME" ids (a comma string or a list); each is one model, named NAME in the
    dataset. revisions: "all", "every:K" or revision names / steps (see `select_revisions`),
    the same choice for every repo. suite: the dataset's suite name (default: NAME up to its
    first '-', lower case). step_pattern: regex with one group of digits for revision names
    the usual patterns miss. text, n_seqs, seq_len, seed, dtype, device, k, batch_size: as in
    sweep_pythia. local_root: `<local_root>/NAME/<revision>/` save_pretrained folders instead of
    the Hub. engine: "local" (default) or "ray" (with ray_address, or a local Ray instance);
    workers: local processes (default 1) or Ray tasks in flight (default: as resources allow).
    """
    if isinstance(repos, str):
        repos = [r.strip() for r in repos.split(",") if r.strip()]
    if not repos:
        raise ValueError("repos is empty: name at least one Hugging Face repo, ORG/NAME")
    for repo in repos:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ValueError(f"repo {repo!r} is not a Hugging Face id of the form ORG/NAME")
    if local_root is not None and not Path(local_root).is_dir():
        raise FileNotFoundError(f"local_root {local_root} is not a folder")
    root = Path(local_root) if local_root is not None else None
    plans = []
    for repo in repos:
        name = repo.split("/")[-1]
        listing = _Listing(repo, local_root, cache_dir)
        chosen, top = select_revisions(revisions, listing, pattern=step_pattern, repo=repo)
        if top is None:  # named revisions: the suite's last step still from its listing
            top = listing.top_step(step_pattern)

        def locate(step: int, revision: str, repo=repo, name=name) -> Checkpoint:
            if root is not None:
                return _local_checkpoint(root, repo, name, step, revision)
            return hub_checkpoint(repo, name, step, revision, cache_dir=cache_dir, fetch=False)

        plans.append(
            ModelPlan(
                suite=suite or default_suite(repo),
                model=name,
                repo=repo,
                checkpoints=chosen,
                max_step=max(top or 0, chosen[-1][0]),
                locate=locate,
                source=SOURCE,
                local_root=str(local_root) if local_root is not None else None,
                extra={"repo": repo, "source_path": str(local_root) if local_root else ""},
            )
        )
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


__all__ = [
    "STEP_PATTERNS",
    "architecture_row",
    "list_revisions",
    "parse_step",
    "select_revisions",
    "sweep_checkpoints",
    "sweep_hf_suite",
]
