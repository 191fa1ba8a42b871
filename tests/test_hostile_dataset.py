"""Hostile and damaged datasets (issue 14): every task file goes through one check against its
manifest entry (read_task), used by load_dataset and by task_done on resume; manifests that are
not ours get a one-line error naming the file; files are written atomically with the usual
permissions."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from massact.dataset import (
    TaskError,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    check_task,
    load_dataset,
    read_manifest,
    read_task,
    remove_task,
    task_done,
    task_path,
    write_architectures,
    write_task,
)


def _task(model="m", step=4, L=2, n=3) -> pd.DataFrame:
    layer, sample = np.meshgrid(np.arange(L), np.arange(n), indexing="ij")
    top1 = 2.0 + layer.ravel() + 0.1 * sample.ravel()
    return pd.DataFrame(
        {
            "suite": "s",
            "model": model,
            "step": step,
            "layer": layer.ravel(),
            "sample": sample.ravel(),
            "top1": top1,
            "top2": 0.9 * top1,
            "median": np.full(L * n, 0.5),
        }
    )


def _arch(model="m", L=2) -> pd.DataFrame:
    return pd.DataFrame(
        {"suite": "s", "model": [model], "L": [L], "d": 8, "H": 2, "d_ff": 32,
         "rotary_pct": 0.25, "rotary_base": 1e4, "n_params": 100, "max_step": 8}
    )  # fmt: skip


@pytest.fixture
def ds(tmp_path):
    """Dataset with model m (2 layers, architecture row) at steps 0 and 4, 3 samples each."""
    for step in (0, 4):
        write_task(tmp_path, _task(step=step), {"source": "mini"})
    write_architectures(tmp_path, _arch())
    return tmp_path


def _forge(root, at: int, frame: pd.DataFrame, **entry_changes) -> None:
    """Replace m/step<at>'s file by `frame` and make its manifest entry match the new bytes
    (sha256, size, rows): what a careless edit or another tool could leave behind."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    data = buf.getvalue()
    task_path(root, "m", at).write_bytes(data)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["tasks"][f"m/step{at}"]
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=len(frame))
    entry.update(entry_changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _stored(root, step: int) -> pd.DataFrame:
    return pd.read_parquet(task_path(root, "m", step))


def _assert_skipped(root, step: int, reason: str | tuple[str, ...]) -> None:
    """Left out at load with one note naming the task and the reason (every part of it, if a
    tuple); not done for resume, and check_task says why."""
    parts = (reason,) if isinstance(reason, str) else reason
    loaded = load_dataset(root)
    assert set(loaded.stats["step"]) == {0}
    (note,) = [n for n in loaded.notes if f"m/step{step}" in n]
    assert note.endswith("task ignored") and "\n" not in note
    assert all(p in note for p in parts), note
    assert not task_done(root, "m", step) and task_done(root, "m", 0)
    assert all(p in check_task(root, "m", step) for p in parts)


# ----------------------------------------------------------------------------- item 3: resume


def test_truncated_task_is_not_done(ds):
    path = task_path(ds, "m", 4)
    path.write_bytes(path.read_bytes()[:-10])
    _assert_skipped(ds, 4, "bytes")
    # the same size, other bytes: the sha256 tells
    write_task(ds, _task(step=4), {"source": "mini"})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _assert_skipped(ds, 4, "does not match its manifest sha256")
    # a rewrite (what a resume does) repairs it
    write_task(ds, _task(step=4), {"source": "mini"})
    assert task_done(ds, "m", 4) and len(load_dataset(ds).notes) == 0


def test_missing_or_special_task_file_is_not_done(ds):
    path = task_path(ds, "m", 4)
    path.unlink()
    _assert_skipped(ds, 4, "is missing")
    os.mkfifo(path)  # never opened for a blocking read
    _assert_skipped(ds, 4, "not a regular file")
    path.unlink()
    path.mkdir()
    _assert_skipped(ds, 4, "not a regular file")


def test_entries_without_a_recorded_size_still_load(ds):
    """Manifests written before the size was recorded: sha256 alone decides."""
    manifest = json.loads((ds / "manifest.json").read_text())
    for entry in manifest["tasks"].values():
        del entry["bytes"]
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert task_done(ds, "m", 4) and len(load_dataset(ds).stats) == 12
    path = task_path(ds, "m", 4)
    path.write_bytes(path.read_bytes()[:-10])
    _assert_skipped(ds, 4, "sha256")


# ----------------------------------------------------------------------------- item 5: contents


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d: d.assign(step=999), "holds step [999], its manifest entry step 4"),
        (lambda d: d.assign(model="other"), "holds model ['other']"),
        (lambda d: d.assign(suite="x"), "holds suite ['x']"),
        (lambda d: d.assign(top1=d["top1"].astype(str)), ("'top1' is", "not a numeric column")),
        (lambda d: d.assign(median=True), "column 'median' is bool, not a numeric"),
        (lambda d: d.drop(columns="layer"), "lacks the columns ['layer']"),
        (lambda d: d.drop(columns="ratio"), "lacks the columns ['ratio']"),
        (lambda d: d.assign(layer=d["layer"] + 0.5), "column 'layer' is float64, not an integer"),
        (lambda d: d.assign(sample=d["sample"].astype(str)), ("'sample' is", "not an integer")),
        (lambda d: d.assign(layer=d["layer"] * 2), "has layers [0, 2], the architecture table"),
        (lambda d: d[d["layer"] == 0], "has layers [0], the architecture table gives m 2"),
        (lambda d: d.assign(sample=0), "duplicate (layer, sample)"),
        (lambda d: d.assign(layer=-d["layer"]), "negative layer or sample"),
        (lambda d: d.assign(ratio=99.0), "ratio != top1/median in 6 rows"),
    ],
    ids=[
        "step-999", "model", "suite", "str-top1", "bool-median", "no-layer", "no-ratio",
        "float-layer", "str-sample", "layer-gap", "layer-missing", "dup-rows", "neg-layer",
        "stale-ratio",
    ],
)  # fmt: skip
def test_task_contents_checked_against_manifest(ds, change, reason):
    _forge(ds, 4, change(_stored(ds, 4)))
    _assert_skipped(ds, 4, reason)


def test_layers_beyond_the_architecture_are_refused(ds):
    write_task(ds, _task(step=4, L=3), {"source": "mini"})  # a third layer the model lacks
    _assert_skipped(ds, 4, "has layers [0, 1, 2], the architecture table gives m 2 layers")
    write_architectures(ds, _arch(L=3))  # now the architecture has 3 layers: step 0 is short
    assert task_done(ds, "m", 4) and not task_done(ds, "m", 0)


def test_rows_and_entry_fields_checked(ds):
    _forge(ds, 4, _stored(ds, 4), rows=7)
    _assert_skipped(ds, 4, "has 6 rows, its manifest entry 7")
    write_task(ds, _task(step=4), {"source": "mini"})
    _forge(ds, 4, _stored(ds, 4), file="../../outside.parquet")
    _assert_skipped(ds, 4, "points to '../../outside.parquet', not stats/m/step4.parquet")
    write_task(ds, _task(step=4), {"source": "mini"})
    _forge(ds, 4, _stored(ds, 4), step=0)  # the entry under key m/step4 describes step 0
    _assert_skipped(ds, 4, "describes m/step0, not m/step4")


def test_unreadable_parquet_is_a_note(ds):
    path = task_path(ds, "m", 4)
    data = b"PAR1 this is not parquet PAR1"
    path.write_bytes(data)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["tasks"]["m/step4"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (ds / "manifest.json").write_text(json.dumps(manifest))
    _assert_skipped(ds, 4, "not a readable Parquet file")


def test_read_task_returns_checked_dtypes(ds):
    frame = _stored(ds, 4)
    _forge(ds, 4, frame.assign(top1=frame["top1"].astype(np.float32).astype(np.float64)))
    entry = read_manifest(ds)["tasks"]["m/step4"]
    got = read_task(ds, "m/step4", entry, n_layers=2)
    assert got["layer"].dtype == np.int64 and got["top1"].dtype == np.float64
    with pytest.raises(TaskError, match="architecture table gives m 5 layers"):
        read_task(ds, "m/step4", entry, n_layers=5)


def test_load_without_verify_still_checks_contents(ds):
    _forge(ds, 4, _stored(ds, 4).assign(step=999))
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["tasks"]["m/step4"]["sha256"] = "0" * 64  # not checked with verify=False
    (ds / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_dataset(ds, verify=False)
    assert set(loaded.stats["step"]) == {0}
    assert any("m/step4" in n and "step [999]" in n for n in loaded.notes)


def test_remove_task(ds):
    assert remove_task(ds, "m", 4) and not task_path(ds, "m", 4).exists()
    assert "m/step4" not in read_manifest(ds)["tasks"] and not remove_task(ds, "m", 4)
    assert set(load_dataset(ds).stats["step"]) == {0}


# ------------------------------------------------------------------------- items 9, 10: manifest


@pytest.mark.parametrize(
    "text, match",
    [
        (b"[1, 2]", "is a JSON list, not a massact manifest"),
        (b'{"version": 1, "tasks": {"m/step0": 5}}', "task entry 'm/step0' is a JSON int"),
        (b'{"version": 1, "tasks": {"m/step0": {"file": 3}}}', "task entry 'm/step0'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
        (b'{"version": 1, "tasks": []}', "not a massact manifest of version 1"),
        (b"{not json", "not valid JSON"),
    ],
    ids=["list", "int-entry", "bad-entry", "binary", "tasks-list", "not-json"],
)
def test_foreign_manifest_is_a_one_line_error(tmp_path, text, match):
    (tmp_path / "manifest.json").write_bytes(text)
    manifest = str(tmp_path / "manifest.json")
    for call in (
        lambda: load_dataset(tmp_path),
        lambda: task_done(tmp_path, "m", 0),
        lambda: write_task(tmp_path, _task(), {"source": "mini"}),
    ):
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert manifest in str(err.value) and "\n" not in str(err.value)


def test_entry_field_types_are_checked(ds):
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["tasks"]["m/step4"]["rows"] = True
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="field 'rows' is True, not an integer"):
        read_manifest(ds)


def test_damaged_architectures_name_the_file(ds):
    (ds / "architectures.parquet").write_bytes(b"garbage")
    for call in (lambda: load_dataset(ds), lambda: write_architectures(ds, _arch())):
        with pytest.raises(ValueError, match="architectures.parquet is not a readable Parquet"):
            call()


def test_binary_notes_do_not_stop_loading(ds):
    (ds / "report_lines.txt").write_bytes(b"skipped x\n\xff\xfe\n")
    assert load_dataset(ds).notes[0] == "skipped x"


def test_step_beyond_int64_is_a_clear_error(tmp_path):
    big = _task().assign(step=10**25)
    with pytest.raises(ValueError, match="does not fit a 64-bit integer"):
        write_task(tmp_path, big, {"source": "archive"})


# ----------------------------------------------------------------------------- item 12: writes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_usual_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_task(tmp_path, _task(), {"source": "mini"})
        write_architectures(tmp_path, _arch())
        from massact.dataset import add_note

        add_note(tmp_path, "a note")
        atomic_write_text(tmp_path / "out" / "report.md", "# report\n")
    finally:
        os.umask(old)
    files = [
        task_path(tmp_path, "m", 4),
        tmp_path / "manifest.json",
        tmp_path / "architectures.parquet",
        tmp_path / "report_lines.txt",
        tmp_path / "out" / "report.md",
    ]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "fits.parquet"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError), atomic_writer(path) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["fits.parquet"]


def test_atomic_write_names_the_file_on_a_full_disk(tmp_path):
    path = tmp_path / "report.html"
    atomic_write_text(path, "old")
    with pytest.raises(OSError) as err, atomic_writer(path) as f:
        f.write(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert str(path) in str(err.value)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["report.html"]
