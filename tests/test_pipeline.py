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


def _tiny_dataset(root: Path, n_models: int = 2, L: int = 3) -> None:
    """A small dataset written through the real writer: log-increase ratios over 12 steps."""
    import numpy as np
    import pandas as pd

    from massact.dataset import write_task

    for m in range(n_models):
        for step in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000):
            layer = np.arange(L)
            top1 = 5.0 + (m + 1) * (layer + 1) * np.log1p(step)
            rows = pd.DataFrame(
                {"suite": "s", "model": f"m{m}", "step": step, "layer": layer, "sample": 0,
                 "top1": top1, "median": 1.0, "ratio": top1}
            )  # fmt: skip
            write_task(root, rows, {"source": "mini"})


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_library_still_stops_the_run(tmp_path, monkeypatch, capsys):
    import gc
    import signal

    import massact.curves

    _tiny_dataset(tmp_path / "dataset")
    real_fit = massact.curves.fit_trajectories
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job

    def fit_hit_by_ctrl_c(*args, **kwargs):
        def callback(phase, info):  # as JAX's GC hook: an exception here is only reported
            gc.callbacks.remove(callback)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

        gc.callbacks.append(callback)
        gc.collect()
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(massact.curves, "fit_trajectories", fit_hit_by_ctrl_c)
    code = massact_run.main(["--out", str(tmp_path), "--no-progress"], stages=("fit",))
    assert code == 130
    assert "interrupted; finished work is kept in" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("not a folder")
    assert massact_run.main(["--fast", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "finished work" not in err


def test_failed_preflight_creates_no_out_folder(tmp_path, capsys):
    out = tmp_path / "never"
    argv = ["--source", "archive", str(tmp_path / "missing"), "--out", str(out)]
    assert massact_run.main(argv) == 1
    assert not out.exists()
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "finished work" not in err


def test_provenance_records_the_fit_settings(tmp_path):
    import json

    from massact.curves import FitSettings

    _tiny_dataset(tmp_path / "dataset")
    argv = ["--out", str(tmp_path), "--no-progress"]
    assert massact_run.main(argv, stages=("fit", "hypotheses", "report")) == 0
    prov = json.loads((tmp_path / "provenance.json").read_text())
    recorded, default = prov["fit_settings"], json.loads(json.dumps(FitSettings().as_dict()))
    assert recorded.keys() == default.keys()
    resolved = [k for k, v in default.items() if v is None]  # None: recorded as the value used
    assert {k: v for k, v in recorded.items() if k not in resolved} == {
        k: v for k, v in default.items() if k not in resolved
    }
    assert {"chunk_size", "workers"} <= set(resolved)
    assert all(isinstance(recorded[k], int) and recorded[k] >= 1 for k in resolved)


def test_quiet_and_verbose_set_what_is_shown(tmp_path, capsys):
    _tiny_dataset(tmp_path / "dataset")
    argv = ["--out", str(tmp_path), "--no-progress"]
    assert massact_run.main(argv, stages=("fit",)) == 0
    assert "massact: [2] fit done in" in capsys.readouterr().out
    assert massact_run.main([*argv, "-q"], stages=("fit",)) == 0
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        massact_run.main([*argv, "-q", "-v"], stages=("fit",))  # one or the other
    assert "not allowed with" in capsys.readouterr().err


def test_sweeps_without_bars_log_progress_lines(caplog):
    import logging

    from massact.sources._engine import _Progress

    caplog.set_level(logging.INFO, logger="massact.engine")
    with _Progress("sweep", {"a": 2, "b": 2}, show=False, every_s=0.0) as progress:
        for model in ("a", "a", "b", "b"):
            progress.advance(model, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("sweep: 1/4 (25%), ETA ") and lines[0].endswith("(a 1/2, b 0/2)")
    assert lines[-1] == "sweep: 4/4 (100%) (a 2/2, b 2/2)"
    caplog.clear()
    with _Progress("quiet", {"a": 100}, show=False, every_s=3600.0) as progress:
        for _ in range(100):
            progress.advance("a", 1)
    assert [r.getMessage() for r in caplog.records] == ["quiet: 100/100 (100%)"]  # the end only


def test_hypotheses_output_carries_a_status_per_fit(tmp_path):
    import pandas as pd

    from massact.curves import FitStatus

    _tiny_dataset(tmp_path / "dataset")
    assert massact_run.main(["--out", str(tmp_path), "-q"], stages=("hypotheses",)) == 0
    hyp = pd.read_parquet(tmp_path / "hypotheses.parquet")
    assert set(hyp["status"]) <= {s.label for s in FitStatus} and len(hyp) > 0
