"""The dataset format: atomic task files + manifest, loader, trajectories, Table-2 variability."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from massact.dataset import (
    Dataset,
    add_note,
    frame_from_layer_stats,
    load_dataset,
    load_trajectories,
    task_done,
    task_path,
    variability_table,
    write_architectures,
    write_task,
)


def _task(model: str, step: int, top1: np.ndarray, median: np.ndarray, suite="s") -> pd.DataFrame:
    """Rows for [layers, samples] arrays of top1 and median (top2/top3 just below top1)."""
    L, n = top1.shape
    layer, sample = np.meshgrid(np.arange(L), np.arange(n), indexing="ij")
    return pd.DataFrame(
        {
            "suite": suite,
            "model": model,
            "step": step,
            "layer": layer.ravel(),
            "sample": sample.ravel(),
            "top1": top1.ravel(),
            "top2": top1.ravel() * 0.9,
            "top3": top1.ravel() * 0.8,
            "median": median.ravel(),
        }
    )


def _arch(models: list[str], L: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "suite": "s",
            "model": models,
            "L": L,
            "d": 16,
            "H": 2,
            "d_ff": 64,
            "rotary_pct": 0.25,
            "rotary_base": 1e4,
            "n_params": 1000,
            "max_step": 8,
        }
    )


@pytest.fixture
def small(tmp_path):
    """Two models: 'b' (2 layers, steps 0,1,2,4) and 'a' (3 layers, steps 0,2), 3 samples."""
    rng = np.random.default_rng(0)
    values = {}
    for model, L, steps in [("b", 2, [0, 1, 2, 4]), ("a", 3, [0, 2])]:
        for step in steps:
            top1 = rng.uniform(1, 10, (L, 3))
            median = rng.uniform(0.1, 1, (L, 3))
            values[model, step] = (top1, median)
            write_task(tmp_path, _task(model, step, top1, median), {"source": "mini"})
    write_architectures(tmp_path, _arch(["a", "b"], [3, 2]))
    return tmp_path, values


def test_roundtrip_schema_and_manifest(small):
    root, values = small
    ds = load_dataset(root)
    assert list(ds.stats.columns) == [
        "suite",
        "model",
        "step",
        "layer",
        "sample",
        "top1",
        "top2",
        "top3",
        "median",
        "ratio",
    ]
    for c in ["step", "layer", "sample"]:
        assert ds.stats[c].dtype == np.int64
    for c in ["top1", "median", "ratio"]:
        assert ds.stats[c].dtype == np.float64
    assert len(ds.stats) == 4 * 2 * 3 + 2 * 3 * 3
    # sorted by model, step, layer, sample
    keys = ds.stats[["model", "step", "layer", "sample"]].apply(tuple, axis=1).tolist()
    assert keys == sorted(keys)
    top1, median = values["b", 4]
    got = ds.stats.query("model == 'b' and step == 4")
    np.testing.assert_array_equal(got["top1"].to_numpy(), top1.ravel())
    np.testing.assert_array_equal(got["ratio"].to_numpy(), (top1 / median).ravel())
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == 1 and len(manifest["tasks"]) == 6
    entry = manifest["tasks"]["b/step4"]
    assert entry["file"] == "stats/b/step4.parquet" and entry["rows"] == 6
    assert len(ds.provenance) == 6
    assert set(ds.provenance["source"]) == {"mini"}
    assert (ds.provenance["duplicate_of"] == "").all()
    assert not list(root.rglob("*.tmp")), "temporary files left behind"


def test_provenance_columns_in_task_file(tmp_path):
    df = _task("m", 3, np.full((1, 2), 4.0), np.full((1, 2), 2.0))
    prov = {"source": "pythia", "revision": "step3", "commit": "abc", "extra_seed": 7}
    path = write_task(tmp_path, df, prov)
    raw = pd.read_parquet(path)
    assert (raw["revision"] == "step3").all() and (raw["extra_seed"] == 7).all()
    assert (raw["weights_sha256"] == "").all()
    ds = load_dataset(tmp_path)
    assert "revision" not in ds.stats.columns and "extra_seed" not in ds.stats.columns
    row = ds.provenance.iloc[0]
    assert row["commit"] == "abc" and row["extra_seed"] == 7 and row["step"] == 3


def test_task_done_and_rewrite(tmp_path):
    df = _task("m", 0, np.full((1, 2), 4.0), np.full((1, 2), 2.0))
    assert not task_done(tmp_path, "m", 0)
    write_task(tmp_path, df, {"source": "mini"})
    assert task_done(tmp_path, "m", 0) and not task_done(tmp_path, "m", 1)
    write_task(tmp_path, df.assign(top1=8.0), {"source": "mini"})  # a rewrite replaces
    assert load_dataset(tmp_path).stats["ratio"].tolist() == [4.0, 4.0]
    task_path(tmp_path, "m", 0).unlink()
    assert not task_done(tmp_path, "m", 0)
    ds = load_dataset(tmp_path)
    assert len(ds.stats) == 0 and any("missing" in n for n in ds.notes)


def test_corrupted_file_is_reported_not_loaded(small):
    root, _ = small
    path = task_path(root, "a", 2)
    path.write_bytes(path.read_bytes()[:-10])
    ds = load_dataset(root)
    assert set(ds.stats.query("model == 'a'")["step"]) == {0}
    assert any("a/step2" in n and "sha256" in n for n in ds.notes)


def test_trajectories_match_hand_computation(small):
    root, values = small
    tr = load_trajectories(root)
    # sorted by model then layer: a0, a1, a2, b0, b1
    assert tr.keys[["model", "layer"]].apply(tuple, axis=1).tolist() == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
    ]
    assert tr.t.shape == tr.y.shape == tr.mask.shape == (5, 4)
    assert tr.keys["L"].tolist() == [3, 3, 3, 2, 2]
    assert tr.keys["n_points"].tolist() == [2, 2, 2, 4, 4]
    for i, (model, layer) in enumerate(zip(tr.keys["model"], tr.keys["layer"])):
        steps = sorted(s for (m, s) in values if m == model)
        expect = [
            float(np.mean(values[model, s][0][layer] / values[model, s][1][layer])) for s in steps
        ]
        k = len(steps)
        np.testing.assert_allclose(tr.y[i, :k], expect, rtol=1e-12)
        assert tr.t[i, :k].tolist() == steps
        assert tr.mask[i].tolist() == [True] * k + [False] * (4 - k)
        assert np.isfinite(tr.t[i]).all() and np.isfinite(tr.y[i]).all()  # padding is finite
    # ratio of means and min_step
    rom = load_trajectories(root, stat="ratio_of_means", min_step=1)
    assert rom.keys["model"].tolist() == ["a"] * 3 + ["b"] * 2
    top1, median = values["b", 1]
    np.testing.assert_allclose(rom.y[3, 0], top1[0].mean() / median[0].mean(), rtol=1e-12)
    assert rom.t[3, :3].tolist() == [1, 2, 4]


def test_nonfinite_points_are_masked(tmp_path):
    for step, med in [(0, 1.0), (1, 0.0), (2, 2.0)]:  # median 0 -> ratio inf at step 1
        write_task(
            tmp_path, _task("m", step, np.full((1, 2), 4.0), np.full((1, 2), med)), {"source": "x"}
        )
    tr = load_trajectories(tmp_path)
    assert tr.mask[0].tolist() == [True, True, False]
    t, y = tr.series(0)
    assert t.tolist() == [0, 2] and y.tolist() == [4.0, 2.0]
    assert tr.keys["L"].isna().all()  # no architecture rows: NaN


def test_variability_matches_hand_computation(small):
    root, values = small
    table = variability_table(load_dataset(root))
    assert table["model"].tolist() == ["a", "b"]
    tq = sps.t.ppf(0.975, 2)
    for model in ["a", "b"]:
        cvs = []
        for (m, _), (top1, median) in values.items():
            if m != model:
                continue
            for layer in range(top1.shape[0]):
                r = list(top1[layer] / median[layer])
                cvs.append(100 * statistics.stdev(r) / statistics.mean(r))
        row = table.set_index("model").loc[model]
        assert row["n_groups"] == len(cvs) and row["n_samples"] == 3
        np.testing.assert_allclose(row["cv_pct"], np.mean(cvs), rtol=1e-12)
        np.testing.assert_allclose(row["sem_pct"], np.mean(cvs) / np.sqrt(3), rtol=1e-12)
        np.testing.assert_allclose(row["ci95_pct"], tq * np.mean(cvs) / np.sqrt(3), rtol=1e-12)


def test_frame_from_real_layer_stats(tmp_path):
    from massact.stats._dispatch import layer_stats

    torch.manual_seed(0)
    hs = [torch.randn(3, 5, 8) * (i + 1) for i in range(2)]  # [batch, S, d] per layer
    per_layer = [layer_stats(h, k=3, backend="torch") for h in hs]
    df = frame_from_layer_stats(per_layer, suite="s", model="m", step=2)
    write_task(tmp_path, df, {"source": "mini"})
    got = load_dataset(tmp_path).stats
    for layer, h in enumerate(hs):
        flat = h.abs().reshape(3, -1)
        rows = got[got["layer"] == layer]
        top = torch.tensor(rows[["top1", "top2", "top3"]].to_numpy()).float()
        assert torch.equal(top, flat.topk(3, dim=1).values)
        med = torch.tensor(rows["median"].to_numpy()).float()
        assert torch.equal(med, flat.median(dim=1).values)


def test_architectures_upsert(tmp_path):
    write_architectures(tmp_path, _arch(["a", "b"], [3, 2]))
    write_architectures(tmp_path, _arch(["b", "c"], [5, 7]))
    arch = pd.read_parquet(tmp_path / "architectures.parquet")
    assert arch["model"].tolist() == ["a", "b", "c"] and arch["L"].tolist() == [3, 5, 7]
    assert arch["n_params"].dtype == np.int64


def test_notes_are_deduplicated(tmp_path):
    add_note(tmp_path, "skipped x: bad")
    add_note(tmp_path, "skipped x: bad")
    add_note(tmp_path, "skipped y:\n  bad")
    assert (tmp_path / "report_lines.txt").read_text() == "skipped x: bad\nskipped y: bad\n"


def test_in_memory_dataset_works(small):
    root, _ = small
    ds = load_dataset(root)
    mem = Dataset(None, ds.stats, ds.architectures, ds.provenance, [])
    np.testing.assert_array_equal(load_trajectories(mem).y, load_trajectories(root).y)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.drop(columns="median"), "missing columns"),
        (lambda d: d.assign(step=[0, 1]), "one step"),
        (lambda d: d.assign(model="bad/name"), "folder name"),
        (lambda d: d.assign(layer=0, sample=0), "duplicate"),
        (lambda d: d.assign(ratio=99.0), "ratio != top1/median"),
        (lambda d: d.iloc[:0], "no rows"),
        (lambda d: d.assign(step=-1), "step must be >= 0"),
    ],
    ids=["no-median", "two-steps", "bad-name", "dup-rows", "bad-ratio", "empty", "neg-step"],
)
def test_write_task_rejects_bad_stats(tmp_path, change, match):
    df = _task("m", 0, np.full((1, 2), 4.0), np.full((1, 2), 2.0))
    with pytest.raises(ValueError, match=match):
        write_task(tmp_path, change(df), {"source": "mini"})


def test_bad_input_errors(tmp_path):
    df = _task("m", 0, np.full((1, 2), 4.0), np.full((1, 2), 2.0))
    with pytest.raises(ValueError, match="source"):
        write_task(tmp_path, df, {"revision": "x"})
    with pytest.raises(TypeError, match="DataFrame"):
        write_task(tmp_path, df.to_dict(), {"source": "mini"})
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="missing columns"):
        write_architectures(tmp_path, _arch(["a"], [1]).drop(columns="H"))
    write_task(tmp_path, df, {"source": "mini"})
    with pytest.raises(ValueError, match="unknown stat"):
        load_trajectories(tmp_path, stat="max")
    with pytest.raises(ValueError, match="min_step"):
        load_trajectories(tmp_path, min_step=10)
    with pytest.raises(TypeError, match="Dataset or a dataset root"):
        load_trajectories(42)
