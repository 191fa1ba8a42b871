"""`python -m massact.run`: the whole pipeline, extract -> fit -> hypotheses -> predict -> report.

    python -m massact.run --fast                         # offline mini-suite, < 5 min on 2 cores
    python -m massact.run --preset standard              # 12 models for prediction, 30-50 min
    python -m massact.run --source archive PATH          # the paper's released statistics
    python -m massact.run --source pythia --models 14m,70m --steps paper --text corpus.txt
    python -m massact.run --source hf --repo allenai/OLMo-2-0425-1B --revisions every:10 \
        --text corpus.txt --engine ray --ray-address auto   # any checkpointed suite, on Ray
    python -m massact.run --source mini --preset full --out results/ --workers 4

Re-running with the same --out resumes: the sources skip (model, step) tasks already on disk;
the fitting, prediction and report stages are recomputed (seconds).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .pipeline import (
    ENGINES,
    SOURCES,
    STAGES,
    NotWritable,
    RunSettings,
    SourceSettings,
    configure_logging,
    has_finished_work,
    interrupt_guard,
    run_pipeline,
    say,
)

# the keys of massact.sources.MINI_PRESETS (a test checks), listed here so that --help
# does not import torch
PRESETS = ("tiny", "fast", "standard", "full")


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
    src.add_argument(
        "--repo",
        metavar="ORG/NAME",
        help="--source hf: Hugging Face repos whose revisions are checkpoints, comma separated",
    )
    src.add_argument(
        "--revisions",
        help="--source hf: all | every:K | a comma list of revision names or steps (all)",
    )
    src.add_argument(
        "--step-pattern",
        metavar="REGEX",
        help="--source hf: regex whose first group is the step in a revision name "
        "(default: step1000, stage1-step1000-tokens4B, ckpt_100, iter_500)",
    )
    src.add_argument("--suite", help="--source hf: suite name in the dataset (from the repo)")
    src.add_argument(
        "--text", metavar="PATH", help="checkpoint sweeps' inputs: text file/folder or HF id"
    )
    src.add_argument(
        "--local-root",
        metavar="DIR",
        help="checkpoints as save_pretrained folders <DIR>/pythia-<size>/step<N>/ (pythia) or "
        "<DIR>/<NAME>/<revision>/ (hf) instead of the Hub",
    )
    src.add_argument("--n-seqs", type=int, default=10, help="Pythia input sequences (10)")
    src.add_argument("--seq-len", type=int, default=2048, help="Pythia sequence length (2048)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="results folder (massact_results/<source>-...)")
    run.add_argument("--seed", type=int, default=0, help="random seed for every stage (0)")
    run.add_argument("--device", help="torch device for extraction (auto: cuda if present)")
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="where sweeps run: local (this machine) or ray (a Ray cluster; one task per "
        "model checkpoint, one per mini-suite model) (local)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="--engine ray: address of an existing cluster (e.g. auto, or ray://host:10001); "
        "default: a local Ray instance with this machine's CPUs and GPUs",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="local: processes (mini-suite default: one per CPU core; checkpoint sweeps: 1); "
        "ray: tasks in flight at most (default: as the cluster allows)",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (a progress line every ~30 s instead, as without a terminal)",
    )
    talk = run.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    talk.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
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


def resolve(args: argparse.Namespace, stages: Iterable[str] = STAGES) -> RunSettings:
    """Check the arguments and turn them into the pipeline's typed settings.

    Raises UsageError with a one-line message for a bad combination.
    """
    stages = tuple(s for s in STAGES if s in set(stages))
    source, preset = args.source, args.preset
    if args.fast:
        if source not in (None, "mini"):
            raise UsageError("--fast runs the mini-suite; it cannot be combined with --source")
        if preset not in (None, "fast"):
            raise UsageError("--fast is the 'fast' preset; drop --preset or --fast")
        source, preset = "mini", "fast"
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
    if source != "mini" and preset is not None:
        raise UsageError("--preset applies to --source mini")
    if source != "pythia":
        for flag, value in (("--models", args.models), ("--steps", args.steps)):
            if value is not None:
                raise UsageError(f"{flag} applies to --source pythia")
        if args.text is not None and source == "archive":
            raise UsageError("--text applies to --source pythia, hf or mini")
    if source != "hf":
        hf_flags = (
            ("--repo", args.repo),
            ("--revisions", args.revisions),
            ("--step-pattern", args.step_pattern),
            ("--suite", args.suite),
        )
        for flag, value in hf_flags:
            if value is not None:
                raise UsageError(f"{flag} applies to --source hf")
    if args.ray_address is not None and args.engine != "ray":
        raise UsageError("--ray-address goes with --engine ray")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if source == "archive" and (args.engine != "local" or args.workers is not None):
        raise UsageError("--engine and --workers apply to sweeps (--source mini, pythia or hf)")
    if args.n_seqs < 1 or args.seq_len < 2:
        raise UsageError("--n-seqs must be >= 1 and --seq-len >= 2")
    preset = preset or ("fast" if source == "mini" else None)
    out = args.out
    if out is None:
        repos = parse_repos(args.repo) if source == "hf" and args.repo else []
        hf_tag = f"hf-{repos[0].split('/')[-1]}" if repos else "hf"
        tags = {"mini": f"mini-{preset}", "pythia": "pythia", "hf": hf_tag, "archive": "archive"}
        out = os.path.join("massact_results", tags[source])
    if source not in ("pythia", "hf") and args.local_root is not None:
        raise UsageError("--local-root applies to --source pythia or hf")
    repos = parse_repos(args.repo) if args.repo is not None else []
    if source == "hf":
        check_step_pattern(args.step_pattern)
        check_revisions(args.revisions)
        if "extract" in stages and not repos:
            raise UsageError("--source hf needs --repo ORG/NAME (comma separated for several)")
        if "extract" in stages and args.text is None:
            raise UsageError("--source hf needs --text PATH (a text file/folder or an HF id)")
    steps: dict[str, list[int]] = {}
    if source == "pythia":
        spec = args.steps or "paper"
        for model in parse_models(args.models or "14m,70m"):  # checked before anything runs
            try:
                steps[model] = parse_steps(spec, model)
            except UsageError:
                raise
            except ValueError as exc:
                raise UsageError(f"--models/--steps: {exc}") from None
        if "extract" in stages and args.text is None:
            raise UsageError("--source pythia needs --text PATH (a text file/folder or an HF id)")
    return RunSettings(
        source=SourceSettings(
            source=source,
            preset=preset,
            archive=Path(archive) if archive is not None else None,
            text=args.text,
            steps=steps,
            local_root=args.local_root,
            n_seqs=args.n_seqs,
            seq_len=args.seq_len,
            device=args.device,
            progress=False if args.no_progress else None,
            repos=tuple(repos),
            revisions=args.revisions if source == "hf" else None,
            step_pattern=args.step_pattern,
            suite=args.suite,
            engine=args.engine,
            ray_address=args.ray_address,
            workers=args.workers,
        ),
        out=Path(out),
        seed=args.seed,
        stages=stages,
    )


def parse_repos(text: str) -> list[str]:
    """'org/a, org/b' -> ['org/a', 'org/b'], each checked to be a Hugging Face id."""
    repos = [r.strip() for r in text.split(",") if r.strip()]
    if not repos:
        raise UsageError(f"--repo: no repo in {text!r}")
    for repo in repos:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise UsageError(f"--repo {repo!r}: expected a Hugging Face id ORG/NAME")
    names = [r.split("/")[-1] for r in repos]
    if len(set(names)) != len(names):
        raise UsageError(f"--repo: two repos share a model name: {', '.join(repos)}")
    return repos


def check_step_pattern(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise UsageError(f"--step-pattern {pattern!r}: not a regular expression ({exc})") from None
    if groups < 1:
        raise UsageError(f"--step-pattern {pattern!r}: needs a group of digits, e.g. 'step(\\d+)'")


def check_revisions(spec: str | None) -> None:
    if spec is None:
        return
    from .sources import every_k

    try:
        k = every_k(spec, "--revisions")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if k is None and not [r for r in spec.split(",") if r.strip()]:
        raise UsageError("--revisions: give all, every:K or revision names")


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
    from .sources import PYTHIA_STEPS, every_k, every_kth, paper_steps

    schedule = [int(s) for s in PYTHIA_STEPS]
    spec = spec.strip().lower()
    if spec == "all":
        return schedule
    if spec == "paper":
        return [int(s) for s in paper_steps(model)]
    try:
        k = every_k(spec, "--steps")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if k is not None:
        return every_kth(schedule, k)
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


# --------------------------------------------------------------------------- running


EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, ImportError, KeyError)


def report_error(exc: BaseException, out: Path | None) -> int:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyError):
        msg = f"missing key {msg}"
    # a read-only results folder: re-running cannot help, so do not suggest it
    kept = out is not None and not isinstance(exc, NotWritable) and has_finished_work(out)
    where = f" (finished work is kept in {out}; re-run to resume)" if kept else ""
    print(f"massact: error: {msg}{where}", file=sys.stderr)
    return 1


def print_summary(state: dict[str, Any], out: Path) -> None:
    times, cpu = state["stage_seconds"], state["stage_cpu_seconds"]
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    say(
        f"stage times: {parts}; total {sum(times.values()):.1f} s wall, "
        f"{sum(cpu.values()):.1f} s CPU"
    )
    if "report" in state:
        say(f"report: {state['report']}  (HTML: {Path(state['report']).with_suffix('.html')})")
    else:
        say(f"results in {out}")


def main(argv: list[str] | None = None, *, stages: Iterable[str] = STAGES, prog=None) -> int:
    parser = build_parser(prog or "python -m massact.run")
    args = parser.parse_args(argv)
    return execute(parser, args, stages)


def execute(parser: argparse.ArgumentParser, args: argparse.Namespace, stages) -> int:
    configure_logging(1 if args.verbose else -1 if args.quiet else 0)
    try:
        settings = resolve(args, stages)
    except UsageError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    try:
        with interrupt_guard() as interrupted:
            state = run_pipeline(settings, interrupted=interrupted)
            interrupted.check()  # a Ctrl-C that a library swallowed still stops the run
    except KeyboardInterrupt:
        kept = (
            f"; finished work is kept in {settings.out}" if has_finished_work(settings.out) else ""
        )
        print(f"massact: interrupted{kept}", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if args.traceback:
            raise
        return report_error(exc, settings.out)
    print_summary(state, settings.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
