"""`python -m massact.run`: the whole pipeline, extract -> fit -> hypotheses -> predict -> report.

    python -m massact.run --fast                         # offline mini-suite, < 3 min on a CPU
    python -m massact.run --source archive PATH          # the paper's released statistics
    python -m massact.run --source pythia --models 14m,70m --steps paper --text corpus.txt
    python -m massact.run --source mini --preset full --out results/

Re-running with the same --out resumes: the sources skip (model, step) tasks already on disk;
the fitting, prediction and report stages are recomputed (seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

STAGES = ("extract", "fit", "hypotheses", "predict", "report")
SOURCES = ("mini", "pythia", "archive")
PRESETS = ("tiny", "fast", "full")


class UsageError(ValueError):
    """Bad combination of command-line arguments (exit status 2)."""


# --------------------------------------------------------------------------- arguments


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `python -m massact.run` and `massact run|extract|fit|report`."""
    src = parser.add_argument_group("source of the trajectories")
    src.add_argument(
        "--fast",
        action="store_true",
        help="the offline mini-suite 'fast' preset end to end (same as --source mini "
        "--preset fast)",
    )
    src.add_argument("--source", choices=SOURCES, help="where trajectories come from (mini)")
    src.add_argument(
        "path",
        nargs="?",
        help="archive folder for `--source archive PATH` (same as --archive PATH)",
    )
    src.add_argument("--archive", metavar="PATH", help="local copy of the released archive")
    src.add_argument("--preset", choices=PRESETS, help="mini-suite preset (fast)")
    src.add_argument("--models", help="Pythia sizes, comma separated, e.g. 14m,70m")
    src.add_argument(
        "--steps",
        help="Pythia checkpoints: all | every:K | paper | a comma list of steps (paper)",
    )
    src.add_argument("--text", metavar="PATH", help="Pythia inputs: text file/folder or HF id")
    src.add_argument(
        "--local-root",
        metavar="DIR",
        help="Pythia checkpoints as save_pretrained folders <DIR>/pythia-<size>/step<N>/ "
        "instead of the Hub",
    )
    src.add_argument("--n-seqs", type=int, default=10, help="Pythia input sequences (10)")
    src.add_argument("--seq-len", type=int, default=2048, help="Pythia sequence length (2048)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="results folder (massact_results/<source>-...)")
    run.add_argument("--seed", type=int, default=0, help="random seed for every stage (0)")
    run.add_argument("--device", help="torch device for extraction (auto: cuda if present)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--traceback", action="store_true", help="show the full traceback on errors")


def build_parser(prog: str = "python -m massact.run") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the massact pipeline: extract trajectories, fit Eq. 9, compare "
        "hypotheses, predict curve parameters from the architecture, write the report.",
        epilog="Re-running with the same --out resumes from finished work.",
    )
    add_run_arguments(parser)
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Check and complete the arguments; raises UsageError with a one-line message."""
    source = args.source
    if args.fast:
        if source not in (None, "mini"):
            raise UsageError("--fast runs the mini-suite; it cannot be combined with --source")
        if args.preset not in (None, "fast"):
            raise UsageError("--fast is the 'fast' preset; drop --preset or --fast")
        source, args.preset = "mini", "fast"
    archive = args.archive
    if args.path is not None:
        if archive is not None and archive != args.path:
            raise UsageError("give the archive path once (PATH or --archive PATH)")
        archive = args.path
        if source is None:
            source = "archive"
    if archive is not None and source is None:
        source = "archive"
    source = source or "mini"
    if source == "archive" and archive is None:
        raise UsageError("--source archive needs a PATH (e.g. --source archive ./pythia-ma)")
    if source != "archive" and archive is not None:
        raise UsageError(f"an archive PATH only goes with --source archive, not {source}")
    if source != "mini" and args.preset is not None:
        raise UsageError("--preset applies to --source mini")
    if source != "pythia":
        for flag, value in (("--models", args.models), ("--steps", args.steps)):
            if value is not None:
                raise UsageError(f"{flag} applies to --source pythia")
        if args.text is not None and source != "mini":
            raise UsageError("--text applies to --source pythia or mini")
    if args.n_seqs < 1 or args.seq_len < 2:
        raise UsageError("--n-seqs must be >= 1 and --seq-len >= 2")
    args.source, args.archive = source, archive
    args.preset = args.preset or ("fast" if source == "mini" else None)
    if args.out is None:
        tag = {"mini": f"mini-{args.preset}", "pythia": "pythia", "archive": "archive"}[source]
        args.out = os.path.join("massact_results", tag)
    args.out = Path(args.out)
    if source != "pythia" and args.local_root is not None:
        raise UsageError("--local-root applies to --source pythia")
    if source == "pythia":
        args.model_list = parse_models(args.models or "14m,70m")
        args.step_spec = args.steps or "paper"
        for model in args.model_list:  # check names and steps before anything runs
            try:
                parse_steps(args.step_spec, model)
            except UsageError:
                raise
            except ValueError as exc:
                raise UsageError(f"--models/--steps: {exc}") from None
    return args


def parse_models(text: str) -> list[str]:
    models = []
    for item in text.split(","):
        name = item.strip().lower().removeprefix("eleutherai/").removeprefix("pythia-")
        if not name:
            raise UsageError(f"--models: empty entry in {text!r}")
        models.append(name)
    return models


def parse_steps(spec: str, model: str) -> list[int]:
    """all | every:K | paper | comma list -> checkpoint steps of the Pythia schedule."""
    from .sources import PYTHIA_STEPS, paper_steps

    schedule = [int(s) for s in PYTHIA_STEPS]
    spec = spec.strip().lower()
    if spec == "all":
        return schedule
    if spec == "paper":
        return [int(s) for s in paper_steps(model)]
    if spec.startswith("every:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise UsageError(f"--steps {spec!r}: K in every:K must be a positive integer")
        picked = schedule[::k]
        return picked if picked[-1] == schedule[-1] else [*picked, schedule[-1]]
    try:
        steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UsageError(
            f"--steps {spec!r}: expected all, every:K, paper or a comma list of integers"
        ) from None
    bad = [s for s in steps if s not in set(schedule)]
    if bad or not steps:
        raise UsageError(f"--steps: {bad or spec} not in the Pythia checkpoint schedule")
    return steps


# --------------------------------------------------------------------------- stages


def _say(msg: str) -> None:
    print(f"massact: {msg}", flush=True)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def extract(args: argparse.Namespace) -> Path:
    """Run the source into `<out>/dataset`; finished tasks on disk are skipped."""
    root = args.out / "dataset"
    if args.source == "mini":
        from .sources import train_mini_suite

        corpus = None
        if args.text is not None:
            corpus = Path(args.text)
            if not corpus.exists():
                raise FileNotFoundError(f"--text {args.text}: no such file or folder")
        return Path(
            train_mini_suite(
                root,
                preset=args.preset,
                seed=args.seed,
                corpus=corpus,
                device=args.device,
                progress=_progress(args),
            )
        )
    if args.source == "archive":
        from .sources import ingest_archive

        if not Path(args.archive).exists():
            raise FileNotFoundError(f"archive {args.archive}: no such file or folder")
        return Path(ingest_archive(args.archive, root))
    from .sources import sweep_pythia

    if args.text is None:
        raise UsageError("--source pythia needs --text PATH (a text file/folder or an HF id)")
    steps = {m: parse_steps(args.step_spec, m) for m in args.model_list}
    for model in args.model_list:  # one call per model: the steps differ per size
        sweep_pythia(
            [model],
            steps[model],
            root,
            text=args.text,
            n_seqs=args.n_seqs,
            seq_len=args.seq_len,
            seed=args.seed,
            device=args.device,
            local_root=args.local_root,
        )
    return root


def _dataset_root(args: argparse.Namespace) -> Path:
    root = args.out / "dataset"
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


def run_pipeline(args: argparse.Namespace, stages: Iterable[str] = STAGES) -> dict[str, Any]:
    """Run the named stages in order; returns timings, paths and the stage results."""
    from .report import base_provenance

    stages = [s for s in STAGES if s in set(stages)]
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds: comparable on a loaded machine
    notes: list[str] = []
    state: dict[str, Any] = {"stage_seconds": times, "stage_cpu_seconds": cpu, "notes": notes}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        _say(f"[{len(times) + 1}] {name} ...")
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        times[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        _say(f"[{len(times)}] {name} done in {times[name]:.1f} s (CPU {cpu[name]:.1f} s)")
        return value

    args.out.mkdir(parents=True, exist_ok=True)
    if "extract" in stages:
        timed("extract", lambda: extract(args))
    if not set(stages) - {"extract"}:
        return state
    from .dataset import load_dataset, load_trajectories

    def load():
        dataset = load_dataset(_dataset_root(args))
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
        fit_frame(traj, fit).to_parquet(args.out / "fits.parquet", index=False)
        usable = int((fit.ok() & ~fit.degenerate).sum())
        _say(f"{usable}/{len(fit.r2)} curves with usable Eq. 9 parameters -> {args.out}")
    if {"hypotheses", "report"} & set(stages):
        from .curves import fit_hypotheses

        hyp = timed("hypotheses", lambda: fit_hypotheses(traj.t, traj.y, traj.mask, fit=fit))
        hyp.to_parquet(args.out / "hypotheses.parquet", index=False)
    if {"predict", "report"} & set(stages):
        predictor = timed("predict", lambda: predict_stage(args, traj, fit, notes))
    state.update(fit=fit, hyp=hyp, predictor=predictor)
    if "report" in stages:
        source = args.source
        if "extract" not in stages and "source" in dataset.provenance.columns:
            source = ",".join(sorted(set(dataset.provenance["source"].astype(str))))
        prov = base_provenance(
            source=source,
            preset=args.preset,
            seed=args.seed,
            dataset=str(dataset.root),
            notes=notes,
            stage_seconds=times,
            stage_cpu_seconds=cpu,
        )
        from .report import write_report

        state["report"] = timed(
            "report",
            lambda: write_report(
                args.out,
                dataset,
                traj,
                fit,
                hyp,
                predictor,
                prov,
                title=f"massact report: {args.source}"
                + (f" ({args.preset})" if args.preset else ""),
            ),
        )
    return state


def predict_stage(args: argparse.Namespace, traj, fit, notes: list[str]):
    """Train the architecture -> parameters regressors; save them and the suite's predictions.

    Too few fitted curves or architectures is not an error of the run: the stage is skipped
    with a note in the report.
    """
    from .predict import train_predictors

    ok = fit.ok() & ~fit.degenerate  # curves whose (A, lam, gamma, t0, K) are usable
    if traj.keys["model"].nunique() < 2:
        notes.append("prediction stage skipped: needs at least two architectures")
        _say(notes[-1])
        return None
    if int(ok.sum()) < 10:
        notes.append(
            f"prediction stage skipped: {int(ok.sum())} curves with usable Eq. 9 parameters "
            "(needs >= 10)"
        )
        _say(notes[-1])
        return None
    predictor = train_predictors(
        traj.keys,
        fit.params,
        fit.ok(),
        degenerate=fit.degenerate,
        seed=args.seed,
        out=args.out / "predictor",
    )
    arch = traj.keys.drop_duplicates("model").drop(columns=["layer"], errors="ignore")
    try:
        predictor.predict(arch).to_parquet(args.out / "predictions.parquet", index=False)
    except ValueError as exc:  # e.g. an architecture column the predictor needs is missing
        notes.append(f"predictions of the suite's own architectures skipped: {exc}")
    return predictor


EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, ImportError, KeyError)


def report_error(exc: BaseException, out: Path | None) -> int:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyError):
        msg = f"missing key {msg}"
    where = f" (finished work is kept in {out}; re-run to resume)" if out else ""
    print(f"massact: error: {msg}{where}", file=sys.stderr)
    return 1


def print_summary(state: dict[str, Any], out: Path) -> None:
    times, cpu = state["stage_seconds"], state["stage_cpu_seconds"]
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    _say(
        f"stage times: {parts}; total {sum(times.values()):.1f} s wall, "
        f"{sum(cpu.values()):.1f} s CPU"
    )
    if "report" in state:
        _say(f"report: {state['report']}  (HTML: {Path(state['report']).with_suffix('.html')})")
    else:
        _say(f"results in {out}")


def main(argv: list[str] | None = None, *, stages: Iterable[str] = STAGES, prog=None) -> int:
    parser = build_parser(prog or "python -m massact.run")
    args = parser.parse_args(argv)
    return execute(parser, args, stages)


def execute(parser: argparse.ArgumentParser, args: argparse.Namespace, stages) -> int:
    try:
        resolve(args)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    try:
        state = run_pipeline(args, stages)
    except KeyboardInterrupt:
        print(f"massact: interrupted; finished work is kept in {args.out}", file=sys.stderr)
        return 130
    except UsageError as exc:
        parser.error(str(exc))
    except EXPECTED_ERRORS as exc:
        if args.traceback:
            raise
        return report_error(exc, args.out)
    print_summary(state, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
