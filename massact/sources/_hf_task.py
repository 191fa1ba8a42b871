"""One (model, checkpoint) task of a Hugging Face suite sweep, and the architecture row of a
transformers config.

checkpoint_task runs where the engine puts it (this process, a local worker process or a Ray
worker): it loads one planned checkpoint (its weight files checked against the plan), probes it
with extract_stats and returns (statistics frame, provenance); the driver
(massact.sources._hf_suite) plans the tasks and writes what they return. architecture_row and
n_params_of read a config on the driver.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from ..dataset import frame_from_layer_stats
from ._pythia_checkpoints import Checkpoint, extraction_dtype, fetch_weights, load_model
from ._pythia_inputs import input_sha256


# --------------------------------------------------------------------------- architecture
def rotary(config: Any) -> tuple[float, float]:
    """(rotary fraction, rotary base) from v4 fields or transformers v5 `rope_parameters`."""
    rope = getattr(config, "rope_parameters", None) or {}
    pct = getattr(config, "rotary_pct", None)
    if pct is None:
        pct = getattr(config, "partial_rotary_factor", None)
    base = getattr(config, "rotary_emb_base", None)
    if base is None:
        base = getattr(config, "rope_theta", None)
    pct = rope.get("partial_rotary_factor", pct) if pct is None else pct
    base = rope.get("rope_theta", base) if base is None else base
    return float(1.0 if pct is None else pct), float(10000.0 if base is None else base)


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def architecture_row(
    suite: str, model_name: str, config: Any, n_params: int, max_step: int
) -> dict[str, Any]:
    """The dataset's architecture row of a transformers config (GQA and MoE fields where the
    config has them; a GPTNeoX config gives the Pythia row)."""
    d = int(_first(config, "hidden_size", "n_embd", "d_model"))
    pct, base = rotary(config)
    row: dict[str, Any] = {
        "suite": suite,
        "model": model_name,
        "L": int(_first(config, "num_hidden_layers", "n_layer", "num_layers")),
        "d": d,
        "H": int(_first(config, "num_attention_heads", "n_head")),
        "d_ff": int(_first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * d),
        "rotary_pct": pct,
        "rotary_base": base,
        "n_params": int(n_params),
        "max_step": int(max_step),
        "vocab_size": int(config.vocab_size),
        "parallel_residual": bool(getattr(config, "use_parallel_residual", False) or False),
    }
    optional = {
        "H_kv": ("num_key_value_heads",),
        "head_dim": ("head_dim",),
        "n_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
        "experts_per_token": ("num_experts_per_tok", "moe_top_k"),
        "d_ff_expert": ("moe_intermediate_size",),
    }
    for column, names in optional.items():
        value = _first(config, *names)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            row[column] = value
    return row


def n_params_of(config: Any) -> int:
    """Parameter count without allocating: the model built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


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
    more memory than every hidden state together. Returns one [top, median] per layer with
    top [n_seqs, k] and median [n_seqs] on the CPU.
    """
    from ..probe import collect_layer_stats

    base = getattr(model, "base_model", model)
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


@dataclass(frozen=True)
class CheckpointJob:
    """Everything one (model, checkpoint) task needs besides its input ids (picklable)."""

    suite: str
    model: str
    source: str
    ckpt: Checkpoint
    duplicate_of: str = ""
    k: int = 3
    dtype: str | None = None
    device: str | None = None
    batch_size: int | None = None
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_task(job: CheckpointJob, input_ids: torch.Tensor) -> tuple[pd.DataFrame, dict]:
    """Load one checkpoint, probe it, return (statistics frame, provenance); writes nothing.

    A pure function of its inputs (checkpoint files, token ids, options); the model is freed
    before returning. Runs on the driver (local engine) or a Ray worker.
    """
    dev = (
        torch.device(job.device)
        if job.device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    dt = extraction_dtype(dev, job.dtype)
    folder = fetch_weights(job.ckpt, job.cache_dir)
    model = load_model(folder, dt, dev)
    try:
        per_layer = extract_stats(model, input_ids, k=job.k, batch_size=job.batch_size)
    finally:
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    frame = frame_from_layer_stats(
        [_Stats(top, med) for top, med in per_layer],
        suite=job.suite,
        model=job.model,
        step=job.ckpt.step,
    )
    provenance = {
        "source": job.source,
        "revision": job.ckpt.revision,
        "commit": job.ckpt.commit,
        "weights_sha256": job.ckpt.weights_sha256,
        "input_sha256": input_sha256(input_ids),
        "duplicate_of": job.duplicate_of,
        "weight_files": json.dumps(job.ckpt.weight_files, sort_keys=True),
        "dtype": str(dt).removeprefix("torch."),
        "device": dev.type,
        **job.extra,
    }
    return frame, provenance


__all__ = [
    "CheckpointJob",
    "architecture_row",
    "checkpoint_task",
    "extract_stats",
    "n_params_of",
    "rotary",
]
