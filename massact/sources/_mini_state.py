"""The mini-suite's resumable training states: atomic saves under a per-model lock, and the
removal of what killed saves left behind (never a save in progress of another run)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: stale temp files are told by their age alone
    fcntl = None

_UNLOCKED_AGE_S = 300.0  # without file locks (Windows): a temp file this old is stale


@contextlib.contextmanager
def _save_lock(state_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Exclusive lock on `<state>.lock` for a save of the training state, or for clearing the
    leftovers of killed saves. Yields whether it is held (always True when waiting; False when
    `wait` is off and a save of another run is in progress). Without file locks: True."""
    if fcntl is None:
        yield True
        return
    state_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_path.with_name(state_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def save_state(path: Path, state: dict) -> None:
    """Atomic save (temporary file, then rename) under the state's lock, so that
    `remove_stale_saves` of a concurrent run never takes a save in progress for a killed one.
    A failed write (e.g. a full disk) is an OSError naming the file."""
    with _save_lock(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, (OSError, RuntimeError)):  # torch reports a short write as either
                detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise OSError(
                    f"cannot save the training state {path} (is the disk full?): {detail}"
                ) from e
            raise


def remove_stale_saves(state_path: Path, *, finished: bool = False) -> None:
    """Delete the temporary files of state saves that were killed midway, and only those:
    while another run holds the state's lock (a save in progress) nothing is touched. Without
    file locks, a temporary file is stale once older than `_UNLOCKED_AGE_S`.
    `finished`: the model's training is done; the state and its lock file go too."""
    with _save_lock(state_path, wait=False) as held:
        if not held:
            return
        for tmp in state_path.parent.glob(f".{state_path.name}.*"):
            try:
                old = time.time() - tmp.stat().st_mtime > _UNLOCKED_AGE_S
            except OSError:
                continue  # renamed or removed meanwhile
            if fcntl is not None or old:
                tmp.unlink(missing_ok=True)
        if finished:
            state_path.unlink(missing_ok=True)
            if fcntl is not None:
                state_path.with_name(state_path.name + ".lock").unlink(missing_ok=True)
