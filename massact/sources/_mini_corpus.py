"""The mini-suite's byte-level data: the corpus (the installed standard library's source text,
or the user's), the train/held-out split, the probe set, batches, and the seeds and hashes that
make every run reproducible."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

BOS = 256  # byte values are 0..255
VOCAB = 257
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idlelib"}


def load_corpus(corpus: str | os.PathLike | bytes | None = None, max_bytes: int = 4 << 20) -> bytes:
    """The training text as bytes, deterministic for a given machine and argument.

    None: the .py files under the Python standard library (sysconfig 'stdlib'), in sorted
    relative-path order, without tests and third-party folders, up to `max_bytes`.
    A path: that file, or every regular file under that folder in sorted order. bytes: as is.
    Every source is cut to its first `max_bytes` bytes.
    """
    if isinstance(corpus, bytes):
        data = corpus
    elif corpus is None:
        data = _stdlib_text(max_bytes)
    else:
        path = Path(corpus)
        if path.is_file():
            data = path.read_bytes()
        elif path.is_dir():
            files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
            data = b"".join(p.read_bytes() for p in files)
        else:
            raise FileNotFoundError(f"corpus {path} is neither a file nor a folder")
    data = data[:max_bytes]
    if len(data) < 4096:
        raise ValueError(
            f"the corpus has {len(data)} bytes; the mini-suite needs at least 4096 "
            "(pass a larger text file, or corpus=None for the Python standard library)"
        )
    return data


def _stdlib_text(max_bytes: int) -> bytes:
    """Standard-library .py files, walked in sorted order, until max_bytes are read."""
    base = sysconfig.get_paths()["stdlib"]
    chunks, total = [], 0
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_PARTS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            chunks.append(Path(dirpath, name).read_bytes())
            total += len(chunks[-1])
            if total >= max_bytes:
                return b"".join(chunks)
    return b"".join(chunks)


REPEAT_CHUNK = (4, 16)  # bytes per chunk of the "repeat" text form, inclusive


def text_form(data: bytes, form: str) -> bytes:
    """The corpus as a model trains on it: "plain" as is, or "repeat": cut into chunks of 4-16
    bytes (lengths from a fixed-seed generator, so the same on every machine), each written twice
    in a row. During a chunk's first instance copying heads have nothing to copy and rest on the
    BOS token: the attention sinks that grow massive activations in models this small."""
    if form == "plain":
        return data
    if form != "repeat":
        raise ValueError(f"unknown text form {form!r}: use 'plain' or 'repeat'")
    lo, hi = REPEAT_CHUNK
    lengths = np.random.default_rng(int_seed("repeat", lo, hi)).integers(
        lo, hi + 1, size=len(data) // lo + 1
    )
    ends = np.cumsum(lengths)
    starts = ends - lengths
    parts = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        if a >= len(data):
            break
        parts.append(data[a:b] * 2)
    return b"".join(parts)


def split_corpus(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) byte tensors: the last 10% is held out for the probe set."""
    tokens = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    split = int(len(tokens) * 0.9)
    return tokens[:split], tokens[split:]


def probe_set(held: torch.Tensor, *, seed: int, n_probe: int, seq_len: int) -> torch.Tensor:
    """The fixed probe batch [n_probe, seq_len]: BOS + held-out bytes at seeded offsets."""
    if len(held) <= seq_len:
        raise ValueError(f"the held-out corpus ({len(held)} bytes) is too short for {seq_len}")
    gen = torch.Generator().manual_seed(int_seed("probe", seed, n_probe, seq_len))
    offsets = torch.randint(0, len(held) - seq_len, (n_probe,), generator=gen)
    return sample_sequences(held, offsets, seq_len)


def sample_sequences(data: torch.Tensor, offsets: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[n, seq_len] token ids: BOS, then seq_len - 1 bytes of `data` from each offset."""
    idx = offsets[:, None] + torch.arange(seq_len - 1)
    body = data[idx].long()
    return torch.cat([torch.full((len(offsets), 1), BOS, dtype=torch.long), body], dim=1)


def int_seed(*parts: object) -> int:
    """A 56-bit seed derived from `parts` (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (e.g. the probe set's token ids)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names and raw bytes, in sorted name order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
