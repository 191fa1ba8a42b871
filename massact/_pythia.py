"""Source 1: statistics of Pythia checkpoints, one (model, step) task at a time.

For each model `EleutherAI/pythia-<size>` and checkpoint revision `step<N>`, the weights are
fetched (Hugging Face Hub, its cache, or a local folder), hashed, loaded alone in memory, run on
a fixed set of N token sequences, and only the per-layer statistics of each decoder layer's
output (forward hooks, massact._probe) are written as one task file of the dataset format
(massact._dataset). Finished tasks are skipped, so a killed sweep resumes where it stopped.

Provenance per task: revision, the Hub commit (the snapshot folder name; "" for local folders),
the sha256 of the weight files, the sha256 of the input token ids, and `duplicate_of`: some Hub
step branches serve the weights of another step (EleutherAI/pythia issues 195, 205, 206); when
any weight file of two steps is identical, every such step but the highest is flagged
`duplicate_of="step<highest>"` (the known bad branches serve the final model's weights).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ._dataset import (
    _read_manifest,
    frame_from_layer_stats,
    task_done,
    task_path,
    write_architectures,
    write_task,
)
from ._probe import collect_layer_stats

log = logging.getLogger("massact.pythia")

SUITE = "pythia"
HUB_ORG = "EleutherAI"
FINAL_STEP = 143000
# 0, 1, 2, 4, ..., 512, then every 1000 steps: the 154 checkpoints of every Pythia model
PYTHIA_STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, FINAL_STEP + 1, 1000))
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".jsonl")


@dataclass(frozen=True)
class PythiaArch:
    """Pythia architecture: d_ff = 4d, rotary on 25% of head dims (base 10000), parallel
    residual attention + MLP."""

    L: int
    d: int
    H: int
    d_ff: int
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    parallel_residual: bool = True


PYTHIA_ARCHS: dict[str, PythiaArch] = {
    size: PythiaArch(L, d, H, 4 * d)
    for size, (L, d, H) in {
        "14m": (6, 128, 4),
        "31m": (6, 256, 8),
        "70m": (6, 512, 8),
        "160m": (12, 768, 12),
        "410m": (24, 1024, 16),
        "1b": (16, 2048, 8),
        "1.4b": (24, 2048, 16),
        "2.8b": (32, 2560, 32),
        "6.9b": (32, 4096, 32),
        "12b": (36, 5120, 40),
    }.items()
}
# The paper's nine models (188 decoder layers): every size but 31m.
PAPER_MODELS: tuple[str, ...] = tuple(s for s in PYTHIA_ARCHS if s != "31m")


def paper_steps(model: str | int | None = None, n: int = 37) -> list[int]:
    """n regularly spaced checkpoints (the paper used at least 37 per model).

    Targets are evenly spaced over 0..143000 and snapped to the nearest checkpoint of
    PYTHIA_STEPS, so the first is step 0 and the last step 143000. `model` (a Pythia size or
    name, accepted for symmetry with per-model schedules) must be known when given; an int in
    its place is taken as n.
    """
    if isinstance(model, int) and not isinstance(model, bool):
        model, n = None, model
    if model is not None:
        _size_of(model, allow_unknown=False)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= len(PYTHIA_STEPS):
        raise ValueError(f"n must be an int in 2..{len(PYTHIA_STEPS)}, got {n!r}")
    steps = np.asarray(PYTHIA_STEPS)
    picked: list[int] = []
    for target in np.linspace(0, FINAL_STEP, n):
        free = [s for s in steps if s not in picked]
        picked.append(int(min(free, key=lambda s: (abs(s - target), s))))
    return sorted(picked)


def select_steps(spec: str | int | Sequence[int] | None = "paper") -> list[int]:
    """Steps from a choice: "all", "paper" (37 regularly spaced), an int k (every k-th
    checkpoint, always ending at the final one), or an explicit list of schedule steps."""
    if spec is None or spec == "all":
        return list(PYTHIA_STEPS)
    if spec == "paper":
        return paper_steps()
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"every-k step choice needs k >= 1, got {spec}")
        picked = list(PYTHIA_STEPS[::spec])
        return picked if picked[-1] == FINAL_STEP else [*picked, FINAL_STEP]
    if isinstance(spec, str):
        raise ValueError(f"steps must be 'all', 'paper', an int k or a list, got {spec!r}")
    steps = sorted({int(s) for s in spec})
    bad = [s for s in steps if s not in PYTHIA_STEPS]
    if bad or not steps:
        raise ValueError(f"steps {bad or '[]'} are not Pythia checkpoints (see PYTHIA_STEPS)")
    return steps


def _size_of(model: str, *, allow_unknown: bool) -> str:
    """'EleutherAI/pythia-70m' | 'pythia-70m' | '70m' -> '70m'."""
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"a Pythia model is named by a string like '70m', got {model!r}")
    size = model.strip().lower().removeprefix(f"{HUB_ORG.lower()}/").removeprefix("pythia-")
    if size not in PYTHIA_ARCHS and not allow_unknown:
        raise ValueError(
            f"unknown Pythia size {model!r}; known: {', '.join(PYTHIA_ARCHS)} "
            "(other names work only with local_root=...)"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9._+-]*", size):
        raise ValueError(f"bad model name {model!r}")
    return size


# --------------------------------------------------------------------------- inputs


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
    if _offline():
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


# --------------------------------------------------------------------------- checkpoints


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


def _offline() -> bool:
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
    offline = _offline()
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


def _rotary(config: Any) -> tuple[float, float]:
    """(rotary_pct, rotary_base) from v4 fields or transformers v5 `rope_parameters`."""
    rope = getattr(config, "rope_parameters", None) or {}
    pct = getattr(config, "rotary_pct", None)
    base = getattr(config, "rotary_emb_base", None)
    pct = rope.get("partial_rotary_factor", pct) if pct is None else pct
    base = rope.get("rope_theta", base) if base is None else base
    return float(1.0 if pct is None else pct), float(10000.0 if base is None else base)


def architecture_row(model_name: str, config: Any, n_params: int, max_step: int) -> dict:
    pct, base = _rotary(config)
    return {
        "suite": SUITE,
        "model": model_name,
        "L": int(config.num_hidden_layers),
        "d": int(config.hidden_size),
        "H": int(config.num_attention_heads),
        "d_ff": int(config.intermediate_size),
        "rotary_pct": pct,
        "rotary_base": base,
        "n_params": int(n_params),
        "max_step": int(max_step),
        "vocab_size": int(config.vocab_size),
        "parallel_residual": bool(getattr(config, "use_parallel_residual", True)),
    }


def _dtype_for(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
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


# --------------------------------------------------------------------------- one task


def extract_stats(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    k: int = 3,
    batch_size: int | None = None,
    backend: str = "auto",
) -> list[list[Any]]:
    """Per-layer LayerStats of each decoder layer's output, concatenated over batches.

    Runs the base model only (no LM head, no KV cache): logits of [10, 2048, 50k] would cost
    more memory than every hidden state together. Returns one [LayerStats-like] per layer with
    top [n_seqs, k] and median [n_seqs] on the CPU.
    """
    base = getattr(model, "gpt_neox", model)
    device = next(model.parameters()).device
    bs = batch_size or input_ids.shape[0]
    per_layer: list[list[Any]] = []
    with torch.no_grad(), collect_layer_stats(base, k, backend=backend) as col:
        for start in range(0, input_ids.shape[0], bs):
            base(input_ids[start : start + bs].to(device), use_cache=False)
    for p in col.passes:
        for layer, st in enumerate(p):
            if len(per_layer) <= layer:
                per_layer.append([])
            per_layer[layer].append(st.cpu())
    return [
        [torch.cat([st.top for st in sts]), torch.cat([st.median for st in sts])]
        for sts in per_layer
    ]


@dataclass
class _Stats:  # the two fields frame_from_layer_stats reads
    top: torch.Tensor
    median: torch.Tensor


def run_task(
    out: str | os.PathLike,
    model_name: str,
    checkpoint: Checkpoint,
    input_ids: torch.Tensor,
    *,
    k: int = 3,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    duplicate_of: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """One (model, step) task: load the checkpoint, probe it, write one task file.

    A pure function of its inputs (checkpoint files, token ids, options) -> one Parquet file;
    the model is freed before returning. Returns the task file's path.
    """
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    dt = _dtype_for(dev, dtype)
    model = load_model(checkpoint.folder, dt, dev)
    try:
        per_layer = extract_stats(model, input_ids, k=k, batch_size=batch_size)
    finally:
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    frame = frame_from_layer_stats(
        [_Stats(top, med) for top, med in per_layer],
        suite=SUITE,
        model=model_name,
        step=checkpoint.step,
    )
    provenance = {
        "source": "pythia",
        "revision": checkpoint.revision,
        "commit": checkpoint.commit,
        "weights_sha256": checkpoint.weights_sha256,
        "input_sha256": input_sha256(input_ids),
        "duplicate_of": duplicate_of,
        "weight_files": json.dumps(checkpoint.weight_files, sort_keys=True),
        "dtype": str(dt).removeprefix("torch."),
        "device": dev.type,
        **dict(extra or {}),
    }
    return write_task(out, frame, provenance)


# --------------------------------------------------------------------------- the sweep


def _n_params(config: Any) -> int:
    """Parameter count without allocating: the model built on the meta device."""
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def _known_files(out: Path, model_name: str) -> dict[int, dict]:
    """step -> manifest entry of this model's finished tasks."""
    if not (out / "manifest.json").exists():
        return {}
    tasks = _read_manifest(out)["tasks"]
    return {
        int(e["step"]): e
        for e in tasks.values()
        if e.get("model") == model_name and e.get("provenance", {}).get("source") == "pythia"
    }


def _file_hashes(provenance: Mapping[str, Any]) -> set[str]:
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


def _reflag(out: Path, model_name: str, entries: Mapping[int, dict], flags: Mapping[int, str]):
    """Rewrite finished tasks whose duplicate_of changed (statistics untouched)."""
    for step, entry in entries.items():
        prov = dict(entry.get("provenance", {}))
        if prov.get("duplicate_of", "") == flags.get(step, ""):
            continue
        prov["duplicate_of"] = flags.get(step, "")
        frame = pd.read_parquet(task_path(out, model_name, step))
        write_task(out, frame, prov)
        log.warning("%s step %d: duplicate_of set to %r", model_name, step, prov["duplicate_of"])


def sweep_pythia(
    models: str | Sequence[str],
    steps: str | int | Sequence[int] | None,
    out: str | os.PathLike,
    *,
    text: str | os.PathLike | Sequence[str],
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    revision_map: Mapping[Any, Any] | None = None,
    local_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    batch_size: int | None = None,
) -> Path:
    """Statistics of Pythia checkpoints into the dataset at `out`; returns `out`.

    models: sizes or names ("70m", "pythia-70m", "EleutherAI/pythia-70m"), or "paper" (the
    paper's nine) or "all". steps: "all" (154), "paper" (37 regularly spaced), an int k (every
    k-th, ending at 143000) or a list of schedule steps; with local_root, any non-negative ints.
    text: local text file/folder (.txt/.md/.rst/.jsonl), a list of documents, or a Hugging Face
    dataset id (online, needs `datasets`). n_seqs x seq_len tokens are drawn with `seed`.
    dtype/device: default bf16 (fp16 without bf16) on CUDA, fp32 on the CPU.
    revision_map: {step: revision} or {model: {step: revision}} overriding "step<N>".
    local_root: read `<local_root>/pythia-<size>/step<N>/` (or `<size>/step<N>/`)
    save_pretrained folders instead of the Hub; HF_HUB_OFFLINE=1 makes the Hub cache-only.
    Finished tasks in `out` are skipped; one model is in memory at a time. max_step in the
    architecture rows is 143000 for Pythia sizes, else the highest step of this call.
    """
    out = Path(out)
    if isinstance(models, str):
        models = {"paper": list(PAPER_MODELS), "all": list(PYTHIA_ARCHS)}.get(models, [models])
    if not models:
        raise ValueError("models is empty: name at least one Pythia size, e.g. ['70m']")
    if dtype is not None:
        _dtype_for(torch.device("cpu"), dtype)  # reject a bad dtype before any download
    if local_root is not None and not Path(local_root).is_dir():
        raise FileNotFoundError(f"local_root {local_root} is not a folder")
    if local_root is not None and not isinstance(steps, str) and not isinstance(steps, int):
        step_list = sorted({int(s) for s in (steps or [])})
        if not step_list or step_list[0] < 0:
            raise ValueError(f"steps must be non-negative ints, got {steps!r}")
    else:
        step_list = select_steps(steps)
    for name in models:
        size = _size_of(name, allow_unknown=local_root is not None)
        _sweep_model(
            size,
            step_list,
            out,
            text=text,
            n_seqs=n_seqs,
            seq_len=seq_len,
            seed=seed,
            dtype=dtype,
            device=device,
            revisions=_revisions(revision_map, size),
            local_root=local_root,
            cache_dir=cache_dir,
            k=k,
            batch_size=batch_size,
        )
    return out


def _revisions(revision_map: Mapping[Any, Any] | None, size: str) -> dict[int, str]:
    if not revision_map:
        return {}
    for key in (size, f"pythia-{size}", f"{HUB_ORG}/pythia-{size}"):
        if isinstance(revision_map.get(key), Mapping):
            return {int(s): str(r) for s, r in revision_map[key].items()}
    return {int(s): str(r) for s, r in revision_map.items() if not isinstance(r, Mapping)}


def _tokenizer(folder: Path, size: str, local_root, cache_dir) -> Any:
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
        f"{HUB_ORG}/pythia-{size}", cache_dir=cache_dir, local_files_only=_offline()
    )


def _sweep_model(
    size: str,
    steps: list[int],
    out: Path,
    *,
    text,
    n_seqs,
    seq_len,
    seed,
    dtype,
    device,
    revisions,
    local_root,
    cache_dir,
    k,
    batch_size,
) -> None:
    from transformers import GPTNeoXConfig

    model_name = f"pythia-{size}"
    todo = [s for s in steps if not task_done(out, model_name, s)]
    arch_path = out / "architectures.parquet"
    has_arch = arch_path.exists() and model_name in set(pd.read_parquet(arch_path)["model"])
    if not todo and has_arch:
        log.info("%s: all %d steps already done", model_name, len(steps))
        return
    max_step = FINAL_STEP if size in PYTHIA_ARCHS else max(steps)

    def resolve(step: int) -> Checkpoint:
        return resolve_checkpoint(
            size, step, revision=revisions.get(step), local_root=local_root, cache_dir=cache_dir
        )

    first = resolve(todo[0] if todo else steps[-1])
    config = GPTNeoXConfig.from_pretrained(first.folder)
    write_architectures(
        out, pd.DataFrame([architecture_row(model_name, config, _n_params(config), max_step)])
    )
    if not todo:
        return
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"seq_len {seq_len} exceeds {model_name}'s context of "
            f"{config.max_position_embeddings} tokens"
        )
    tokenizer = _tokenizer(first.folder, size, local_root, cache_dir)
    input_ids = make_inputs(tokenizer, text, n_seqs, seq_len, seed)
    text_name = f"<{len(text)} documents>" if isinstance(text, list | tuple) else str(text)
    extra = {
        "text": text_name,
        "n_seqs": n_seqs,
        "seq_len": seq_len,
        "seed": seed,
        "source_path": str(local_root) if local_root is not None else "",
    }
    for i, step in enumerate(todo):
        ckpt = first if i == 0 else resolve(step)
        done = _known_files(out, model_name)
        hashes = {s: _file_hashes(e.get("provenance", {})) for s, e in done.items()}
        hashes[step] = set(ckpt.weight_files.values())
        flags = duplicate_flags(hashes)
        log.info("%s step %d: %s", model_name, step, ckpt.folder)
        run_task(
            out,
            model_name,
            ckpt,
            input_ids,
            k=k,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            duplicate_of=flags[step],
            extra=extra,
        )
        _reflag(out, model_name, done, flags)
