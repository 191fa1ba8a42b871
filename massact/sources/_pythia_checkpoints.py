"""Where a checkpoint lives and what it is: Hub, Hub cache or local folder; weight hashes.

Written for Pythia and used by every checkpointed suite (massact.sources._hf_suite): a
checkpoint is a revision of a Hub repo (or a local save_pretrained folder). `resolve_checkpoint`
finds one Pythia (model, step) revision; `hub_checkpoint` any repo's revision, either fetched
(downloading when online and needed) or, with fetch=False online, from the Hub's file metadata
alone (commit and LFS sha256 of each weight file, no download: the sweep's driver plans every
task before any weights move, and the task fetches exactly those files with `fetch_weights`).
`load_model` loads one checkpoint alone in memory. Some Hub step branches serve the weights of
another step (EleutherAI/pythia issues 195, 205, 206): `duplicate_flags` marks every step that
shares any weight file with a higher step as `duplicate_of="step<highest>"` (the known bad
branches serve the final model's weights).
"""

from __future__ import annotations

import contextlib
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
    """Where one (model, step) lives, and what it is."""

    size: str  # the model within its suite: a Pythia size, else the dataset's model name
    step: int
    folder: Path | None  # save_pretrained or Hub snapshot folder; None: not fetched yet
    revision: str
    commit: str  # Hub commit sha; "" for local folders
    weight_files: dict[str, str]  # file name -> sha256
    repo: str = ""  # the Hub repo id ("" for local folders)

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


_META_PATTERNS = ["*.json", "*.txt", "tokenizer*", "*.model"]


def _cache_missing(repo: str, revision: str, offline: bool, local_hint: str) -> RuntimeError:
    how = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
    return RuntimeError(
        f"{repo} revision {revision} is not in the local Hugging Face cache and {how}; "
        f"go online once to fill the cache, or pass local_root=<{local_hint}>"
    )


def hub_snapshot(
    repo: str,
    revision: str,
    cache_dir: Path | None,
    *,
    weights: list[str] | None = None,
    local_hint: str = "folder with <model>/<revision>/ save_pretrained folders",
) -> tuple[Path, str]:
    """Download (or find in the cache) one revision; returns (snapshot folder, commit).

    weights: the weight files to fetch; None = the *.safetensors files, else the *.bin ones
    (older revisions may only have pytorch_model.bin).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = hub_offline()
    folder = None
    choices = [weights] if weights else [["*.safetensors"], ["*.bin"]]
    try:
        for patterns in choices:
            folder = Path(
                snapshot_download(
                    repo,
                    revision=revision,
                    cache_dir=cache_dir,
                    allow_patterns=_META_PATTERNS + list(patterns),
                    local_files_only=offline,
                )
            )
            if any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir()):
                break
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise _cache_missing(repo, revision, offline, local_hint) from exc
    assert folder is not None
    # Hub snapshots live in .../snapshots/<commit sha>/
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else ""
    return folder, commit


def hub_weight_metadata(repo: str, revision: str) -> tuple[str, dict[str, str]] | None:
    """(commit, {weight file: sha256}) of an online revision from the Hub's file metadata (no
    download): the *.safetensors files, else the *.bin ones. None when a weight file has no LFS
    sha256 (small files kept in git): then the revision has to be fetched and hashed."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    files = [s for s in info.siblings or [] if "/" not in s.rfilename]
    for suffixes in ((".safetensors",), (".bin", ".pt", ".pth")):
        chosen = [s for s in files if s.rfilename.endswith(suffixes)]
        if chosen:
            break
    else:
        raise FileNotFoundError(
            f"{repo} revision {revision} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})"
        )
    if any(s.lfs is None or not getattr(s.lfs, "sha256", None) for s in chosen):
        return None
    return str(info.sha or ""), {s.rfilename: str(s.lfs.sha256) for s in chosen}


def hub_checkpoint(
    repo: str,
    name: str,
    step: int,
    revision: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    fetch: bool = True,
    local_hint: str = "folder with <model>/<revision>/ save_pretrained folders",
) -> Checkpoint:
    """One revision of a Hub repo: fetched (fetch=True, or offline: from the cache) with its
    weight files hashed from the cache's blob names, or, online with fetch=False, described by
    the Hub's metadata alone (folder None; `fetch_weights` downloads it later)."""
    cache = Path(cache_dir) if cache_dir else None
    if not fetch and not hub_offline():
        meta = hub_weight_metadata(repo, revision)
        if meta is not None:
            commit, files = meta
            return Checkpoint(name, step, None, revision, commit, files, repo)
    folder, commit = hub_snapshot(repo, revision, cache, local_hint=local_hint)
    hashes = _weight_hashes(folder, trust_hub_cache=True)
    return Checkpoint(name, step, folder, revision, commit, hashes, repo)


def fetch_weights(ckpt: Checkpoint, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a planned checkpoint on this machine, its weight files checked.

    A local folder is used as is (the driver hashed it). A Hub revision is fetched at its
    planned commit (from the cache when offline) and every weight file must have the sha256 the
    plan recorded: a branch moved or a file changed since planning is an error, not new data.
    """
    if not ckpt.repo:
        assert ckpt.folder is not None
        return ckpt.folder
    folder = ckpt.folder
    if folder is None or not folder.is_dir():
        cache = Path(cache_dir) if cache_dir else None
        folder, _ = hub_snapshot(
            ckpt.repo, ckpt.commit or ckpt.revision, cache, weights=sorted(ckpt.weight_files)
        )
    found = _weight_hashes(folder, trust_hub_cache=True)
    got = {name: found.get(name, "missing") for name in ckpt.weight_files}
    if got != ckpt.weight_files:
        raise RuntimeError(
            f"{ckpt.repo} revision {ckpt.revision}: weight files {got} differ from the planned "
            f"{ckpt.weight_files} (the revision changed since the sweep was planned)"
        )
    return folder


def resolve_checkpoint(
    size: str,
    step: int,
    *,
    revision: str | None = None,
    local_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    fetch: bool = True,
) -> Checkpoint:
    """Locate one Pythia checkpoint and hash its weight files (downloading it when online and
    needed; with fetch=False online, only its Hub metadata is read, see `hub_checkpoint`)."""
    revision = revision or f"step{step}"
    if local_root is not None:
        root = Path(local_root)
        if not root.is_dir():
            raise FileNotFoundError(f"local_root {root} is not a folder")
        folder = _local_folder(root, size, step)
        return Checkpoint(size, step, folder, revision, "", _weight_hashes(folder))
    return hub_checkpoint(
        f"{HUB_ORG}/pythia-{size}",
        size,
        step,
        revision,
        cache_dir=cache_dir,
        fetch=fetch,
        local_hint=f"folder with pythia-{size}/step<N>/ save_pretrained folders",
    )


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
    """A causal LM checkpoint (GPTNeoX, Llama, OLMo, ...: its config's class) in eval mode."""
    import transformers
    from transformers import AutoModelForCausalLM

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(folder, **{key: dtype})
    return model.to(device).eval()


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def load_tokenizer(
    folder: Path | None, repo: str, local_root, cache_dir, revision: str | None = None
) -> Any:
    """The checkpoint's tokenizer: from its folder; for a checkpoint not fetched yet, from the
    repo at that revision; else the repo's main one (a checkpoint folder without any)."""
    from transformers import AutoTokenizer

    # transformers v5 builds an empty tokenizer from config.json alone: look for real files
    if folder is not None and any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(folder)
    if local_root is not None:
        raise FileNotFoundError(
            f"no tokenizer files (tokenizer.json, vocab.json) in {folder}: save the tokenizer "
            "there too (tokenizer.save_pretrained(folder))"
        )
    offline = hub_offline()
    if folder is None and revision:
        with contextlib.suppress(OSError, ValueError):
            return AutoTokenizer.from_pretrained(
                repo, revision=revision, cache_dir=cache_dir, local_files_only=offline
            )
    return AutoTokenizer.from_pretrained(repo, cache_dir=cache_dir, local_files_only=offline)


def load_config(ckpt: Checkpoint, cache_dir=None) -> Any:
    """The checkpoint's transformers config (config.json only: no weights are fetched)."""
    from transformers import AutoConfig

    if ckpt.folder is not None:
        return AutoConfig.from_pretrained(ckpt.folder)
    return AutoConfig.from_pretrained(
        ckpt.repo,
        revision=ckpt.commit or ckpt.revision,
        cache_dir=cache_dir,
        local_files_only=hub_offline(),
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
