"""The command line resolves once into the pipeline's typed settings (no argparse below run.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from massact import run as massact_run
from massact.pipeline import STAGES, RunSettings, SourceSettings
from massact.sources import MINI_PRESETS


def _resolve(argv: list[str], stages=STAGES) -> RunSettings:
    args = massact_run.build_parser().parse_args(argv)
    return massact_run.resolve(args, stages)


def test_cli_presets_are_the_mini_suite_presets():
    assert massact_run.PRESETS == tuple(MINI_PRESETS)


def test_fast_resolves_to_mini_fast_settings():
    s = _resolve(["--fast", "--seed", "3", "--no-progress"])
    assert s == RunSettings(
        source=SourceSettings(source="mini", preset="fast", progress=False),
        out=Path("massact_results/mini-fast"),
        seed=3,
        stages=STAGES,
    )
    assert s.title() == "massact report: mini (fast)"


def test_archive_path_and_pythia_steps_resolve():
    s = _resolve(["--source", "archive", "some/folder", "--out", "o"])
    assert s.source.source == "archive" and s.source.preset is None
    assert s.source.archive == Path("some/folder")
    argv = ["--source", "pythia", "--models", "14m,EleutherAI/pythia-70m", "--steps", "0,1000"]
    p = _resolve([*argv, "--text", "t.txt"])
    assert p.source.steps == {"14m": [0, 1000], "70m": [0, 1000]}


def test_pythia_needs_text_only_when_extracting():
    with pytest.raises(massact_run.UsageError, match="needs --text"):
        _resolve(["--source", "pythia"])
    assert _resolve(["--source", "pythia"], stages=("fit",)).stages == ("fit",)


def test_stages_keep_pipeline_order():
    assert _resolve(["--fast"], stages=("report", "fit")).stages == ("fit", "report")
