"""The pipeline's stages in order: extract -> load -> fit -> hypotheses -> predict -> report.

Each stage takes explicit, typed settings (`SourceSettings`, `RunSettings`); the command lines
(`run.py`, `cli.py`) build them from their arguments once, at the top, and nothing here reads
argparse. Stage results are kept in the returned state dict; files go to `RunSettings.out`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("extract", "fit", "hypotheses", "predict", "report")
SOURCES = ("mini", "pythia", "hf", "archive")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class SourceSettings:
    """Where the trajectories come from and how to extract them.

    source: "mini" (train the built-in suite), "pythia" (sweep Pythia checkpoints), "hf" (sweep
    the checkpoint revisions of the Hugging Face repos `repos`, chosen by `revisions`: all |
    every:K | names, steps read by `step_pattern`) or "archive" (ingest the paper's released
    statistics from `archive`). `steps` maps each Pythia model to its checkpoint steps; `text`
    is the mini-suite corpus (optional) or the checkpoint sweeps' inputs.
    `engine`: "local" or "ray" (`ray_address`: an existing cluster, None = a local Ray);
    `workers`: local processes (None = the source's default) or Ray tasks in flight.
    `progress`: None = bars when attached to a terminal, False = none.
    """

    source: str = "mini"
    preset: str | None = "fast"
    archive: Path | None = None
    text: str | None = None
    steps: dict[str, list[int]] = field(default_factory=dict)
    repos: tuple[str, ...] = ()
    revisions: str | None = None
    step_pattern: str | None = None
    suite: str | None = None
    local_root: str | None = None
    n_seqs: int = 10
    seq_len: int = 2048
    device: str | None = None
    progress: bool | None = None
    engine: str = "local"
    ray_address: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """One run of the pipeline: the source, the results folder, the seed and the stages."""

    source: SourceSettings
    out: Path
    seed: int = 0
    stages: tuple[str, ...] = STAGES

    def title(self) -> str:
        preset = f" ({self.source.preset})" if self.source.preset else ""
        return f"massact report: {self.source.source}{preset}"


log = logging.getLogger("massact")


def say(msg: str) -> None:
    """A progress line of the pipeline (logger "massact", INFO; shown by the command lines)."""
    log.info(msg)


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure_logging(verbosity: int = 0) -> None:
    """Show massact's log lines as `massact: ...`: progress (INFO) on stdout, warnings and errors
    on stderr. verbosity: 0 = INFO, 1 or more = DEBUG, -1 or less = warnings only.
    Replaces the handlers an earlier call set (calling it twice does not print lines twice)."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    for handler in [h for h in log.handlers if getattr(h, "_massact", False)]:
        log.removeHandler(handler)
    out, err = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    out.addFilter(_Below(logging.WARNING))
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("massact: %(message)s"))
        handler._massact = True
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


class Interrupted:
    """Remembers a Ctrl-C even where a library swallowed its KeyboardInterrupt.

    The interrupt can land in a callback that Python only reports (e.g. JAX's garbage-collection
    hook), and the run would go on and exit 0; the pipeline checks this flag between stages.
    """

    def __init__(self) -> None:
        self.seen = False

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_guard() -> Iterator[Interrupted]:
    """SIGINT sets the returned flag, then raises KeyboardInterrupt as Python's default does."""
    flag = Interrupted()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return

    def on_sigint(signum, frame):
        flag.seen = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def has_finished_work(out: Path) -> bool:
    """Whether `out` holds work a re-run can resume from (an extracted dataset's manifest)."""
    try:
        return (Path(out) / "dataset" / "manifest.json").is_file()
    except OSError:
        return False


def preflight(settings: RunSettings) -> None:
    """Checks that need the file system, done before anything is created or run."""
    out, source = settings.out, settings.source
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    if "extract" not in settings.stages:
        return
    if source.source == "mini" and source.text is not None and not Path(source.text).exists():
        raise FileNotFoundError(f"--text {source.text}: no such file or folder")
    if source.source == "archive" and not Path(source.archive).exists():
        raise FileNotFoundError(f"archive {source.archive}: no such file or folder")


class NotWritable(PermissionError):
    """The results folder cannot be written (read-only folder or file system)."""


def check_writable(out: Path) -> None:
    """NotWritable, naming the folder, unless a file can be created in `out`.

    Checked before any stage runs: a read-only finished run fails at once, with nothing
    computed and nothing written, instead of after the fits at the first output file."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=out, prefix=".massact-write-check."):
            pass
    except OSError as err:
        raise NotWritable(
            f"results folder {out} is not writable ({err.strerror or err}): nothing was run or "
            "changed; to report a read-only run again, copy it to a writable folder and pass "
            "that as --out"
        ) from None


def extract(source: SourceSettings, root: Path, seed: int) -> Path:
    """Run the source into `root` (the dataset folder); finished tasks on disk are skipped."""
    engine = {
        "engine": source.engine,
        "workers": source.workers,
        "ray_address": source.ray_address,
        "progress": source.progress,
    }
    if source.source == "mini":
        from .sources import train_mini_suite

        corpus = Path(source.text) if source.text is not None else None
        return Path(
            train_mini_suite(
                root,
                preset=source.preset,
                seed=seed,
                corpus=corpus,
                device=source.device,
                **engine,
            )
        )
    if source.source == "archive":
        from .sources import ingest_archive

        return Path(ingest_archive(source.archive, root))
    sweep = {
        "text": source.text,
        "n_seqs": source.n_seqs,
        "seq_len": source.seq_len,
        "seed": seed,
        "device": source.device,
        "local_root": source.local_root,
        **engine,
    }
    if source.source == "hf":
        from .sources import sweep_hf_suite

        return Path(
            sweep_hf_suite(
                list(source.repos),
                source.revisions or "all",
                root,
                suite=source.suite,
                step_pattern=source.step_pattern,
                **sweep,
            )
        )
    from .sources import sweep_pythia

    # one sweep of every model (the steps differ per size): on Ray all tasks run at once
    return Path(sweep_pythia(list(source.steps), dict(source.steps), root, **sweep))


def dataset_root(out: Path) -> Path:
    """The dataset folder of a results folder; FileNotFoundError if nothing was extracted."""
    root = out / "dataset"
    if not (root / "manifest.json").exists():
        raise FileNotFoundError(
            f"no dataset at {root} (run `massact extract` or `python -m massact.run` first)"
        )
    return root


def enable_jax_cache() -> str | None:
    """Persist JAX compilations (the fits' jit) across runs: a re-run skips most compile time.

    Location: $MASSACT_JAX_CACHE, else $XDG_CACHE_HOME/massact/jax (~/.cache/...); "off"
    disables it. A directory the user already configured for JAX is kept.
    """
    import jax

    where = os.environ.get("MASSACT_JAX_CACHE")
    if where == "off" or jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "massact", "jax")
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:
        return None  # read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return where


def run_pipeline(settings: RunSettings, interrupted: Interrupted | None = None) -> dict[str, Any]:
    """Run the settings' stages in order; returns timings, paths and the stage results.

    `interrupted`: checked after every stage (see `Interrupted`).
    """
    from .report import base_provenance

    stages = [s for s in STAGES if s in set(settings.stages)]
    out = settings.out
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds: comparable on a loaded machine
    notes: list[str] = []
    state: dict[str, Any] = {"stage_seconds": times, "stage_cpu_seconds": cpu, "notes": notes}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        say(f"[{len(times) + 1}] {name} ...")
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        times[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        say(f"[{len(times)}] {name} done in {times[name]:.1f} s (CPU {cpu[name]:.1f} s)")
        if interrupted is not None:
            interrupted.check()
        return value

    preflight(settings)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out)
    if "extract" in stages:
        timed("extract", lambda: extract(settings.source, out / "dataset", settings.seed))
    if not set(stages) - {"extract"}:
        return state
    from .dataset import atomic_write_bytes, load_dataset, load_trajectories

    def load():
        dataset = load_dataset(dataset_root(out))
        return dataset, load_trajectories(dataset)

    dataset, traj = timed("load", load)
    state.update(dataset=dataset, traj=traj)
    if len(traj.keys) == 0:
        raise ValueError(f"the dataset at {dataset.root} holds no trajectories")
    fit = hyp = predictor = None
    if {"fit", "hypotheses", "predict", "report"} & set(stages):
        from .curves import fit_trajectories
        from .report import fit_frame

        enable_jax_cache()

        fit = timed("fit", lambda: fit_trajectories(traj.t, traj.y, traj.mask))
        atomic_write_bytes(out / "fits.parquet", fit_frame(traj, fit).to_parquet(index=False))
        usable = int((fit.ok() & ~fit.degenerate).sum())
        k_only = int(fit.usable()[:, -1].sum()) - usable
        say(
            f"{usable}/{len(fit.r2)} curves with usable Eq. 9 parameters, {k_only} more with K "
            f"alone -> {out}"
        )
    if {"hypotheses", "report"} & set(stages):
        from .curves import fit_hypotheses

        hyp = timed(
            "hypotheses", lambda: fit_hypotheses(traj.t, traj.y, traj.mask, fit=fit, status=True)
        )
        atomic_write_bytes(out / "hypotheses.parquet", hyp.to_parquet(index=False))
    if {"predict", "report"} & set(stages):
        predictor = timed(
            "predict", lambda: predict_stage(traj, fit, notes, seed=settings.seed, out=out)
        )
    state.update(fit=fit, hyp=hyp, predictor=predictor)
    if "report" in stages:
        source = settings.source.source
        if "extract" not in stages and "source" in dataset.provenance.columns:
            source = ",".join(sorted(set(dataset.provenance["source"].astype(str))))
        prov = base_provenance(
            source=source,
            preset=settings.source.preset,
            seed=settings.seed,
            dataset=str(dataset.root),
            notes=notes,
            stage_seconds=times,
            stage_cpu_seconds=cpu,
            fit_settings=fit.settings.as_dict() if fit is not None else None,
        )
        from .report import write_report

        state["report"] = timed(
            "report",
            lambda: write_report(
                out, dataset, traj, fit, hyp, predictor, prov, title=settings.title()
            ),
        )
    return state


def predict_stage(traj, fit, notes: list[str], *, seed: int, out: Path):
    """Train the architecture -> parameters regressors; save them and the suite's predictions.

    Too few fitted curves or architectures is not an error of the run: the stage is skipped
    with a note in the report.
    """
    from .predict import train_predictors

    # per curve and parameter: all five, or K alone where a degenerate fit fixes it
    usable = fit.usable()
    ok = usable.any(1)
    if traj.keys["model"].nunique() < 2:
        notes.append("prediction stage skipped: needs at least two architectures")
        say(notes[-1])
        return None
    if int(ok.sum()) < 10:
        notes.append(
            f"prediction stage skipped: {int(ok.sum())} curves with a usable Eq. 9 parameter "
            "(needs >= 10)"
        )
        say(notes[-1])
        return None
    predictor = train_predictors(
        traj.keys,
        fit.params,
        fit.ok(),
        degenerate=fit.degenerate,
        usable=usable,
        seed=seed,
        out=out / "predictor",
    )
    arch = traj.keys.drop_duplicates("model").drop(columns=["layer"], errors="ignore")
    from .dataset import atomic_write_bytes

    try:
        table = predictor.predict(arch)
    except ValueError as exc:  # e.g. an architecture column the predictor needs is missing
        notes.append(f"predictions of the suite's own architectures skipped: {exc}")
    else:
        atomic_write_bytes(out / "predictions.parquet", table.to_parquet(index=False))
    return predictor
