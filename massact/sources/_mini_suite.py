"""Source 3: the built-in mini-suite, small GPTNeoX models trained from scratch, fully offline.

Each architecture (depth L, width d, heads H, MLP ratio d_ff/d) is trained with AdamW (linear
warmup, then the recipe's schedule: cosine decay to 10%, constant, or both) on byte-level tokens
(256 byte values + a BOS token that starts every sequence) from a corpus every machine has: the
source text of the installed Python standard library (read in sorted path order), or a
file/folder the user names, as is or in the recipe's "repeat" form (massact.sources._mini_train
and _mini_corpus.text_form). At a Pythia-like
checkpoint schedule (0, powers of two, then regular steps) the per-layer statistics of a fixed
probe set are written as one dataset task per (model, step), through the same forward hooks
(`massact.probe._hooks.collect_layer_stats`) a real sweep uses.

Determinism and resumption: weights are initialised from a seed derived from (seed, model
name), batch b of step s is drawn from a generator seeded with (seed, s), and there is no
dropout. After each checkpoint's task file, the training state (model + optimizer) is saved
atomically under <out>/.mini_state/; a sweep that is killed and run again skips finished models
and finished tasks, resumes each unfinished model from its last saved state, and produces the
same data as an uninterrupted run on the same machine and thread count (on a GPU, attention
backward kernels may not be bitwise deterministic). The state file is removed once a model is
complete.

Engines (massact.sources._engine): locally, models train in parallel worker processes (one
per CPU core by default when the sweep is large enough to repay starting them), each writing its
own task files and states; on Ray, each model is one task trained from scratch in memory and
the driver writes its task files as it arrives. A model's numbers depend only on its seed,
corpus and recipe (one CPU thread per model), so every engine writes the same files.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from ..dataset import (
    read_manifest,
    task_done,
    task_key,
    write_architectures,
    write_task,
)
from ._engine import Engine, Task, as_engine, available_cpus, raise_failures, run_tasks
from ._mini_corpus import (
    VOCAB,
    load_corpus,
    probe_set,
    split_corpus,
    tensor_sha256,
    text_form,
)
from ._mini_presets import MINI_PRESETS, MiniArch
from ._mini_state import remove_stale_saves, save_state
from ._mini_train import SUITE, build_model, count_params, make_optimizer, probe_task, train_loop

_STATE_DIR = ".mini_state"


# ----------------------------------------------------------------------------- one model
def _arch_row(arch: MiniArch, n_params: int, extra: dict) -> dict:
    return {
        "suite": SUITE,
        "model": arch.name,
        "L": arch.L,
        "d": arch.d,
        "H": arch.H,
        "d_ff": arch.d_ff,
        "rotary_pct": 0.25,
        "rotary_base": 10000.0,
        "n_params": n_params,
        "max_step": arch.steps,
        "mlp_ratio": float(arch.mlp_ratio),
        "vocab_size": VOCAB,
        "parallel_residual": True,
        "seq_len": arch.seq_len,
        "batch": arch.batch,
        "lr": arch.lr,
        "weight_decay": arch.weight_decay,
        "schedule": arch.schedule,
        "text": arch.text,
        **extra,
    }


def _check_compatible(out: Path, arch: MiniArch, prov: dict) -> None:
    """Refuse to mix tasks of a different seed, corpus or recipe under one model name."""
    tasks = read_manifest(out)["tasks"]
    for step in arch.checkpoints():
        entry = tasks.get(task_key(arch.name, step))
        if entry is None:
            continue
        old = entry.get("provenance", {})
        for key in ("seed", "corpus_sha256", "recipe_sha256", "input_sha256"):
            if key in old and old[key] != prov[key]:
                raise ValueError(
                    f"{out} already holds {arch.name} step {step} made with a different {key} "
                    f"({old[key]} != {prov[key]}): use a new output folder or the same settings"
                )
        return


def _prov_base(arch: MiniArch, seed: int, probe: torch.Tensor, corpus_sha: str) -> dict:
    """The provenance every task of one model shares."""
    recipe_sha = hashlib.sha256(repr(sorted(asdict(arch).items())).encode()).hexdigest()
    return {
        "source": "mini",
        "input_sha256": tensor_sha256(probe),
        "seed": int(seed),
        "corpus_sha256": corpus_sha,
        "recipe_sha256": recipe_sha,
    }


def _train_one(
    arch: MiniArch,
    out: Path,
    *,
    seed: int,
    train: torch.Tensor,
    probe: torch.Tensor,
    corpus_sha: str,
    device: torch.device,
    advance,
) -> None:
    """Train one model into `out`: task files and resumable training states (local engine)."""
    checkpoints = arch.checkpoints()
    prov_base = _prov_base(arch, seed, probe, corpus_sha)
    recipe_sha = prov_base["recipe_sha256"]
    _check_compatible(out, arch, prov_base)
    state_path = out / _STATE_DIR / f"{arch.name}.pt"
    remove_stale_saves(state_path)  # left by a kill mid-save
    model = build_model(arch, seed)
    n_params = sum(p.numel() for p in model.parameters())
    write_architectures(
        out,
        pd.DataFrame([_arch_row(arch, n_params, {"seed": seed, "corpus_sha256": corpus_sha})]),
    )
    if all(task_done(out, arch.name, s) for s in checkpoints):
        remove_stale_saves(state_path, finished=True)
        advance(arch.steps)
        return
    model.to(device)
    opt = make_optimizer(arch, model)
    start = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state.get("recipe_sha256") == recipe_sha and state.get("seed") == seed:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            start = int(state["step"])
    if start:
        advance(start)
    probe_dev = probe.to(device)
    backend = "auto" if device.type == "cuda" else "torch"

    def checkpoint(step: int) -> None:
        if not task_done(out, arch.name, step):
            write_task(out, *probe_task(model, arch, step, probe_dev, prov_base, backend))

    def save(step: int) -> None:
        state = {"step": step, "model": model.state_dict(), "optim": opt.state_dict()}
        save_state(state_path, {**state, "recipe_sha256": recipe_sha, "seed": seed})

    train_loop(arch, model, opt, start, train, seed, device, checkpoint, save, advance)
    remove_stale_saves(state_path, finished=True)


def _with_threads(threads: int | None, fn, *args, **kwargs):
    """fn(*args, **kwargs) with `threads` torch CPU threads (None: unchanged), restored after."""
    old = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(old)


def _local_model_task(arch, out, seed, corpus_sha, train, probe, device, threads, report=None):
    """A local engine's unit: one model trained into `out` (task files, resume states)."""
    _with_threads(
        threads,
        _train_one,
        arch,
        Path(out),
        seed=seed,
        train=train,
        probe=probe,
        corpus_sha=corpus_sha,
        device=torch.device(device),
        advance=report or (lambda n: None),
    )


def _model_task(arch, seed, corpus_sha, train, probe, device, threads, skip_steps):
    """A Ray worker's unit: one model trained from scratch in memory; returns the (stats
    frame, provenance) of each checkpoint not in skip_steps. Writes nothing: the driver does.

    device None: CUDA when this worker has a GPU, else the CPU (threads None = 1 there)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads is None and dev.type == "cpu":
        threads = 1
    return _with_threads(
        threads, _train_in_memory, arch, seed, corpus_sha, train, probe, dev, set(skip_steps)
    )


def _train_in_memory(arch, seed, corpus_sha, train, probe, device, skip_steps):
    prov_base = _prov_base(arch, seed, probe, corpus_sha)
    model = build_model(arch, seed).to(device)
    opt = make_optimizer(arch, model)
    probe_dev = probe.to(device)
    backend = "auto" if device.type == "cuda" else "torch"
    results = []

    def checkpoint(step: int) -> None:
        if step not in skip_steps:
            results.append(probe_task(model, arch, step, probe_dev, prov_base, backend))

    train_loop(arch, model, opt, 0, train, seed, device, checkpoint, lambda s: None, lambda n: 0)
    return results


# ----------------------------------------------------------------------------- the sweep
def train_mini_suite(
    out: str | os.PathLike,
    preset: str | Sequence[MiniArch] = "fast",
    *,
    seed: int = 0,
    corpus: str | os.PathLike | bytes | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    n_probe: int = 8,
    threads: int | None = None,
    engine: Engine | str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> Path:
    """Train the mini-suite `preset` and write its trajectories to the dataset at `out`.

    preset: "tiny" (seconds, for tests), "fast" (~4 minutes on a 2-core CPU), "standard"
    (12 models, 30-50 minutes there), "full" (16 larger models, minutes on a GPU), or a list of
    MiniArch. corpus: None for the Python
    standard library source, a text file or folder, or bytes. device: default CUDA when
    available, else CPU. progress: rich progress bars; None = only when stderr is a terminal.
    n_probe: sequences in the fixed probe set. threads: torch CPU threads per model while
    training (restored afterwards). None = 1 on the CPU: these models are too small to gain from
    more, a shared machine slows multi-threaded runs down badly, and one thread gives the same
    numbers on every machine; on a GPU None keeps the current setting. Finished tasks in `out`
    are skipped (resume); bitwise-identical resumption needs the same device and threads.

    engine "local" (default): models train in `workers` processes at once (None = one per
    CPU core on the CPU, 1 on a GPU; 1 = in this process), each writing its task files and
    resume states into `out`. engine "ray": one Ray task per model (on the cluster at
    `ray_address`, else a local Ray instance), trained from scratch in memory; this process
    writes every task file as its model arrives (workers: models in flight at most). Every
    engine gives the same data: a model's numbers depend only on its seed, corpus and recipe.
    """
    if isinstance(preset, str):
        if preset not in MINI_PRESETS:
            raise ValueError(f"unknown preset {preset!r}: use one of {sorted(MINI_PRESETS)}")
        archs = MINI_PRESETS[preset]
    else:
        archs = list(preset)
        if not archs or not all(isinstance(a, MiniArch) for a in archs):
            raise TypeError("preset must be a preset name or a non-empty list of MiniArch")
    names = [a.name for a in archs]
    if len(set(names)) != len(names):
        raise ValueError(f"two architectures share a name: {names}")
    if n_probe < 1:
        raise ValueError(f"n_probe must be >= 1, got {n_probe}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    engine = as_engine(engine, workers=workers, address=ray_address)
    asked_device = device
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_corpus(corpus)
    corpus_sha = hashlib.sha256(data).hexdigest()
    splits = {form: split_corpus(text_form(data, form)) for form in {a.text for a in archs}}
    trains = [splits[a.text][0] for a in archs]
    probes = [
        probe_set(splits[a.text][1], seed=seed, n_probe=n_probe, seq_len=a.seq_len) for a in archs
    ]
    for arch, probe in zip(archs, probes):  # before any work: refuse mixing runs
        _check_compatible(out, arch, _prov_base(arch, seed, probe, corpus_sha))

    show = sys.stderr.isatty() if progress is None else bool(progress)
    if engine.kind == "ray":
        common = (seed, corpus_sha)
        _run_ray(archs, trains, probes, out, common, asked_device, threads, engine, show)
        return out
    if threads is None and device.type == "cpu":
        threads = 1
    default_workers = _default_workers(archs, device)
    tasks = [
        Task(
            name=arch.name,
            model=arch.name,
            fn=_local_model_task,
            args=(arch, str(out), seed, corpus_sha, train, probe, str(device), threads),
            units=arch.steps,
            cost=_cost(arch),
            reports=True,
        )
        for arch, train, probe in zip(archs, trains, probes)
    ]
    failures = run_tasks(
        tasks,
        engine,
        lambda task, value: None,  # local workers write into `out` themselves
        title="mini-suite",
        show=show,
        default_workers=default_workers,
    )
    raise_failures(failures, len(tasks))
    return out


# below this total cost (see _cost; the "tiny" preset is ~8e7, "fast" ~2e11) starting worker
# processes (seconds each: torch and transformers are imported anew) costs more than it saves
_PARALLEL_MIN_COST = 1e10


def _default_workers(archs: Sequence[MiniArch], device: torch.device) -> int:
    """Local processes when `workers` is None: 1 on a GPU or for a sweep too small to repay
    starting processes, else one per CPU core (at most one per model)."""
    if device.type != "cpu" or sum(_cost(a) for a in archs) < _PARALLEL_MIN_COST:
        return 1
    return min(available_cpus(), len(archs))


def _cost(arch: MiniArch) -> float:
    """Relative training cost (multiply-adds per step), so that the largest models start first."""
    per_token = arch.L * arch.d * arch.d * (4 + 2 * arch.mlp_ratio) + arch.d * VOCAB
    return float(arch.steps * arch.batch * arch.seq_len * per_token)


def _run_ray(archs, trains, probes, out: Path, common, device, threads, engine, show) -> None:
    """One Ray task per unfinished model; this process writes the architecture rows first,
    then each model's task files as the model arrives."""
    seed, corpus_sha = common
    extra = {"seed": seed, "corpus_sha256": corpus_sha}
    rows = [_arch_row(a, count_params(a), extra) for a in archs]
    write_architectures(out, pd.DataFrame(rows))
    tasks = []
    for arch, train, probe in zip(archs, trains, probes):
        done = [s for s in arch.checkpoints() if task_done(out, arch.name, s)]
        if len(done) == len(arch.checkpoints()):
            continue
        args = (arch, seed, corpus_sha, train, probe, device, threads, done)
        tasks.append(
            Task(arch.name, arch.name, _model_task, args, units=arch.steps, cost=_cost(arch))
        )

    def write(task: Task, results) -> None:
        for frame, provenance in results:
            write_task(out, frame, provenance)

    failures = run_tasks(tasks, engine, write, title="mini-suite", show=show)
    raise_failures(failures, len(tasks))


__all__ = [
    "MINI_PRESETS",
    "MiniArch",
    "build_model",
    "load_corpus",
    "probe_set",
    "split_corpus",
    "train_mini_suite",
]
