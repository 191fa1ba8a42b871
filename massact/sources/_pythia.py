"""Source 1: statistics of Pythia checkpoints, one (model, step) task at a time.

For each model `EleutherAI/pythia-<size>` and checkpoint revision `step<N>`, the weights are
fetched (Hugging Face Hub, its cache, or a local folder), hashed, loaded alone in memory, run on
a fixed set of N token sequences, and only the per-layer statistics of each decoder layer's
output (forward hooks, massact.probe._hooks) are written as one task file of the dataset format
(massact.dataset._load). Finished tasks are skipped, so a killed sweep resumes where it stopped.

Provenance per task: revision, the Hub commit (the snapshot folder name; "" for local folders),
the sha256 of the weight files, the sha256 of the input token ids, and `duplicate_of`: some Hub
step branches serve the weights of another step (EleutherAI/pythia issues 195, 205, 206); when
any weight file of two steps is identical, every such step but the highest is flagged
`duplicate_of="step<highest>"` (the known bad branches serve the final model's weights).

This module holds the schedules, the per-task probe and the sweep; the probe inputs live in
massact.sources._pythia_inputs and checkpoint resolution, loading and weight hashing in
massact.sources._pythia_checkpoints (their names are re-exported here).
"""

from __future__ import annotations

import gc
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

from ..dataset import (
    frame_from_layer_stats,
    read_manifest,
    task_done,
    task_path,
    write_architectures,
    write_task,
)
from ..probe import collect_layer_stats
from ._pythia_archs import FINAL_STEP as FINAL_STEP
from ._pythia_archs import PAPER_MODELS as PAPER_MODELS
from ._pythia_archs import PYTHIA_ARCHS as PYTHIA_ARCHS
from ._pythia_archs import PYTHIA_STEPS as PYTHIA_STEPS
from ._pythia_archs import PythiaArch as PythiaArch
from ._pythia_checkpoints import HUB_ORG as HUB_ORG
from ._pythia_checkpoints import Checkpoint as Checkpoint
from ._pythia_checkpoints import duplicate_flags as duplicate_flags
from ._pythia_checkpoints import extraction_dtype, load_tokenizer, task_weight_hashes
from ._pythia_checkpoints import file_sha256 as file_sha256
from ._pythia_checkpoints import load_model as load_model
from ._pythia_checkpoints import resolve_checkpoint as resolve_checkpoint
from ._pythia_inputs import input_sha256 as input_sha256
from ._pythia_inputs import make_inputs as make_inputs

log = logging.getLogger("massact.pythia")

SUITE = "pythia"


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
    dt = extraction_dtype(dev, dtype)
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
    tasks = read_manifest(out)["tasks"]
    return {
        int(e["step"]): e
        for e in tasks.values()
        if e.get("model") == model_name and e.get("provenance", {}).get("source") == "pythia"
    }


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
        extraction_dtype(torch.device("cpu"), dtype)  # reject a bad dtype before any download
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
    tokenizer = load_tokenizer(first.folder, size, local_root, cache_dir)
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
        hashes = {s: task_weight_hashes(e.get("provenance", {})) for s, e in done.items()}
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
