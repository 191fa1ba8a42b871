"""Hostile archives (issue 14): one bad file never stops the ingest, memory is bounded before
parsing, the file of a (size, step) does not depend on name sorting, changed archive files and
damaged task files are ingested again, and anything unusable is named in a note."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import time
import tracemalloc

import numpy as np
import pytest

from massact.dataset import load_dataset, task_done, task_path
from massact.sources._archive import (
    PYTHIA_ARCHITECTURES,
    MalformedFile,
    ingest_archive,
    max_file_bytes,
    parse_stats_bytes,
    parse_stats_file,
)

L14 = PYTHIA_ARCHITECTURES["14m"].L  # 6


def _values(seed: int, n_seq: int = 10, L: int = L14) -> list:
    """[n_seq][4][L] nested lists: top1 >= top2 >= top3 >= median > 0."""
    rng = np.random.default_rng(seed)
    top = np.sort(rng.uniform(5, 500, (n_seq, 3, L)), axis=1)[:, ::-1]
    median = rng.uniform(0.1, 1.0, (n_seq, 1, L))
    return np.concatenate([top, median], axis=1).tolist()


def _put(root, name: str, text: str | bytes, folder: str = "pythia_14m"):
    d = root / folder / "stats"
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _good(root, steps=(0, 1, 2)) -> dict[int, list]:
    values = {}
    for step in steps:
        values[step] = _values(step)
        _put(root, f"exp2_pythia_14m_step{step}", repr(values[step]))
    return values


def _top1(ds, step: int) -> np.ndarray:
    rows = ds.stats.query(f"model == 'pythia-14m' and step == {step}")
    return rows.sort_values(["sample", "layer"])["top1"].to_numpy().reshape(-1, L14)


def _note(ds, *parts: str) -> str:
    (line,) = [n for n in ds.notes if all(p in n for p in parts)]
    return line


def _peak(fn, *args):
    """(result or raised MalformedFile, peak bytes allocated by Python) of fn(*args)."""
    tracemalloc.start()
    try:
        try:
            out = fn(*args)
        except MalformedFile as e:
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the test blocks for more than 20 s."""

    def alarm(*_):
        raise TimeoutError("blocked: a FIFO or similar was opened for reading")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- item 1


def test_overflowing_value_is_a_malformed_file_not_a_crash(tmp_path):
    root = tmp_path / "a"
    values = _good(root)
    bad = _values(9)
    text = repr(bad).replace(repr(bad[0][0][0]), "1" + "0" * 400, 1)
    _put(root, "exp2_pythia_14m_step4", text)
    with pytest.raises(MalformedFile, match="non-finite"):
        parse_stats_file(root / "pythia_14m" / "stats" / "exp2_pythia_14m_step4", L14)
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    _note(ds, "skipped pythia_14m/stats/exp2_pythia_14m_step4", "non-finite")
    assert sorted(set(ds.stats["step"])) == [0, 1, 2]
    np.testing.assert_array_equal(_top1(ds, 2), np.asarray(values[2])[:, 0])


def test_step_beyond_int64_is_skipped_with_a_note(tmp_path):
    root = tmp_path / "a"
    _good(root)
    _put(root, "exp2_pythia_14m_step" + "9" * 25, repr(_values(5)))
    _put(root, "exp2_pythia_14m_step9223372036854775807", repr(_values(6)))  # int64 max: fine
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    _note(ds, "exp2_pythia_14m_step" + "9" * 25, "out of range")
    assert sorted(set(ds.stats["step"])) == [0, 1, 2, 2**63 - 1]


# ----------------------------------------------------------------------------- item 2


def test_large_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"[" + b"1.0, " * ((6 << 20) // 5) + b"1.0]")  # 6 MB
    t0 = time.perf_counter()
    err, peak = _peak(parse_stats_file, path, L14)
    assert time.perf_counter() - t0 < 1.0
    assert re.match(r"file is \d+ bytes, more than the \d+", str(err))
    assert peak < 256 << 10  # never read, let alone parsed
    root = tmp_path / "a"
    _good(root)
    os.replace(path, root / "pythia_14m" / "stats" / "exp2_pythia_14m_step8")
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    _note(ds, "exp2_pythia_14m_step8", "bytes, more than the")
    assert sorted(set(ds.stats["step"])) == [0, 1, 2]


def test_size_cap_follows_the_largest_real_shape():
    assert max_file_bytes(6) < 64 << 10  # 14m: real files ~8 kB
    assert 200 << 10 < max_file_bytes(36) < 512 << 10  # 12b: real files ~50 kB
    # a real file, printed with full float precision, fits with room to spare
    big = repr(_values(0, 10, 36)).encode()
    assert 3 * len(big) < max_file_bytes(36)
    assert parse_stats_bytes(big, 36).shape == (10, 4, 36)


def test_parsing_memory_is_bounded_below_the_cap():
    """At the size cap, memory stays a small multiple of the file: a dense file of numbers
    (where ast.literal_eval needs ~490 bytes per byte: ~140 MB here) stops at the value cap,
    and a valid file padded with whitespace up to the cap parses."""
    n = max_file_bytes(36)
    dense = b"[[[" + b"1," * ((n - 10) // 2) + b"1]]]"
    assert n - 10 < len(dense) <= n
    err, peak = _peak(parse_stats_bytes, dense, 36)
    assert isinstance(err, MalformedFile) and "holds more than 4608 values" in str(err)
    assert peak < 4 * n
    v = _values(0, 10, 36)
    pad = " " * 120
    text = "[" + ",".join(
        pad + "[" + ",".join(pad + "[" + ",".join(pad + repr(x) for x in row) + "]" for row in seq)
        + "]"
        for seq in v
    ) + "]"  # fmt: skip
    padded = text.encode()
    assert n // 2 < len(padded) <= n
    arr, peak = _peak(parse_stats_bytes, padded, 36)
    np.testing.assert_array_equal(arr, np.asarray(v))
    assert peak < 4 * n


@pytest.mark.parametrize(
    "text, match",
    [
        ("[" * 10_000 + "]" * 10_000, "nested deeper than"),
        ("[" + "1.0," * 800 + "1.0]", "holds more than 768 values"),  # 32 seqs x 4 x 6
        ("[[[1.0 2.0]]]", "missing ','"),
        ("[[[1.0,,2.0]]]", "unexpected ','"),
        ("[[[1.0, 2.0)]]", "unmatched ')'"),
        ("[[[1.0]]] [1]", "more text after the list"),
        ("[[[__import__('os')]]]", "name '__import__'"),
        ("[[[1.0, 2j]]]", "unexpected '2j"),
        ("[[[1.0, 0x10]]]", "unexpected '0x10"),
        ("[[[1.0, 1.2.3]]]", "unexpected '1.2.3"),
        ("[[[b'x']]]", "name 'b'"),
        ("[[['" + "x" * 100 + "']]]", "unexpected"),
        ("", "the file is empty"),
        ("\xff\xfe[1]", "not a Python literal"),
        ("[[[1.0, 2.0], [3.0", "ends before the list is closed"),
    ],
    ids=[
        "deep", "too-many", "no-comma", "two-commas", "bracket", "trailing", "name", "complex",
        "hex", "two-dots", "bytes", "long-string", "empty", "binary", "truncated",
    ],
)  # fmt: skip
def test_syntax_outside_nested_lists_of_numbers_is_named(text, match):
    with pytest.raises(MalformedFile, match=re.escape(match)):
        parse_stats_bytes(text.encode("utf-8", "surrogateescape"), L14)


@pytest.mark.parametrize(
    "render",
    [
        repr,
        lambda v: json.dumps(v, indent=4),
        lambda v: repr(tuple(tuple(tuple(r) for r in s) for s in v)),
        lambda v: repr(v).replace("]", ",]"),  # trailing commas
        lambda v: repr([[[int(x) + 1 for x in r] for r in s] for s in v]),  # integers
        lambda v: repr([[[f"{x:.3e}" for x in r] for r in s] for s in v]).replace("'", ""),
        lambda v: "\n\t" + repr(v).replace(", ", " ,\n ") + "\n\n",
    ],
    ids=["repr", "json-indent", "tuples", "trailing-commas", "ints", "exponents", "whitespace"],
)
def test_parser_agrees_with_python_literals(render):
    text = render(_values(3, 4, L14))
    want = np.asarray(ast.literal_eval(text.strip()), dtype=np.float64)
    np.testing.assert_array_equal(parse_stats_bytes(text.encode(), L14), want)


# ----------------------------------------------------------------------------- item 3, 4


def test_damaged_task_is_ingested_again(tmp_path):
    root = tmp_path / "a"
    values = _good(root)
    out = ingest_archive(root, tmp_path / "ds")
    path = task_path(out, "pythia-14m", 1)
    path.write_bytes(path.read_bytes()[:-10])
    assert not task_done(out, "pythia-14m", 1)
    assert any("pythia-14m/step1" in n for n in load_dataset(out).notes)
    ingest_archive(root, out)
    ds = load_dataset(out)
    assert task_done(out, "pythia-14m", 1) and sorted(set(ds.stats["step"])) == [0, 1, 2]
    assert not any("pythia-14m/step1" in n for n in ds.notes)
    np.testing.assert_array_equal(_top1(ds, 1), np.asarray(values[1])[:, 0])


def test_changed_archive_file_is_ingested_again(tmp_path):
    root = tmp_path / "a"
    values = _good(root)
    out = ingest_archive(root, tmp_path / "ds")
    before = {s: task_path(out, "pythia-14m", s).stat().st_mtime_ns for s in (0, 2)}
    doubled = [[[2 * x for x in row] for row in seq] for seq in values[1]]
    _put(root, "exp2_pythia_14m_step1", repr(doubled))
    ingest_archive(root, out)
    ds = load_dataset(out)
    np.testing.assert_array_equal(_top1(ds, 1), np.asarray(doubled)[:, 0])
    _note(ds, "exp2_pythia_14m_step1 changed since pythia-14m step 1 was ingested")
    after = {s: task_path(out, "pythia-14m", s).stat().st_mtime_ns for s in (0, 2)}
    assert after == before  # unchanged files are not rewritten
    # a file that changes into something unusable takes its stale task with it
    _put(root, "exp2_pythia_14m_step1", "[[1.0, 2.0")
    ingest_archive(root, out)
    ds = load_dataset(out)
    assert sorted(set(ds.stats["step"])) == [0, 2]
    _note(ds, "skipped pythia_14m/stats/exp2_pythia_14m_step1", "not a Python literal")
    _note(ds, "pythia-14m step 1 removed", "earlier version")


def test_tasks_of_other_sources_are_left_alone(tmp_path):
    """A pythia-14m task from another source (no archive hash) counts as done, as before."""
    import pandas as pd

    from massact.dataset import write_task

    root = tmp_path / "a"
    _good(root, steps=(0,))
    out = tmp_path / "ds"
    frame = pd.DataFrame(
        {"suite": "pythia", "model": "pythia-14m", "step": 0, "layer": np.arange(L14),
         "sample": 0, "top1": 5.0, "median": 1.0}
    )  # fmt: skip
    write_task(out, frame, {"source": "pythia"})
    ingest_archive(root, out)
    assert set(load_dataset(out).provenance["source"]) == {"pythia"}


# ----------------------------------------------------------------------------- item 6


def test_canonical_name_wins_over_padded_variants(tmp_path):
    root = tmp_path / "a"
    canonical = _values(1)
    padded = _put(root, "exp2_pythia_14m_step0001", repr(_values(2)))
    _put(root, "exp2_pythia_14m_step1", repr(canonical))
    os.utime(padded, ns=(0, 0))  # and not by modification time either
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    np.testing.assert_array_equal(_top1(ds, 1), np.asarray(canonical)[:, 0])
    assert ds.provenance["archive_file"].tolist() == ["pythia_14m/stats/exp2_pythia_14m_step1"]
    _note(ds, "skipped pythia_14m/stats/exp2_pythia_14m_step0001", "canonical")


def test_a_lone_variant_is_used_and_ambiguous_variants_are_not(tmp_path):
    root = tmp_path / "a"
    lone = _values(1)
    _put(root, "exp2_pythia_14m_step0001", repr(lone))
    _put(root, "exp2_pythia_14m_step02", repr(_values(2)))
    _put(root, "exp2_pythia_14m_step002", repr(_values(3)))
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    np.testing.assert_array_equal(_top1(ds, 1), np.asarray(lone)[:, 0])
    assert sorted(set(ds.stats["step"])) == [1]
    _note(ds, "exp2_pythia_14m_step002", "exp2_pythia_14m_step02", "none named")


def test_file_in_the_wrong_folder_is_skipped(tmp_path):
    root = tmp_path / "a"
    _good(root, steps=(0,))
    _put(root, "exp2_pythia_14m_step1", repr(_values(1)), folder="pythia_70m")
    _put(root, "exp2_pythia_14m_step2", repr(_values(1)), folder="pythia_14m_old")
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    assert set(ds.stats["model"]) == {"pythia-14m"} and set(ds.stats["step"]) == {0}
    _note(ds, "pythia_70m/stats/exp2_pythia_14m_step1", "in the folder of pythia-70m")
    _note(ds, "skipped pythia_14m_old", "not a folder named pythia_<size>")


def test_special_files_are_noted_never_opened(tmp_path, no_hang):
    root = tmp_path / "a"
    _good(root, steps=(0,))
    stats = root / "pythia_14m" / "stats"
    os.mkfifo(stats / "exp2_pythia_14m_step1")  # opening it for reading would block
    (stats / "exp2_pythia_14m_step2").mkdir()
    os.symlink("exp2_pythia_14m_step3", stats / "exp2_pythia_14m_step3")  # a loop
    os.symlink("nowhere", stats / "exp2_pythia_14m_step4")  # dangling
    os.symlink("exp2_pythia_14m_step0", stats / "exp2_pythia_14m_step5")  # fine: followed
    (stats / "notes.txt").write_text("hello")
    (root / "pythia_31m").mkdir()  # no stats folder
    os.symlink("pythia_160m", root / "pythia_160m")  # a folder that loops
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    assert sorted(set(ds.stats["step"])) == [0, 5]
    _note(ds, "exp2_pythia_14m_step1", "not a regular file")
    _note(ds, "exp2_pythia_14m_step2", "is a directory")
    _note(ds, "exp2_pythia_14m_step3", "symbolic links")
    _note(ds, "exp2_pythia_14m_step4", "cannot be read")
    _note(ds, "pythia_14m/stats/notes.txt", "not named exp2_pythia_<size>_step<N>")
    _note(ds, "pythia_31m", "no stats folder")
    _note(ds, "pythia_160m/stats", "cannot be listed")
    # the FIFO is refused even when named directly
    with pytest.raises(MalformedFile, match="not a regular file"):
        parse_stats_file(stats / "exp2_pythia_14m_step1", L14)


def test_unknown_size_and_other_names_at_the_root(tmp_path):
    root = tmp_path / "a"
    _good(root, steps=(0,))
    _put(root, "exp2_pythia_99m_step0", repr(_values(0)), folder="pythia_99m")
    (root / "README.md").write_text("# the archive")  # not under pythia_*: not a note
    ds = load_dataset(ingest_archive(root, tmp_path / "ds"))
    _note(ds, "unknown Pythia size '99m'")
    assert not any("README" in n for n in ds.notes)
