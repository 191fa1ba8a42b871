"""Derived outputs under faults and hostile input (issue 14, items 7, 9, 10, 11).

A full disk is simulated with RLIMIT_FSIZE: the kernel refuses to grow any file past the limit
(EFBIG, the same failure mode as ENOSPC: a write that stops midway, with no file name in the
error). With SIGXFSZ left at its default, the process is instead killed at that moment, which
is a kill -9 in the middle of writing an output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_predict import make_dataset
from test_report import build_dataset

from massact import cli
from massact.pipeline import RunSettings, SourceSettings, run_pipeline
from massact.predict import train_predictors
from massact.report import write_report

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """No file of this process may grow past `nbytes` (writes fail with EFBIG) in the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root except the dataset (relative path -> bytes)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "dataset" not in p.relative_to(root).parts
    }


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp") if "dataset" not in p.parts]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run: dataset, fits.parquet (pipeline) and the report; plus the stage data."""
    out = tmp_path_factory.mktemp("finished")
    build_dataset(out / "dataset")
    settings = RunSettings(source=SourceSettings(), out=out, stages=("fit",))
    state = run_pipeline(settings)
    write_report(out, state["dataset"], state["traj"], state["fit"])
    return out, settings, state


def _copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished[0], dst)
    return dst


# ----------------------------------------------------------------------- item 7 / 10: full disk
def test_full_disk_during_fit_output_keeps_the_last_good_copy(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = snapshot(out)
    settings = RunSettings(source=SourceSettings(), out=out, stages=("fit",))
    with file_size_limit(1000), pytest.raises(OSError) as err:
        run_pipeline(settings)
    assert "fits.parquet" in str(err.value)
    assert snapshot(out) == before and not temp_files(out)


@pytest.mark.parametrize("where", ["first file", "report.html"])
def test_full_disk_during_report_names_the_file_and_keeps_every_copy(finished, tmp_path, where):
    out = _copy(finished, tmp_path)
    before = snapshot(out)
    sizes = sorted(len(b) for b in before.values())
    assert len(before["report.html"]) == sizes[-1] > 2 * sizes[-2]
    limit = 100 if where == "first file" else (sizes[-1] + sizes[-2]) // 2
    state = finished[2]
    with file_size_limit(limit), pytest.raises(OSError) as err:
        write_report(out, state["dataset"], state["traj"], state["fit"])
    name = "fits.parquet" if where == "first file" else "report.html"
    assert str(out / name) in str(err.value), str(err.value)
    assert snapshot(out) == before and not temp_files(out)


def test_full_disk_while_saving_the_predictor_keeps_the_last_good_copy(tmp_path):
    data = make_dataset(n_models=5, seed=2)
    train_predictors(*data, out=tmp_path)
    before = snapshot(tmp_path)
    with file_size_limit(2000), pytest.raises(OSError) as err:
        train_predictors(*data, seed=1, out=tmp_path)
    assert "predictor.zip" in str(err.value)
    assert snapshot(tmp_path) == before and not temp_files(tmp_path)


_KILLED_CHILD = """
import pickle, resource, signal, sys
from massact.report import write_report
dataset, traj, fit = pickle.load(open(sys.argv[2], "rb"))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's default kills
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
write_report(sys.argv[1], dataset, traj, fit)
"""


def test_a_kill_while_writing_the_report_keeps_the_last_good_copy(finished, tmp_path):
    out = _copy(finished, tmp_path)
    before = snapshot(out)
    sizes = sorted(len(b) for b in before.values())
    state = finished[2]
    inputs = tmp_path / "inputs.pkl"  # the test's own objects, handed to the child
    inputs.write_bytes(pickle.dumps((state["dataset"], state["traj"], state["fit"])))
    limit = (sizes[-1] + sizes[-2]) // 2  # the child dies half way through report.html
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(out), str(inputs), str(limit)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-2000:]
    after = snapshot(out)
    assert after["report.html"] == before["report.html"]  # not a truncated copy
    # the files before it were rewritten whole (same inputs, same bytes); the killed write
    # leaves only its hidden temporary file, which nothing reads
    left = {k for k in after if k not in before}
    assert [Path(k).name.startswith(".report.html.") and k.endswith(".tmp") for k in left] == [True]
    assert {k: v for k, v in after.items() if k not in left} == before


# ----------------------------------------------------------------------- item 10: ok flags
@pytest.mark.parametrize(
    "ok", [lambda ok: np.where(ok, "True", "False"), lambda ok: ok.astype(float)]
)
def test_train_predictors_refuses_ok_that_is_not_boolean(ok):
    keys, params, flags = make_dataset(n_models=4)
    with pytest.raises(ValueError, match="ok must be a boolean array"):
        train_predictors(keys, params, ok(flags))
    with pytest.raises(ValueError, match="degenerate must be a boolean array"):
        train_predictors(keys, params, flags, degenerate=np.zeros(len(flags), int))


# ----------------------------------------------------------------------- item 9: --config
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([{"num_hidden_layers": 6}], "holds a JSON list, not an object"),
        ("gpt_neox", "holds a JSON string"),
        ({"num_hidden_layers": 6, "hidden_size": 128, "num_attention_heads": 4,
          "intermediate_size": 512, "rope_parameters": [0.25, 10000]},
         "rope_parameters must be an object, got a JSON list"),
        ({"num_hidden_layers": "six", "hidden_size": 128, "num_attention_heads": 4,
          "intermediate_size": 512}, "num_hidden_layers must be a positive integer"),
        ({"n_layer": 6, "n_embd": [128], "n_head": 4}, "n_embd must be a positive integer"),
        ({"num_hidden_layers": 6, "hidden_size": 128, "num_attention_heads": 4,
          "intermediate_size": 512, "rotary_pct": "a quarter"}, "rotary_pct"),
        ({"L": 6, "d": {"x": 1}, "H": 4}, "config d must be a positive integer"),
    ],
)  # fmt: skip
def test_bad_config_is_a_one_line_error(tmp_path, capsys, config, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code = cli.main(["predict", "--config", str(path), "--predictor", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("massact: error: "), err
    assert message in err


def test_binary_config_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(["predict", "--config", str(path), "--predictor", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid JSON" in err and str(path) in err


# ----------------------------------------------------------------------- item 11: read-only run
def _without_write_permission(cmd: list[str], folder: Path) -> list[str]:
    """`cmd` run so that `folder` (made read-only by the caller) cannot be written: as is for
    a normal user; for root, with CAP_DAC_OVERRIDE dropped (capsh)."""
    if os.geteuid() != 0:
        return cmd
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("running as root without capsh: cannot drop the right to write anywhere")
    drop = [capsh, "--drop=cap_dac_override", "--", "-c"]
    probe = subprocess.run([*drop, f"touch {shlex.quote(str(folder / 'probe'))}"],
                           capture_output=True)  # fmt: skip
    if probe.returncode == 0:
        (folder / "probe").unlink()
        pytest.skip("capsh could not take away the right to write")
    return [*drop, "exec " + shlex.join(cmd)]


def test_read_only_finished_run_is_a_one_line_error_naming_the_folder(tmp_path):
    out = tmp_path / "ro"
    build_dataset(out / "dataset")
    (out / "fits.parquet").write_bytes(b"last good copy")
    before = snapshot(out)
    paths = [out, *out.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for p in paths:
            p.chmod(modes[p] & ~0o222)
        cmd = [sys.executable, "-m", "massact.cli", "report", "--out", str(out)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASSACT_JAX_CACHE": "off"}
        start = time.monotonic()
        proc = subprocess.run(
            _without_write_permission(cmd, out),
            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
        )  # fmt: skip
        took = time.monotonic() - start
    finally:
        for p in paths:
            p.chmod(modes[p])
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert err.count("\n") == 1 and err.startswith("massact: error: "), err
    assert f"results folder {out} is not writable" in err
    assert "re-run to resume" not in err
    assert "fit ..." not in proc.stdout  # refused before any stage ran
    assert snapshot(out) == before and sorted(out.rglob("*")) == sorted(paths[1:])
    assert took < 120


# ----------------------------------------------------------------------- item 7: state temp files
def test_a_second_run_keeps_the_first_runs_state_save_in_progress(tmp_path):
    """A save holds the state's lock from before its temporary file exists until the rename:
    while another run holds it, nothing is removed; once free, every leftover of a killed save
    goes (even an empty one: a kill before the first buffered write leaves 0 bytes)."""
    from test_mini_suite import CORPUS

    from massact.sources._mini_state import remove_stale_saves
    from massact.sources._mini_suite import MiniArch, train_mini_suite

    arch = MiniArch(2, 16, 2, 2, steps=3, batch=2, seq_len=16, warmup=1, n_regular=1)
    state_dir = tmp_path / ".mini_state"
    state_dir.mkdir()
    state_path = state_dir / f"{arch.name}.pt"

    def temp(tag: str, data: bytes) -> Path:
        p = state_dir / f".{arch.name}.pt.{tag}.tmp"
        p.write_bytes(data)
        return p

    saving = temp("saving", b"half of a state")  # another run is writing it
    killed = temp("killed", b"")  # a save killed before its first write
    with open(state_path.with_name(state_path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as save_state holds it
        remove_stale_saves(state_path)
        assert saving.read_bytes() == b"half of a state" and killed.exists()
    saving.unlink()  # that run renamed its file
    train_mini_suite(tmp_path, [arch], corpus=CORPUS, progress=False)
    assert not killed.exists()
    assert not list(state_dir.iterdir()), "state, temporary and lock files are removed when done"


def test_a_full_disk_during_a_state_save_names_the_file(tmp_path):
    """torch reports a short write of a state as a RuntimeError about `inline_container.cc`;
    the save says which file it could not write, and leaves no temporary file."""
    import torch

    from massact.sources._mini_state import save_state

    state_path = tmp_path / ".mini_state" / "mini-L2-d16-H2-f2.pt"
    state = {"model": {"w": torch.zeros(50_000)}}
    with file_size_limit(32768), pytest.raises(OSError) as caught:
        save_state(state_path, state)
    message = str(caught.value)
    assert message.startswith(f"cannot save the training state {state_path} (is the disk full?)")
    assert not state_path.exists() and not list(state_path.parent.glob(".*.tmp"))
    save_state(state_path, state)  # space again: the save goes through
    assert torch.equal(torch.load(state_path, weights_only=True)["model"]["w"], state["model"]["w"])
