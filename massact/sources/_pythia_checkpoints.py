"""Where a Pythia checkpoint lives and what it is: Hub, Hub cache or local folder; weight hashes.

`resolve_checkpoint` finds (downloading when online and needed) one (model, step) revision and
hashes its weight files; `load_model` loads it alone in memory. Some Hub step branches serve the
weights of another step (EleutherAI/pythia issues 195, 205, 206): `duplicate_flags` marks every
step that shares any weight file with a higher step as `duplicate_of="step<highest>"` (the known
bad branches serve the final model's weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HUB_ORG = "EleutherAI"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Checkpoint:
    """Where one (model, step) lives on disk, and what it is."""

    size: str
    step: int
    folder: Path  # a save_pretrained folder (local) or a Hub snapshot folder
    revision: str
    commit: str  # Hub commit sha; "" for local folders
    weight_files: dict[str, str]  # file name -> sha256

    @property
    def weights_sha256(self) -> str:
        """sha256 over the sorted (file name, file sha256) pairs of the weight files."""
        blob = "\n".join(f"{n} {h}" for n, h in sorted(self.weight_files.items()))
        return hashlib.sha256(blob.encode()).hexdigest()


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is off (HF_HUB_OFFLINE): checkpoints come from the cache."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in ("1", "true", "yes", "on")


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weight_hashes(folder: Path, *, trust_hub_cache: bool = False) -> dict[str, str]:
    """file name -> sha256 of each weight file in `folder`.

    In a Hub cache snapshot a weight file is a link to `blobs/<sha256>` (the LFS object id,
    which huggingface_hub verified on download), so with trust_hub_cache the blob name is used
    instead of re-reading tens of GB per checkpoint.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    out = {}
    for p in files:
        blob = Path(os.path.realpath(p)).name
        hub_sha = trust_hub_cache and re.fullmatch(r"[0-9a-f]{64}", blob)
        out[p.name] = blob if hub_sha else file_sha256(p)
    return out


def _local_folder(local_root: Path, size: str, step: int) -> Path:
    candidates = [local_root / f"pythia-{size}" / f"step{step}", local_root / size / f"step{step}"]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise FileNotFoundError(
        f"no checkpoint for pythia-{size} step {step} under {local_root}: expected a "
        f"save_pretrained folder (with config.json) at {candidates[0]} or {candidates[1]}"
    )


def _hub_folder(size: str, revision: str, cache_dir: Path | None) -> tuple[Path, str]:
    """Download (or find in the cache) one revision; returns (snapshot folder, commit)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    repo = f"{HUB_ORG}/pythia-{size}"
    offline = hub_offline()
    meta = ["*.json", "*.txt", "tokenizer*"]
    folder = None
    try:
        # safetensors first; older revisions may only have pytorch_model.bin
        for weights in (["*.safetensors"], ["*.bin"]):
            folder = Path(
                snapshot_download(
                    repo,
                    revision=revision,
                    cache_dir=cache_dir,
                    allow_patterns=meta + weights,
                    local_files_only=offline,
                )
            )
            if any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir()):
                break
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        how = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise RuntimeError(
            f"{repo} revision {revision} is not in the local Hugging Face cache and {how}; "
            "go online once to fill the cache, or pass local_root=<folder with "
            f"pythia-{size}/step<N>/ save_pretrained folders>"
        ) from exc
    assert folder is not None
    # Hub snapshots live in .../snapshots/<commit sha>/
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else ""
    return folder, commit


def resolve_checkpoint(
    size: str,
    step: int,
    *,
    revision: str | None = None,
    local_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Checkpoint:
    """Locate (downloading if online and needed) one checkpoint and hash its weight files."""
    revision = revision or f"step{step}"
    if local_root is not None:
        root = Path(local_root)
        if not root.is_dir():
            raise FileNotFoundError(f"local_root {root} is not a folder")
        folder, commit = _local_folder(root, size, step), ""
    else:
        folder, commit = _hub_folder(size, revision, Path(cache_dir) if cache_dir else None)
    hashes = _weight_hashes(folder, trust_hub_cache=local_root is None)
    return Checkpoint(size, step, folder, revision, commit, hashes)


def extraction_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """The dtype to run a checkpoint in: `dtype` checked, or bf16/fp16 on CUDA, fp32 on CPU."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return dtype


def load_model(folder: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    import transformers
    from transformers import GPTNeoXForCausalLM

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = GPTNeoXForCausalLM.from_pretrained(folder, **{key: dtype})
    return model.to(device).eval()


def load_tokenizer(folder: Path, size: str, local_root, cache_dir) -> Any:
    """The checkpoint's tokenizer; the Hub repo's main one if the checkpoint has none."""
    from transformers import AutoTokenizer

    # transformers v5 builds an empty tokenizer from config.json alone: look for real files
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        return AutoTokenizer.from_pretrained(folder)
    if local_root is not None:
        raise FileNotFoundError(
            f"no tokenizer files (tokenizer.json, vocab.json) in {folder}: save the tokenizer "
            "there too (tokenizer.save_pretrained(folder))"
        )
    return AutoTokenizer.from_pretrained(
        f"{HUB_ORG}/pythia-{size}", cache_dir=cache_dir, local_files_only=hub_offline()
    )


def task_weight_hashes(provenance: Mapping[str, Any]) -> set[str]:
    """The per-file weight hashes of a task (its combined hash if it has none; never "")."""
    try:
        files = set(json.loads(provenance.get("weight_files") or "{}").values())
    except (TypeError, ValueError):
        files = set()
    return (files or {provenance.get("weights_sha256", "")}) - {""}


def duplicate_flags(hashes: Mapping[int, set[str]]) -> dict[int, str]:
    """step -> "step<M>" where M is the highest other step sharing any weight file, else "".

    Only steps below their highest partner are flagged: the bad Hub branches known so far serve
    the final model's weights (or one of its shards) under an earlier step's name. The result
    depends only on the set of steps, not on the order they were processed in.
    """
    flags = {}
    for t, files in hashes.items():
        partners = [u for u, other in hashes.items() if u != t and files & other]
        top = max(partners, default=t)
        flags[t] = f"step{top}" if top > t else ""
    return flags
