"""Report and figures on a constructed dataset whose curves are known (Eq. 9 plus noise).

The dataset goes through the real writer/loader (massact.dataset._load) and the real fitter, so
what the report shows is what the pipeline would show.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from massact import dataset as _dataset
from massact.curves._formulas import curve
from massact.report import _document, _figures, _tables, base_provenance

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 6000, 8000, 10000]
# model -> (L, d, H, d_ff, n_params)
ARCHS = {
    "m-a": (3, 32, 2, 128, 40_000),
    "m-b": (4, 64, 4, 256, 200_000),
    "m-c": (6, 64, 2, 128, 300_000),
}
N_SAMPLES = 4


def _params(scale: float, layer: int, depth: int) -> np.ndarray:
    """(A, lam, gamma, t0, K): middle layers 'log increase', edge layers an early peak."""
    edge = layer in (0, depth - 1)
    lam = 0.8 if edge else 0.01
    return np.array([4.0 * scale, lam, 2e-3, 1.0, 3.0 + layer])


def build_dataset(root, seed: int = 0, archs: dict | None = None) -> None:
    """The dataset of `archs` (model -> (L, d, H, d_ff, n_params); default ARCHS); the i-th
    model's A is 4 (i + 1)."""
    rng = np.random.default_rng(seed)
    arch_rows = []
    for i, (model, (L, d, H, d_ff, n_params)) in enumerate((archs or ARCHS).items()):
        arch_rows.append(
            {"suite": "synthetic", "model": model, "L": L, "d": d, "H": H, "d_ff": d_ff,
             "rotary_pct": 0.25, "rotary_base": 10000.0, "n_params": n_params,
             "max_step": STEPS[-1]}
        )  # fmt: skip
        for step in STEPS:
            rows = []
            for layer in range(L):
                ratio = curve(np.array([float(step)]), _params(i + 1.0, layer, L)[None])[0, 0]
                for sample in range(N_SAMPLES):
                    median = 0.5 + 0.1 * sample
                    r = ratio * (1 + 0.02 * rng.standard_normal())
                    top1 = r * median
                    rows.append(
                        {"suite": "synthetic", "model": model, "step": step, "layer": layer,
                         "sample": sample, "top1": top1, "top2": 0.8 * top1, "top3": 0.6 * top1,
                         "median": median}
                    )  # fmt: skip
            _dataset.write_task(root, pd.DataFrame(rows), {"source": "mini"})
    _dataset.write_architectures(root, pd.DataFrame(arch_rows))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from massact.curves._fit import fit_trajectories
    from massact.curves._hypotheses import fit_hypotheses

    out = tmp_path_factory.mktemp("report")
    build_dataset(out / "dataset")
    dataset = _dataset.load_dataset(out / "dataset")
    traj = _dataset.load_trajectories(dataset)
    fit = fit_trajectories(traj.t, traj.y, traj.mask)
    hyp = fit_hypotheses(traj.t, traj.y, traj.mask, fit=fit)
    return out, dataset, traj, fit, hyp


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def test_markdown_table_renders_bold_and_nan():
    frame = pd.DataFrame({"x": [1.0, np.nan], "y|z": [0.5, 2.0]}, index=pd.Index(["a", "b"]))
    frame.index.name = "row"
    bold = pd.DataFrame([[True, False], [False, True]], index=frame.index, columns=frame.columns)
    text = _tables.markdown_table(frame, floatfmt=".2f", bold=bold)
    assert text.splitlines() == [
        "| row | x | y|z |",
        "|---|---|---|",
        "| a | **1.00** | 0.50 |",
        "| b | – | **2.00** |",
    ]


def test_table3_pivots_a_predictor_table():
    """Parameters in Eq. 9 order, models in the table's order, the transform first; the same
    pivot as Predictor.table."""
    from massact.predict import metric_table

    frame = pd.DataFrame(
        {"param": ["K", "K", "A", "A"], "transform": ["yeo-johnson"] * 2 + ["log1p"] * 2,
         "model": ["XGBoost", "Ridge"] * 2, "r2": [0.9, 0.5, 0.7, np.nan]}
    )  # fmt: skip
    wide = _tables.table3(frame, "r2")
    assert list(wide.index) == ["A", "K"] and wide.index.name == "parameter"
    assert list(wide.columns) == ["transform", "XGBoost", "Ridge"]
    assert list(wide["transform"]) == ["log1p", "yeo-johnson"]
    assert wide.loc["K", "Ridge"] == 0.5 and np.isnan(wide.loc["A", "Ridge"])
    pd.testing.assert_frame_equal(
        wide.drop(columns="transform"), metric_table(frame, "r2"), check_names=False
    )
    with pytest.raises(StopIteration):
        _tables.table3(frame, "mae")


def test_t_peak_grid_matches_numeric_argmax():
    lam, gamma, t0 = np.array([0.3, 1.5]), np.array([1e-3]), 1.0
    tp = _figures.t_peak_grid(lam, gamma, t0)
    t = np.linspace(0, 20000, 400_001)
    for j, l in enumerate(lam):
        y = curve(t, np.array([[1.0, l, gamma[0], t0, 0.0]]))[0]
        assert tp[0, j] == pytest.approx(t[np.argmax(y)], abs=0.1)
    # large lam: the peak lies before t = 0 (x_peak < t0) and is masked
    assert np.isnan(_figures.t_peak_grid(np.array([50.0]), gamma, 1.5)).all()


def test_tables_hold_the_known_structure(pipeline):
    out, dataset, traj, fit, _ = pipeline
    t1 = _tables.table1(traj, fit)
    assert list(t1.index) == ["m-a", "m-b", "m-c", "all"]  # ordered by n_params
    assert (t1["fitted"] == t1["layers"]).all()
    assert (t1["mean R²"] > 0.95).all()  # Eq. 9 data with 2% noise
    t2 = _tables.table2(dataset)
    assert np.isfinite(t2[["CV%", "SEM%", "95% CI ±%"]].to_numpy()).all()
    # per-sample noise is 2% of the ratio: the CV is close to 2%
    assert t2["CV%"].between(1.0, 3.5).all()


def test_table5_prefers_eq9(pipeline):
    _, _, traj, _, hyp = pipeline
    r2, aic = _tables.table5(hyp, traj)
    assert {"eq9", "step1"} <= set(r2.index)
    assert list(r2.columns) == ["m-a", "m-b", "m-c", "all"]
    assert r2.loc["eq9", "all"] > r2.loc["step1", "all"]  # the paper's Table 5 ordering
    assert aic.loc["eq9", "all"] < aic.loc["step1", "all"]


def test_peak_table_finds_the_early_peak(pipeline):
    _, _, traj, _, _ = pipeline
    table = _figures.peak_table(traj)
    edge = table["layer"].isin([0]) | (table["layer"] == table["L"] - 1)
    # lam = 0.8 edge layers peak near step 480; lam = 0.01 middle layers after the last step
    # (where the curve is flat, 2% noise may move the observed peak one checkpoint back)
    assert (table.loc[edge, "peak_step"] <= 1000).all()
    assert (table.loc[~edge, "peak_step"] >= STEPS[-2]).all()


def test_write_report_without_predictor(pipeline):
    out, dataset, traj, fit, hyp = pipeline
    prov = base_provenance(seed=0, stage_seconds={"fit": 1.5, "report": 2.0})
    md = _document.write_report(out, dataset, traj, fit, hyp, None, prov)
    text = md.read_text()
    for caption in ("Table 1.", "Table 2.", "Fig. 2", "Fig. 8"):
        assert caption in text
    assert "Table 5a." in text
    assert "Table 3" not in text  # no predictor given
    assert all(math.isfinite(x) for x in _numbers(text))
    pngs = sorted((out / "figures").glob("*.png"))
    names = " ".join(p.name for p in pngs)
    for fig in ("fig2", "fig3", "fig5", "fig6", "fig7", "fig8"):
        assert fig in names, fig
    assert len([p for p in pngs if p.name.startswith("fig4")]) == 3  # one per model
    for path in pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    fits = pd.read_parquet(out / "fits.parquet")
    assert len(fits) == len(traj.keys) and {"model", "layer", "r2"} <= set(fits.columns)
    assert (out / "tables" / "table1_fit_r2.csv").exists()
    assert '"seed": 0' in (out / "provenance.json").read_text()


def test_provenance_names_the_cpu_kernels(monkeypatch):
    """The CPU kernel level and the settings that pin it: they decide a CPU run's rounding."""
    import torch

    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    kernels = base_provenance()["cpu_kernels"]
    assert kernels["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert kernels["MKL_CBWR"] == "AVX2" and "DNNL_MAX_CPU_ISA" not in kernels
