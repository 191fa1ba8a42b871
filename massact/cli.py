"""`massact` console script: one subcommand per stage.

massact run --fast                      # the whole pipeline (= python -m massact.run)
massact extract --source archive PATH   # only the source -> <out>/dataset
massact fit --out DIR                   # dataset -> fits.parquet (+ hypotheses.parquet)
massact report --out DIR                # fit, hypotheses, predict, report from a dataset
massact predict --config config.json --predictor massact_results/mini-fast
massact predict --L 12 --d 768 --H 12 --d-ff 3072 --horizon 143000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import run as _run

_STAGES = {
    "run": _run.STAGES,
    "extract": ("extract",),
    "fit": ("fit", "hypotheses"),
    "report": ("fit", "hypotheses", "predict", "report"),
}
_HELP = {
    "run": "the whole pipeline (same as python -m massact.run)",
    "extract": "only extract trajectories into <out>/dataset (resumes)",
    "fit": "fit Eq. 9 and the alternative hypotheses to an extracted dataset",
    "report": "fit, predict and write the report from an extracted dataset",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="massact",
        description="Measure, model and predict massive activations in transformers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in _HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _run.add_run_arguments(p)
    p = sub.add_parser(
        "predict",
        help="predict the per-layer curve of an architecture from a saved predictor",
        description="Predicted Eq. 9 parameters of every layer, steady state K, t_peak and "
        "whether a peak is expected within --horizon steps, from an earlier run's predictor.",
    )
    p.add_argument(
        "--config",
        metavar="CONFIG",
        help="a Hugging Face config.json or its folder (any decoder family transformers knows)",
    )
    p.add_argument("--L", type=int, help="number of layers")
    p.add_argument("--d", type=int, help="hidden size")
    p.add_argument("--H", type=int, help="attention heads")
    p.add_argument("--d-ff", type=int, dest="d_ff", help="MLP size (default 4d)")
    p.add_argument(
        "--predictor",
        metavar="PATH",
        default="massact_results/mini-fast",
        help="a results folder of an earlier run, or its predictor (massact_results/mini-fast)",
    )
    p.add_argument("--horizon", type=int, help="training steps: is a peak expected before?")
    p.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    p.add_argument("--traceback", action="store_true", help="full traceback on errors")
    return parser


def _predictor_path(path: Path) -> Path:
    """A results folder holds the predictor in `predictor/predictor.zip`; accept any level."""
    from .predict._store import resolve

    try:
        return resolve(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"predictor {path}: no saved predictor there (run `python -m massact.run --fast` "
            "first, or pass --predictor RESULTS_DIR of an earlier run)"
        ) from None


_SHOWN = ["layer", "A", "lam", "gamma", "t0", "K", "t_peak", "peak_value", "peak_expected"]


def _span(lo: float, hi: float) -> str:
    return f"{lo:.4g}" if lo == hi else f"{lo:.4g}..{hi:.4g}"


def extrapolation_warning(far) -> str:
    """One line naming each input outside the training range, asked vs trained."""
    parts = [
        f"{name} {_span(r.asked_min, r.asked_max)} (trained {_span(r.train_min, r.train_max)})"
        for name, r in far.iterrows()
    ]
    return (
        "massact: warning: this architecture lies outside the predictor's training range, so "
        "the predictions are extrapolations (see the extrapolated column): " + "; ".join(parts)
    )


def skill_table(skill):
    """The kept model's test R^2 per parameter, for printing beside a prediction."""
    frame = skill.rename(
        columns={
            "model": "kept model",
            "model_split_r2": "R² whole held-out models",
            "random_split_r2": "R² random layer split",
        }
    )
    frame.index.name = "parameter"
    return frame


def predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    dims = {"L": args.L, "d": args.d, "H": args.H, "d_ff": args.d_ff}
    if args.config is not None:
        if any(v is not None for v in dims.values()):
            parser.error("give either --config or --L/--d/--H/--d-ff, not both")
        config: str | dict = args.config
    else:
        missing = [f"--{k}" for k in ("L", "d", "H") if dims[k] is None]
        if missing:
            parser.error(f"give --config CONFIG or all of --L --d --H (missing {missing})")
        if dims["d_ff"] is None:
            dims["d_ff"] = 4 * dims["d"]
        if min(dims.values()) < 1:
            parser.error("--L, --d, --H and --d-ff must be positive")
        config = dims
    if args.horizon is not None and args.horizon < 1:
        parser.error("--horizon must be a positive number of steps")
    from .predict import Predictor, arch_from_config

    arch = arch_from_config(config)  # a bad config is reported before the predictor is read
    pred = Predictor.load(_predictor_path(Path(args.predictor)))
    table = pred.predict(arch, horizon=args.horizon)
    from .report import markdown_table

    far = pred.extrapolation(arch)
    if len(far):
        print(extrapolation_warning(far), file=sys.stderr)
    skill = pred.skill()
    weak = [p for p, r2 in skill["model_split_r2"].items() if not r2 > 0]
    if weak and skill["model_split_r2"].notna().any():
        print(
            "massact: warning: on whole held-out models this predictor's R² is <= 0 for "
            f"{', '.join(weak)}: for an unseen architecture it does no better than the training "
            "mean there",
            file=sys.stderr,
        )
    print("architecture: " + ", ".join(f"{k}={v:g}" for k, v in arch.items()))
    shown = table[[c for c in _SHOWN if c in table.columns]].copy()
    shown["extrapolated"] = table["extrapolated_features"].replace("", "none")
    print(markdown_table(shown.set_index("layer"), floatfmt=".4g"))
    print(
        "\nPredictor skill: test R² of the kept model per parameter, in the transformed "
        "standardised space (1 perfect, <= 0 no better than the training mean); the whole-model "
        "split is the honest score for an architecture it never saw."
    )
    print(markdown_table(skill_table(skill), floatfmt=".3f"))
    if args.csv:
        from .dataset import atomic_write_bytes

        atomic_write_bytes(Path(args.csv), table.to_csv(index=False).encode())
        print(f"massact: wrote {args.csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict":
        try:
            return predict(args, parser)
        except _run.EXPECTED_ERRORS as exc:
            if args.traceback:
                raise
            return _run.report_error(exc, None)
    return _run.execute(parser, args, _STAGES[args.command])


if __name__ == "__main__":
    sys.exit(main())
