"""File-system helpers of the dataset format: atomic writes and the metadata lock.

`atomic_writer` / `atomic_write_bytes` / `atomic_write_text` write a file so that readers see
the old one or the whole new one (temporary file in the same folder, fsync, then `os.replace`;
the file gets the usual permissions, 0o666 less the umask); every file a later run or reader
relies on goes through them (task files, manifest, derived outputs). `_locked` serialises the
read-modify-write of a dataset's metadata (manifest, architectures, notes) across processes.
Imports: the standard library only.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read by setting and restoring it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[io.BufferedWriter]:
    """Binary file object whose contents replace `path` atomically when the block ends.

    The data goes to a temporary file '.<name>.<random>.tmp' in the same folder (created with
    the parents if needed), is flushed and fsynced, gets mode 0o666 less the umask (what a plain
    open() would give, not mkstemp's 0600), then `os.replace`s `path`. Readers see the old file
    or the whole new one; if the block raises (kill, full disk), the old file is untouched and
    the temporary file removed. An OSError without a file name (ENOSPC...) gets `path` as its
    file name, so the message says which output could not be written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    See `atomic_writer` (same folder temporary file, fsync, os.replace, mode 0o666 & ~umask,
    the path named in OSErrors). Use it for every file a later run or reader relies on.
    """
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` of `text` encoded with `encoding` (UTF-8 by default)."""
    atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive lock on the dataset's metadata (manifest, architectures, notes)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # non-POSIX: single-writer assumption
        yield
        return
    with open(root / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
