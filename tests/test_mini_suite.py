"""Source 3: the mini-suite trains real tiny GPTNeoX models and writes resumable trajectories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _models import layer_outputs

from massact.dataset import load_dataset, load_trajectories
from massact.sources._mini_suite import (
    MINI_PRESETS,
    MiniArch,
    build_model,
    load_corpus,
    probe_set,
    split_corpus,
    train_mini_suite,
)

# small, deterministic text: words from a seeded RNG (the stdlib default is tested separately)
_WORDS = b"def return self import class for in if else the of a to is value list".split()
CORPUS = b" ".join(np.random.default_rng(0).choice(_WORDS, 12000)) + b"\n"

# two tiny models; the child is killed after 3 of their 16 tasks, mid-sweep
SWEEP = [
    MiniArch(2, 16, 2, 2, steps=30, batch=4, seq_len=16, warmup=5, n_regular=3),
    MiniArch(3, 16, 2, 4, steps=30, batch=4, seq_len=16, warmup=5, n_regular=3),
]
_N_TASKS = sum(len(a.checkpoints()) for a in SWEEP)

_CHILD = """
import json, sys
from massact.sources._mini_suite import MiniArch, train_mini_suite
archs = [MiniArch(**a) for a in json.loads(sys.argv[2])]
train_mini_suite(sys.argv[1], archs, corpus=open(sys.argv[3], "rb").read(), progress=False)
"""


def _arch_json() -> str:
    from dataclasses import asdict

    return json.dumps([asdict(a) for a in SWEEP])


def _n_done(root: Path) -> int:
    try:
        return len(json.loads((root / "manifest.json").read_text())["tasks"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _frames(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ds = load_dataset(root)
    return ds.stats, ds.provenance, ds.architectures


@pytest.mark.slow  # a fresh interpreter imports torch + transformers (~5 s idle, more when loaded)
def test_killed_sweep_resumes_to_identical_data(tmp_path):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_bytes(CORPUS)
    killed = tmp_path / "killed"
    log = tmp_path / "child.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(killed), _arch_json(), str(corpus_file)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 240
            while _n_done(killed) < 3 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, f"the sweep ended before the kill: {log.read_text()}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    done_at_kill = _n_done(killed)
    assert 3 <= done_at_kill < _N_TASKS, "the kill must land mid-sweep"

    train_mini_suite(killed, SWEEP, corpus=CORPUS, progress=False)  # resume
    fresh = train_mini_suite(tmp_path / "fresh", SWEEP, corpus=CORPUS, progress=False)
    for got, want in zip(_frames(killed), _frames(fresh)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    stats, prov, _ = _frames(killed)
    assert len(prov) == _N_TASKS
    assert prov["weights_sha256"].nunique() == _N_TASKS  # every checkpoint has new weights
    assert not list((killed / ".mini_state").iterdir()), "training states are removed when done"
    # running again is a no-op
    before = (killed / "manifest.json").read_text()
    train_mini_suite(killed, SWEEP, corpus=CORPUS, progress=False)
    assert (killed / "manifest.json").read_text() == before


def test_step0_stats_match_an_independent_forward(tmp_path):
    arch = SWEEP[1]
    train_mini_suite(tmp_path, [arch], corpus=CORPUS, progress=False, seed=3, n_probe=5)
    ds = load_dataset(tmp_path)
    _, held = split_corpus(CORPUS)
    probe = probe_set(held, seed=3, n_probe=5, seq_len=arch.seq_len)
    assert probe[:, 0].eq(256).all(), "every probe sequence starts with BOS"
    row0 = ds.provenance.query("step == 0").iloc[0]
    import hashlib

    assert row0["input_sha256"] == hashlib.sha256(probe.numpy().tobytes()).hexdigest()
    model = build_model(arch, seed=3).eval()
    outs = layer_outputs(model, input_ids=probe, layers=model.gpt_neox.layers)
    got = ds.stats.query("step == 0")
    assert sorted(got["layer"].unique()) == list(range(arch.L))
    for layer, h in enumerate(outs):
        flat = h.abs().reshape(5, -1)  # [probe, S*d]
        rows = got[got["layer"] == layer].sort_values("sample")
        top = torch.tensor(rows[["top1", "top2", "top3"]].to_numpy()).float()
        assert torch.equal(top, flat.topk(3, dim=1).values)
        assert torch.equal(torch.tensor(rows["median"].to_numpy()).float(), flat.median(1).values)
    arch_row = ds.architectures.iloc[0]
    assert arch_row["n_params"] == sum(p.numel() for p in model.parameters())
    assert (arch_row["L"], arch_row["d"], arch_row["H"], arch_row["d_ff"]) == (3, 16, 2, 64)
    assert arch_row["max_step"] == arch.steps


def test_tiny_preset_on_the_stdlib_corpus(tmp_path):
    out = train_mini_suite(tmp_path, "tiny", progress=False)
    ds = load_dataset(out)
    tr = load_trajectories(ds)
    assert len(tr) == sum(a.L for a in MINI_PRESETS["tiny"])
    assert tr.mask.all() and np.isfinite(tr.y).all() and (tr.y > 1).all()
    assert set(ds.provenance["source"]) == {"mini"}
    assert ds.provenance["revision"].str.fullmatch(r"step\d+").all()
    assert ds.provenance["corpus_sha256"].nunique() == 1


def test_seed_changes_weights_and_mixing_seeds_is_refused(tmp_path):
    arch = [MiniArch(2, 16, 2, 2, steps=4, batch=2, seq_len=16, warmup=1, n_regular=2)]
    train_mini_suite(tmp_path / "a", arch, corpus=CORPUS, progress=False, seed=0)
    train_mini_suite(tmp_path / "b", arch, corpus=CORPUS, progress=False, seed=1)
    wa = load_dataset(tmp_path / "a").provenance["weights_sha256"]
    wb = load_dataset(tmp_path / "b").provenance["weights_sha256"]
    assert not set(wa) & set(wb)
    with pytest.raises(ValueError, match="different seed"):
        train_mini_suite(tmp_path / "a", arch, corpus=CORPUS, progress=False, seed=1)


def test_checkpoint_schedule_is_pythia_like():
    a = MiniArch(4, 64, 2, steps=1500, n_regular=15)
    assert a.checkpoints() == [0, 1, 2, 4, 8, 16, 32, 64] + list(range(100, 1501, 100))
    assert MiniArch(2, 16, 2, steps=7, n_regular=3).checkpoints() == [0, 1, 2, 4, 6, 7]


def test_presets_cover_the_required_variation():
    fast, full = MINI_PRESETS["fast"], MINI_PRESETS["full"]
    assert len(fast) >= 4 and len({(a.L, a.H, a.mlp_ratio) for a in fast}) == len(fast)
    assert len(full) >= 12
    assert {a.mlp_ratio for a in full} >= {2, 4, 8}
    assert len({a.H / a.d for a in full}) >= 3 and len({a.d / a.L for a in full}) >= 5
    for preset in MINI_PRESETS.values():
        assert len({a.name for a in preset}) == len(preset)


def test_stdlib_corpus_is_deterministic():
    a = load_corpus(None, max_bytes=1 << 16)
    assert a == load_corpus(None, max_bytes=1 << 16) and len(a) == 1 << 16


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        train_mini_suite(tmp_path, "huge")
    with pytest.raises(ValueError, match="head size"):
        MiniArch(2, 24, 2)
    with pytest.raises(ValueError, match="positive"):
        MiniArch(0, 16, 2)
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        train_mini_suite(tmp_path, "tiny", corpus=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="at least 4096"):
        train_mini_suite(tmp_path, "tiny", corpus=b"too short")
    with pytest.raises(TypeError, match="MiniArch"):
        train_mini_suite(tmp_path, [("not", "an", "arch")])
    with pytest.raises(ValueError, match="share a name"):
        train_mini_suite(tmp_path, [SWEEP[0], SWEEP[0]], corpus=CORPUS)


def test_progress_is_quiet_unless_asked(tmp_path, capfd):
    arch = [MiniArch(2, 16, 2, 2, steps=3, batch=2, seq_len=16, warmup=1, n_regular=1)]
    train_mini_suite(tmp_path / "q", arch, corpus=CORPUS)  # not a terminal: quiet
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    train_mini_suite(tmp_path / "p", arch, corpus=CORPUS, progress=True)
    out, err = capfd.readouterr()
    assert "mini-suite" in out + err


def test_two_worker_processes_give_the_same_data_as_one(tmp_path):
    """--workers 2: the tiny preset's two models train in two processes at once; every file
    of the dataset is byte for byte that of one process training them in turn."""
    import filecmp

    one = train_mini_suite(tmp_path / "one", "tiny", progress=False, workers=1)
    two = train_mini_suite(tmp_path / "two", "tiny", progress=False, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert len(files) > 10
    assert all(filecmp.cmp(one / f, two / f, shallow=False) for f in files)
