"""--engine ray on a local Ray with 2 CPUs (one instance shared by this module's tests): the
datasets are those of --engine local, file for file, also when a worker is killed mid-task;
a task that always fails is named and the others complete.

Checkpoint sweeps run on save_pretrained folders of tiny GPTNeoX and Llama models whose
revisions are named as two real suites name them (Pythia: step1000; OLMo:
stage1-step1000-tokens4B). No network.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from _checkpoints import VOCAB, save_checkpoint, write_corpus
from _models import tiny_llama, tiny_neox

import massact.sources._mini_suite as mini_suite
from massact import run as massact_run
from massact.dataset import remove_task, task_done, task_path
from massact.sources import SweepError, sweep_hf_suite, train_mini_suite

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

SEQ, NSEQ = 8, 3
REPOS = ["EleutherAI/neox-tiny", "allenai/llama-tiny"]
REVISIONS = {
    "neox-tiny": {"step0": 0, "step1000": 1, "step2000": 2},
    "llama-tiny": {"stage1-step0-tokens0B": 0, "stage1-step1000-tokens4B": 1},
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds)."""
    if ray.is_initialized():
        ray.shutdown()
    with warnings.catch_warnings():  # JAX (imported by earlier tests) warns at Ray's fork
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """Local roots of the two suites, a corpus, and the local engine's dataset of both."""
    tmp = tmp_path_factory.mktemp("suites")
    root = tmp / "local"
    for name, revisions in REVISIONS.items():
        for rev, seed in revisions.items():
            build = tiny_neox if name.startswith("neox") else tiny_llama
            save_checkpoint(root / name / rev, build(seed, vocab_size=VOCAB, hidden_size=32))
    corpus = write_corpus(tmp / "corpus.txt")
    local = tmp / "local_ds"
    sweep_hf_suite(REPOS, "all", local, **_kw(root, corpus))
    return root, corpus, local


@pytest.fixture(scope="module")
def tiny_local(tmp_path_factory):
    """The mini-suite "tiny" preset through the local engine."""
    return train_mini_suite(tmp_path_factory.mktemp("mini") / "local", "tiny", progress=False)


def _kw(root, corpus) -> dict:
    return dict(text=corpus, n_seqs=NSEQ, seq_len=SEQ, seed=2, local_root=root, progress=False)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def assert_same_files(got: Path, want: Path, skip=()) -> None:
    """The same files with the same bytes (training states and locks aside)."""
    names = [f for f in _files(want) if f.parts[0] not in (".mini_state", *skip)]
    assert [f for f in _files(got) if f.parts[0] not in (".mini_state", *skip)] == names
    different = [str(f) for f in names if not filecmp.cmp(got / f, want / f, shallow=False)]
    assert not different, f"files differ: {different}"


def test_checkpoint_sweep_on_ray_equals_local(local_ray, suites, tmp_path, monkeypatch):
    """Through the command line (--engine ray), as a user runs it; local Ray already up."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, corpus, local = suites
    out = tmp_path / "ray"
    argv = ["--source", "hf", "--repo", ",".join(REPOS), "--revisions", "all"]
    argv += ["--local-root", str(root), "--text", str(corpus), "--n-seqs", str(NSEQ)]
    argv += ["--seq-len", str(SEQ), "--seed", "2", "--engine", "ray", "--out", str(out)]
    assert massact_run.main([*argv, "--no-progress"], stages=("extract",)) == 0
    assert_same_files(out / "dataset", local)
    assert len(_files(local / "stats")) == 5
    assert ray.is_initialized()  # an instance the sweep did not start is left running


def test_mini_suite_on_ray_equals_local_with_a_worker_killed(local_ray, tiny_local, tmp_path):
    """The tiny preset, one Ray task per model; the worker running the first task seen is
    killed (SIGKILL, by its pid) mid-task; Ray reruns it; every task file is written once."""
    writes: list[tuple[str, int]] = []
    real_write = mini_suite.write_task

    def counted(root, frame, provenance):
        writes.append((str(frame["model"].iat[0]), int(frame["step"].iat[0])))
        return real_write(root, frame, provenance)

    killed: list[int] = []
    stop = threading.Event()

    def kill_a_running_task() -> None:
        while not stop.is_set() and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = proc.info["cmdline"] or []
                if cmd and cmd[0].startswith("ray::_model_task"):  # executing, not idle
                    time.sleep(0.05)
                    with contextlib.suppress(psutil.Error):
                        if proc.cmdline()[0].startswith("ray::_model_task"):  # still at it
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(proc.pid)
                            return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_running_task, daemon=True)
    mp = pytest.MonkeyPatch()
    mp.setattr(mini_suite, "write_task", counted)
    killer.start()
    try:
        out = train_mini_suite(tmp_path / "ray", "tiny", engine="ray", progress=False)
    finally:
        stop.set()
        killer.join()
        mp.undo()
    assert killed, "no Ray worker was seen running a task"
    assert len(writes) == len(set(writes)) == len(_files(tiny_local / "stats"))
    assert_same_files(out, tiny_local)
    # resume on Ray: finished tasks are skipped, a lost one is made again, the same bytes
    remove_task(out, "mini-L3-d32-H4-f4", 8)
    mp.setattr(mini_suite, "write_task", counted)
    writes.clear()
    try:
        train_mini_suite(out, "tiny", engine="ray", progress=False)
    finally:
        mp.undo()
    assert writes == [("mini-L3-d32-H4-f4", 8)]
    assert_same_files(out, tiny_local)


def test_failing_task_is_named_and_the_others_complete(local_ray, suites, tmp_path):
    root, corpus, local = suites
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "llama-tiny" / "stage1-step1000-tokens4B" / "model.safetensors").write_bytes(b"?")
    out = tmp_path / "ray"
    with pytest.raises(SweepError, match="1 of 5 tasks failed") as err:
        sweep_hf_suite(REPOS, "all", out, engine="ray", **_kw(broken, corpus))
    assert [f.name for f in err.value.failures] == ["llama-tiny/stage1-step1000-tokens4B"]
    assert not task_done(out, "llama-tiny", 1000)
    for step in (0, 1000, 2000):  # the same data; only the root they were read from differs
        got, want = (pd.read_parquet(task_path(d, "neox-tiny", step)) for d in (out, local))
        assert set(got["source_path"]) == {str(broken)}
        pd.testing.assert_frame_equal(
            got.drop(columns="source_path"), want.drop(columns="source_path"), check_exact=True
        )
