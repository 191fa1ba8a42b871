"""Source 2: the released statistics archive, on a small archive built in a temp dir."""

from __future__ import annotations

import numpy as np
import pytest

from massact.dataset import load_dataset, load_trajectories
from massact.sources._archive import (
    PYTHIA_ARCHITECTURES,
    MalformedFile,
    ingest_archive,
    parse_stats_file,
)


def _values(rng, n_seq: int, L: int) -> list:
    """[n_seq][4][L] nested lists: top1 >= top2 >= top3 >= median > 0."""
    top = np.sort(rng.uniform(5, 500, (n_seq, 3, L)), axis=1)[:, ::-1]
    median = rng.uniform(0.1, 1.0, (n_seq, 1, L))
    return np.concatenate([top, median], axis=1).tolist()


def _put(root, size: str, step: int, text: str) -> None:
    d = root / f"pythia_{size}" / "stats"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"exp2_pythia_{size}_step{step}").write_text(text)


@pytest.fixture
def archive(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "archive"
    values = {}
    for size, steps in [("14m", [0, 512, 1000]), ("70m", [0, 143000])]:
        L = PYTHIA_ARCHITECTURES[size].L
        for step in steps:
            values[size, step] = _values(rng, 10, L)
            _put(root, size, step, repr(values[size, step]))
    _put(root, "1b", 0, "[[[1.0, 2.0], [3.0")  # truncated, like the published 1b step0
    (root / "pythia_14m" / "stats" / "README").write_text("not a stats file")
    return root, values


def test_ingest_values_and_architectures(archive, tmp_path):
    root, values = archive
    out = ingest_archive(root, tmp_path / "ds")
    ds = load_dataset(out)
    assert sorted(ds.stats["model"].unique()) == ["pythia-14m", "pythia-70m"]
    assert (ds.stats["suite"] == "pythia").all()
    for (size, step), v in values.items():
        arr = np.asarray(v)  # [10, 4, L]
        rows = ds.stats.query(f"model == 'pythia-{size}' and step == {step}")
        assert len(rows) == 10 * arr.shape[2]
        for layer in range(arr.shape[2]):
            r = rows[rows["layer"] == layer].sort_values("sample")
            np.testing.assert_array_equal(r["top1"], arr[:, 0, layer])
            np.testing.assert_array_equal(r["top3"], arr[:, 2, layer])
            np.testing.assert_array_equal(r["median"], arr[:, 3, layer])
            np.testing.assert_allclose(r["ratio"], arr[:, 0, layer] / arr[:, 3, layer], rtol=0)
    prov = ds.provenance
    assert (prov["source"] == "archive").all()
    assert prov.query("model == 'pythia-70m' and step == 143000")["revision"].item() == "step143000"
    assert prov["archive_file_sha256"].str.len().eq(64).all()
    arch = ds.architectures.set_index("model")
    assert arch.loc["pythia-14m", ["L", "d", "H", "d_ff"]].tolist() == [6, 128, 4, 512]
    assert (arch["max_step"] == 143000).all()  # the final Pythia step, not the last one seen
    # exact GPTNeoX parameter counts (published: 14m 14,067,712; 70m 70,426,624)
    assert arch.loc["pythia-14m", "n_params"] == 14_067_712
    assert arch.loc["pythia-70m", "n_params"] == 70_426_624
    tr = load_trajectories(ds)
    assert len(tr) == 12 and tr.keys["model"].tolist()[:6] == ["pythia-14m"] * 6


def test_malformed_file_skipped_with_a_note(archive, tmp_path):
    root, _ = archive
    out = ingest_archive(root, tmp_path / "ds")
    ds = load_dataset(out)
    assert "pythia-1b" not in set(ds.stats["model"])
    (line,) = [n for n in ds.notes if "exp2_pythia_1b_step0" in n]
    assert "pythia_1b/stats/exp2_pythia_1b_step0" in line and "not a Python literal" in line
    # ingesting again skips finished tasks and does not repeat the note
    ingest_archive(root, out)
    again = load_dataset(out)
    assert again.notes == ds.notes and len(again.stats) == len(ds.stats)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda v: v, None),  # control: a valid file parses
        (lambda v: v[:-1] + [v[-1][:3]], "expected 4 rows"),
        (lambda v: [[row[:-1] for row in seq] for seq in v], "expected 6 layers"),
        (lambda v: [[[-x for x in row] for row in seq] for seq in v], "non-positive"),
        (lambda v: [[row[:] for row in seq] for seq in v[:1]] + [[[0.0] * 6] * 4], "non-positive"),
        (lambda v: [[seq[1], seq[0], seq[2], seq[3]] for seq in v], "not ordered"),
        (lambda v: repr(v).replace(repr(v[0][0][0]), "1e400", 1), "non-finite"),
        (lambda v: [[["x"] * 6] * 4], "non-numeric"),
        (lambda v: {"a": 1}, "non-empty list"),
    ],
    ids=["ok", "3-rows", "5-layers", "negative", "zero", "unordered", "inf", "strings", "dict"],
)
def test_parse_validation(tmp_path, make, reason):
    v = _values(np.random.default_rng(0), 3, 6)
    path = tmp_path / "f"
    made = make(v)
    path.write_text(made if isinstance(made, str) else repr(made))
    if reason is None:
        assert parse_stats_file(path, 6).shape == (3, 4, 6)
    else:
        with pytest.raises(MalformedFile, match=reason):
            parse_stats_file(path, 6)


def test_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "f"
    path.write_text(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    with pytest.raises(MalformedFile, match="not a Python literal"):
        parse_stats_file(path, 6)
    assert not marker.exists()


def test_unknown_size_is_noted(tmp_path):
    root = tmp_path / "a"
    _put(root, "99m", 0, repr(_values(np.random.default_rng(0), 2, 3)))
    _put(root, "14m", 0, repr(_values(np.random.default_rng(0), 2, 6)))
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    assert any("unknown Pythia size '99m'" in n for n in ds.notes)
    assert set(ds.stats["model"]) == {"pythia-14m"}


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest_archive(tmp_path / "missing", tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files named"):
        ingest_archive(tmp_path / "empty", tmp_path / "ds")


def test_architecture_table_matches_facts():
    expect = {
        "14m": (6, 128, 4),
        "31m": (6, 256, 8),
        "70m": (6, 512, 8),
        "160m": (12, 768, 12),
        "410m": (24, 1024, 16),
        "1b": (16, 2048, 8),
        "1.4b": (24, 2048, 16),
        "2.8b": (32, 2560, 32),
        "6.9b": (32, 4096, 32),
        "12b": (36, 5120, 40),
    }
    assert {k: (a.L, a.d, a.H) for k, a in PYTHIA_ARCHITECTURES.items()} == expect
    # the paper's 9 models (all but 31m) have 188 layers
    assert sum(a.L for k, a in PYTHIA_ARCHITECTURES.items() if k != "31m") == 188
    # published totals (Pythia paper) for the sizes with non-default vocabularies
    assert PYTHIA_ARCHITECTURES["6.9b"].n_params == 6_857_302_016
    assert PYTHIA_ARCHITECTURES["12b"].n_params == 11_846_072_320
