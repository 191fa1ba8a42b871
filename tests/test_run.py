"""`python -m massact.run` and the `massact` CLI end to end: the mini-suite "tiny" preset,
resume, argument errors, `predict` on a config, and the archive source on a built archive."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from massact import cli
from massact import run as massact_run


@pytest.fixture(scope="module", autouse=True)
def _no_jax_disk_cache():
    """Keep tests off the user's ~/.cache (the run enables a persistent JAX cache there)."""
    old = os.environ.get("MASSACT_JAX_CACHE")
    os.environ["MASSACT_JAX_CACHE"] = "off"
    yield
    if old is None:
        del os.environ["MASSACT_JAX_CACHE"]
    else:
        os.environ["MASSACT_JAX_CACHE"] = old


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "results"
    argv = ["--source", "mini", "--preset", "tiny", "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    assert massact_run.main(argv) == 0
    return out, argv, time.perf_counter() - start


def _finite_table(path) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0)
    values = frame.select_dtypes("number").to_numpy(float)
    assert values.size and np.isfinite(values).all(), path
    return frame


def test_tiny_run_writes_report(tiny_run):
    out, _, _ = tiny_run
    text = (out / "report.md").read_text()
    for caption in ("Table 1.", "Table 2.", "Fig. 2", "Fig. 8"):
        assert caption in text, caption
    t1 = _finite_table(out / "tables" / "table1_fit_r2.csv")
    assert t1.loc["all", "fitted"] > 0
    _finite_table(out / "tables" / "table2_variability.csv")
    r2 = _finite_table(out / "tables" / "table5_r2.csv")
    assert "eq9" in r2.index and "Table 5a." in text
    # 5 layers in all: too few curves to train regressors; the report says so
    assert "prediction stage skipped" in text
    pngs = sorted((out / "figures").glob("*.png"))
    names = " ".join(p.name for p in pngs)
    for fig in ("fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8"):
        assert fig in names, fig
    assert all(p.stat().st_size > 5000 for p in pngs)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    fits = pd.read_parquet(out / "fits.parquet")
    assert np.isfinite(fits.loc[fits["status"] == 0, "r2"]).all()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["source"] == "mini"
    assert set(prov["stage_seconds"]) >= {"extract", "load", "fit", "predict"}
    assert "torch" in prov["versions"] and prov["device"]


def test_rerun_resumes_without_extracting(tiny_run, capsys):
    out, argv, _ = tiny_run
    tasks = sorted((out / "dataset" / "stats").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in tasks}
    assert massact_run.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in tasks} == before  # nothing re-extracted
    prov = json.loads((out / "provenance.json").read_text())
    first = capsys.readouterr().out
    assert "stage times:" in first and str(out / "report.md") in first
    # the extract stage only checked the manifest
    assert prov["stage_seconds"]["extract"] < 5.0


def test_stage_subcommands(tiny_run, capsys):
    out, argv, _ = tiny_run
    report_time = (out / "report.md").stat().st_mtime_ns
    fits_time = (out / "fits.parquet").stat().st_mtime_ns
    assert cli.main(["extract", *argv]) == 0  # nothing left to extract
    assert (out / "fits.parquet").stat().st_mtime_ns == fits_time
    assert cli.main(["fit", *argv]) == 0
    assert (out / "fits.parquet").stat().st_mtime_ns > fits_time
    assert (out / "hypotheses.parquet").exists()
    assert (out / "report.md").stat().st_mtime_ns == report_time  # fit does not report
    printed = capsys.readouterr().out
    assert "[1] extract done" in printed and "fit done" in printed


def test_predict_from_config_after_run(archive_run, tmp_path, capsys):
    out = archive_run
    config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "num_hidden_layers": 5,
        "hidden_size": 96,
        "num_attention_heads": 3,
        "intermediate_size": 384,
        "rotary_pct": 0.25,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    csv = tmp_path / "pred.csv"
    code = cli.main(
        ["predict", "--config", str(path), "--predictor", str(out), "--horizon", "1000",
         "--csv", str(csv)]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(csv)
    assert len(table) == 5  # one row per layer
    assert np.isfinite(table[["A", "lam", "gamma", "t0", "K"]].to_numpy(float)).all()
    assert "| " in capsys.readouterr().out
    # the same architecture on the command line gives the same numbers
    csv2 = tmp_path / "pred2.csv"
    argv = ["predict", "--L", "5", "--d", "96", "--H", "3", "--d-ff", "384"]
    assert cli.main([*argv, "--predictor", str(out), "--horizon", "1000", "--csv", str(csv2)]) == 0
    cols = ["A", "lam", "gamma", "t0", "K"]
    np.testing.assert_allclose(pd.read_csv(csv2)[cols], table[cols], rtol=1e-12)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "bogus"], "invalid choice"),
        (["--fast", "--source", "pythia"], "cannot be combined"),
        (["--source", "archive"], "needs a PATH"),
        (["--models", "14m"], "applies to --source pythia"),
        (["--source", "pythia", "--steps", "every:0"], "every:K"),
        (["--source", "pythia", "--steps", "3,5"], "not in the Pythia checkpoint schedule"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        massact_run.main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_archive_is_one_line_error(tmp_path, capsys):
    code = massact_run.main(
        ["--source", "archive", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("massact: error: archive")
    assert "no such file" in err


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["predict", "--L", "4"])
    assert err.value.code == 2 and "missing" in capsys.readouterr().err
    code = cli.main(["predict", "--L", "4", "--d", "8", "--H", "2", "--predictor", str(tmp_path)])
    assert code == 1 and capsys.readouterr().err.startswith("massact: error: predictor")
    assert cli.main(["report", "--out", str(tmp_path / "empty")]) == 1
    assert "no dataset" in capsys.readouterr().err


def test_module_entry_points_exit_codes(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    bad = subprocess.run(
        [sys.executable, "-m", "massact.run", "--preset", "huge"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "massact", "--help"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert helped.returncode == 0
    for sub in ("run", "extract", "fit", "predict", "report"):
        assert sub in helped.stdout


# ----------------------------------------------------------------------------- archive source

ARCHIVE_STEPS = [0, 1, 4, 16, 64, 256, 1000, 4000, 16000, 64000, 143000]


def _build_archive(root, rng) -> None:
    """Three Pythia sizes in the released layout: [10 seqs][top1, top2, top3, median][L]."""
    for size, depth in (("14m", 6), ("31m", 6), ("70m", 6)):
        folder = root / f"pythia_{size}" / "stats"
        folder.mkdir(parents=True)
        for step in ARCHIVE_STEPS:
            x = 1e-3 * step + 1.0
            seqs = []
            for _ in range(10):
                median = 0.3 + 0.01 * rng.random(depth)
                mid = np.array([1.0 if 0 < layer < depth - 1 else 0.3 for layer in range(depth)])
                ratio = 3 + mid * 8 * math.exp(-0.1 * x) * math.log(x) + 0.05 * rng.random(depth)
                top1 = ratio * median
                seqs.append(
                    [top1.tolist(), (0.8 * top1).tolist(), (0.6 * top1).tolist(), median.tolist()]
                )
            (folder / f"exp2_pythia_{size}_step{step}").write_text(repr(seqs))
    # the published archive has a malformed file: the run goes on and reports it
    (root / "pythia_14m" / "stats" / "exp2_pythia_14m_step2").write_text("[[1.0, 2.0")


@pytest.fixture(scope="module")
def archive_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archive")
    _build_archive(tmp / "archive", np.random.default_rng(0))
    out = tmp / "results"
    assert massact_run.main(["--source", "archive", str(tmp / "archive"), "--out", str(out)]) == 0
    return out


def test_archive_source_end_to_end(archive_run):
    out = archive_run
    text = (out / "report.md").read_text()
    assert "exp2_pythia_14m_step2" in text  # the skipped file is named in the report
    t1 = _finite_table(out / "tables" / "table1_fit_r2.csv")
    assert list(t1.index) == ["pythia-14m", "pythia-31m", "pythia-70m", "all"]
    assert t1.loc["all", "layers"] == 18
    assert (t1["mean R²"] > 0.9).all()
    for split in ("random_split", "model_split"):
        table3 = _finite_table(out / "tables" / f"table3_{split}_r2.csv")
        assert list(table3.index) == ["A", "lam", "gamma", "t0", "K"]
        assert "XGBoost" in table3.columns
    assert "Table 3 (R2, test set)" in text


def test_pythia_without_network_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    text = tmp_path / "corpus.txt"
    text.write_text("some text " * 200)
    argv = ["--source", "pythia", "--models", "14m", "--steps", "0,1", "--text", str(text)]
    code = massact_run.main([*argv, "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("massact: error: ")
    assert "HF_HUB_OFFLINE" in err
