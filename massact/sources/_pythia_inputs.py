"""The fixed probe inputs of a Pythia sweep: documents -> token stream -> N random windows.

Text comes from a local file or folder (.txt/.text/.md/.rst, or .jsonl with a "text" field per
line as in RedPajama), a list of strings, or a Hugging Face dataset id (online, needs `datasets`).
`input_sha256` fingerprints the token ids so every task file records exactly what it saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._pythia_checkpoints import hub_offline

_TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".jsonl")


def _read_documents(text: str | os.PathLike | Sequence[str], budget_chars: int) -> list[str]:
    """Documents from a local file/folder, a list of strings, or a HF dataset id (online)."""
    if isinstance(text, Sequence) and not isinstance(text, str):
        return [str(t) for t in text]
    path = Path(text)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"text folder {path} holds no {'/'.join(_TEXT_SUFFIXES)} files")
    elif isinstance(text, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        return _hub_documents(text, budget_chars)
    else:
        raise FileNotFoundError(
            f"text {str(text)!r}: no such file or folder (give a local text file/folder, a list "
            "of strings, or a Hugging Face dataset id such as "
            "togethercomputer/RedPajama-Data-1T-Sample when online)"
        )
    docs: list[str] = []
    total = 0
    for f in files:  # read until the pool is large enough: a corpus may be gigabytes
        with open(f, encoding="utf-8", errors="replace") as fh:
            if f.suffix != ".jsonl":
                new = [fh.read(budget_chars - total)]
            else:  # one JSON object with a "text" field per line (RedPajama's format)
                new, size = [], 0
                for line in fh:
                    if line.strip():
                        new.append(str(json.loads(line).get("text", "")))
                        size += len(new[-1])
                    if total + size >= budget_chars:
                        break
        docs += [d for d in new if d.strip()]
        total += sum(len(d) for d in new)
        if total >= budget_chars:
            break
    return docs


def _hub_documents(dataset_id: str, budget_chars: int) -> list[str]:
    if hub_offline():
        raise RuntimeError(
            f"text {dataset_id!r} is a Hugging Face dataset id but HF_HUB_OFFLINE is set; "
            "pass a local text file or folder instead"
        )
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"reading the Hugging Face dataset {dataset_id!r} needs the `datasets` package "
            "(pip install datasets); or pass a local text file/folder"
        ) from exc
    docs, total = [], 0
    for row in datasets.load_dataset(dataset_id, split="train", streaming=True):
        doc = row.get("text", "")
        if doc.strip():
            docs.append(doc)
            total += len(doc)
        if total >= budget_chars:
            break
    return docs


def make_inputs(
    tokenizer: Any,
    text: str | os.PathLike | Sequence[str],
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    pool_factor: int = 16,
) -> torch.Tensor:
    """[n_seqs, seq_len] int64 token ids: random non-overlapping windows of the token stream.

    Documents are tokenised with the model's tokenizer and joined with its EOS token; the
    stream is cut into seq_len windows and n_seqs of them are drawn with `seed`. At most about
    n_seqs * seq_len * pool_factor tokens are read (the first documents), so a huge corpus costs
    a bounded amount. The same tokenizer, text and seed give the same ids on every machine.
    """
    for name, v in (("n_seqs", n_seqs), ("seq_len", seq_len), ("pool_factor", pool_factor)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    need = n_seqs * seq_len
    docs = _read_documents(text, budget_chars=need * pool_factor * 8)  # ~4 chars per token
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"]
        if eos is not None:
            stream.append(int(eos))
        if len(stream) >= need * pool_factor:
            break
    n_windows = len(stream) // seq_len
    if n_windows < n_seqs:
        raise ValueError(
            f"the text gives {len(stream)} tokens, {n_windows} windows of {seq_len}; "
            f"{n_seqs} sequences need {need} tokens: use more text, fewer or shorter sequences"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_windows, size=n_seqs, replace=False)
    ids = np.asarray(stream[: n_windows * seq_len], dtype=np.int64).reshape(n_windows, seq_len)
    return torch.from_numpy(ids[chosen].copy())


def input_sha256(input_ids: torch.Tensor) -> str:
    """sha256 of the int64 token ids (row-major), with the shape folded in."""
    ids = np.ascontiguousarray(input_ids.cpu().numpy().astype("<i8"))
    return hashlib.sha256(repr(ids.shape).encode() + ids.tobytes()).hexdigest()
