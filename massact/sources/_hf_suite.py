"""Source 4: any checkpointed Hugging Face suite, one (model, checkpoint) task at a time.

A suite is one or more Hub repos of causal LMs whose training checkpoints are revisions
(branches) named after their step: `step1000` (Pythia), `stage1-step1000-tokens4B` (OLMo),
`ckpt_100` (LLM360), or any name a pattern with one group of digits reads (`step_pattern`).
Revisions are chosen as "all" (every revision whose name gives a step), "every:K" (every K-th of
those, ending at the last) or a list of revision names (or steps, looked up in the listing).
The architecture row comes from `transformers.AutoConfig` (layers, width, heads, FFN width,
rotary fraction and base, and where the config has them: key/value heads `H_kv` of grouped-query
attention, `head_dim`, MoE `n_experts`, `experts_per_token`, `d_ff_expert`); parameters are
counted on the meta device (nothing allocated).

Each task records what Pythia tasks record (massact.sources._pythia is one instance of this
sweep): revision, Hub commit, sha256 of the weight files (per file in `weight_files` and
combined), sha256 of the input token ids, and `duplicate_of` for checkpoints serving the
weights of a higher step. Everything a task needs is planned on the driver before any weights
move: the commit and weight hashes of every checkpoint (from the Hub's metadata online, the
cache's blob names offline, the files of a local root), hence the duplicate flags, the
architecture rows and the probe inputs. Each task then loads its checkpoint alone, checks its
weight files against the plan, and returns (statistics frame, provenance); the driver writes
each task file as it arrives (massact.sources._engine: local or Ray). Finished tasks are skipped,
so a killed sweep resumes where it stopped; a task is written once.

Local roots: `<local_root>/<model>/<revision>/` (or `<local_root>/<org>/<model>/<revision>/`)
save_pretrained folders; HF_HUB_OFFLINE=1 makes the Hub cache-only (revisions are then listed
from the cache's refs).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from ._engine import Engine, Task, as_engine, raise_failures, run_tasks
from ._pythia_checkpoints import (
    Checkpoint,
    _weight_hashes,
    duplicate_flags,
    extraction_dtype,
    fetch_weights,
    hub_checkpoint,
    hub_offline,
    load_config,
    load_model,
    load_tokenizer,
    task_weight_hashes,
)
from ._pythia_inputs import input_sha256, make_inputs

log = logging.getLogger("massact.hf_suite")

SOURCE = "hf"
# a step in a revision name: step1000, stage1-step1000-tokens4B, step-1000, ckpt_100, iter_500
STEP_PATTERNS = (
    r"(?<![A-Za-z])step[-_]?(\d+)",
    r"(?<![A-Za-z])ckpt[-_]?(\d+)",
    r"(?<![A-Za-z])(?:checkpoint|iter)[-_]?(\d+)",
)


# --------------------------------------------------------------------------- revisions
def parse_step(revision: str, pattern: str | None = None) -> int | None:
    """The training step a revision name gives, or None.

    pattern: a regular expression whose first group is the step's digits (searched in the
    name); None = the usual names (step1000, stage1-step1000-tokens4B, ckpt_100, iter_500).
    """
    for pat in [pattern] if pattern else STEP_PATTERNS:
        m = re.search(pat, revision)
        if m:
            try:
                return int(m.group(1))
            except (IndexError, TypeError, ValueError):
                raise ValueError(
                    f"step pattern {pat!r} must have one group of digits, e.g. r'step(\\d+)'"
                ) from None
    return None


def _check_pattern(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"step pattern {pattern!r} is not a regular expression: {exc}") from None
    if compiled.groups < 1:
        raise ValueError(f"step pattern {pattern!r} needs a group of digits, e.g. r'step(\\d+)'")


def _model_folder(local_root: Path, repo: str) -> Path:
    name = repo.split("/")[-1]
    for candidate in (local_root / name, local_root / repo):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no folder for {repo} under {local_root}: expected <local_root>/{name}/<revision>/ "
        "save_pretrained folders"
    )


def list_revisions(
    repo: str, *, local_root: str | os.PathLike | None = None, cache_dir=None
) -> list[str]:
    """The revisions of a repo: the save_pretrained subfolders under a local root, the refs
    in the Hub cache when HF_HUB_OFFLINE is set, else the repo's branches on the Hub."""
    if local_root is not None:
        folder = _model_folder(Path(local_root), repo)
        return sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
    if hub_offline():
        from huggingface_hub import constants

        cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
        refs = cache / f"models--{repo.replace('/', '--')}" / "refs"
        if not refs.is_dir():
            raise RuntimeError(
                f"{repo} has no revisions in the local Hugging Face cache ({cache}) and "
                "HF_HUB_OFFLINE is set: go online once, name the revisions, or pass a local root"
            )
        return sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    from huggingface_hub import HfApi

    return sorted(b.name for b in HfApi().list_repo_refs(repo).branches)


def every_k(spec: str, option: str = "revisions") -> int | None:
    """K of an "every:K" checkpoint choice, None if `spec` is not one.

    ValueError naming the option and the choice unless K is a positive integer.
    """
    text = spec.strip().lower()
    if not text.startswith("every:"):
        return None
    k = text.split(":", 1)[1].strip()
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"{option} {spec!r}: K in every:K must be a positive integer")
    return int(k)


def every_kth(items: Sequence, k: int) -> list:
    """Every k-th of `items` from the first, always ending at the last (the final checkpoint)."""
    picked = list(items[::k])
    return picked if picked[-1] == items[-1] else [*picked, items[-1]]


def select_revisions(
    spec: str | Sequence[str],
    available: Callable[[], Sequence[str]],
    *,
    pattern: str | None = None,
    repo: str = "",
) -> tuple[list[tuple[int, str]], int | None]:
    """[(step, revision)] sorted by step, and the highest step of the listing (None unlisted).

    spec: "all", "every:K", or revision names (a comma string or a list); an item of digits
    alone is a step, looked up among the listed revisions. `available` lists the revisions
    (called only when the choice needs it).
    """
    _check_pattern(pattern)
    listing: dict[int, str] | None = None

    def listed() -> dict[int, str]:
        nonlocal listing
        if listing is None:
            listing = {}
            for rev in available():
                step = parse_step(rev, pattern)
                if step is None:
                    continue
                if step in listing:
                    raise ValueError(
                        f"{repo}: revisions {listing[step]!r} and {rev!r} both give step {step}; "
                        "choose with a revision list or a step pattern"
                    )
                listing[step] = rev
            if not listing:
                raise ValueError(
                    f"{repo}: no revision name gives a step (e.g. step1000, ckpt_100); "
                    "pass a step pattern"
                )
        return listing

    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "all":
            chosen = sorted(listed().items())
        elif (k := every_k(text)) is not None:
            chosen = [(s, listed()[s]) for s in every_kth(sorted(listed()), k)]
        else:
            chosen = _named(text.split(","), listed, pattern, repo)
    else:
        chosen = _named(list(spec), listed, pattern, repo)
    top = max(listing) if listing else None
    return chosen, top


def _named(items, listed, pattern, repo) -> list[tuple[int, str]]:
    chosen: dict[int, str] = {}
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item.isdigit():
            step = int(item)
            if step not in listed():
                raise ValueError(f"{repo}: no revision gives step {step}")
            rev = listed()[step]
        else:
            rev, step = item, parse_step(item, pattern)
            if step is None:
                raise ValueError(
                    f"revision {item!r} names no step (e.g. step1000, ckpt_100): "
                    "pass a step pattern"
                )
        if chosen.get(step, rev) != rev:
            raise ValueError(f"revisions {chosen[step]!r} and {rev!r} both give step {step}")
        chosen[step] = rev
    if not chosen:
        raise ValueError("no revisions chosen: give all, every:K or revision names")
    return sorted(chosen.items())


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


# --------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class ModelPlan:
    """One model of a suite to sweep: its checkpoints and how to find them (driver side)."""

    suite: str
    model: str
    repo: str  # Hub repo id: the tokenizer's fallback home
    checkpoints: list[tuple[int, str]]  # (step, revision), sorted by step
    max_step: int
    locate: Callable[[int, str], Checkpoint]  # resolve and hash one checkpoint, no weights moved
    source: str = SOURCE
    local_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _known_files(out: Path, model_name: str, source: str) -> dict[int, dict]:
    """step -> manifest entry of this model's finished tasks of this source."""
    if not (out / "manifest.json").exists():
        return {}
    tasks = read_manifest(out)["tasks"]
    return {
        int(e["step"]): e
        for e in tasks.values()
        if e.get("model") == model_name and e.get("provenance", {}).get("source") == source
    }


def _reflag(out: Path, model_name: str, entries: Mapping[int, dict], flags: Mapping[int, str]):
    """Rewrite finished tasks (of earlier sweeps) whose duplicate_of changed; stats untouched."""
    for step, entry in entries.items():
        prov = dict(entry.get("provenance", {}))
        if prov.get("duplicate_of", "") == flags.get(step, ""):
            continue
        prov["duplicate_of"] = flags.get(step, "")
        frame = pd.read_parquet(task_path(out, model_name, step))
        write_task(out, frame, prov)
        log.warning("%s step %d: duplicate_of set to %r", model_name, step, prov["duplicate_of"])


def _text_name(text) -> str:
    return f"<{len(text)} documents>" if isinstance(text, list | tuple) else str(text)


def _plan_model(
    plan: ModelPlan, out: Path, *, text, n_seqs, seq_len, seed, job_options, cache_dir
) -> list[Task]:
    """Driver side of one model: architecture row, inputs, duplicate flags -> its tasks."""
    todo = [(s, r) for s, r in plan.checkpoints if not task_done(out, plan.model, s)]
    arch_path = out / "architectures.parquet"
    has_arch = arch_path.exists() and plan.model in set(pd.read_parquet(arch_path)["model"])
    if not todo and has_arch:
        log.info("%s: all %d checkpoints already done", plan.model, len(plan.checkpoints))
        return []
    first = plan.locate(*(todo[0] if todo else plan.checkpoints[-1]))
    config = load_config(first, cache_dir)
    row = architecture_row(plan.suite, plan.model, config, n_params_of(config), plan.max_step)
    write_architectures(out, pd.DataFrame([row]))
    if not todo:
        return []
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len {seq_len} exceeds {plan.model}'s context of {context} tokens")
    ckpts = [first] + [plan.locate(s, r) for s, r in todo[1:]]
    tokenizer = load_tokenizer(
        first.folder, plan.repo, plan.local_root, cache_dir, first.commit or first.revision
    )
    input_ids = make_inputs(tokenizer, text, n_seqs, seq_len, seed)
    done = _known_files(out, plan.model, plan.source)
    hashes = {s: task_weight_hashes(e.get("provenance", {})) for s, e in done.items()}
    hashes.update({c.step: set(c.weight_files.values()) for c in ckpts})
    flags = duplicate_flags(hashes)
    _reflag(out, plan.model, {s: e for s, e in done.items() if s in flags}, flags)
    extra = {
        "text": _text_name(text),
        "n_seqs": n_seqs,
        "seq_len": seq_len,
        "seed": seed,
        **plan.extra,
    }
    cost = float(row["n_params"])
    return [
        Task(
            name=f"{plan.model}/{c.revision}",
            model=plan.model,
            fn=checkpoint_task,
            args=(
                CheckpointJob(
                    plan.suite,
                    plan.model,
                    plan.source,
                    c,
                    duplicate_of=flags[c.step],
                    extra=extra,
                    cache_dir=str(cache_dir) if cache_dir else None,
                    **job_options,
                ),
                input_ids,
            ),
            cost=cost,
        )
        for c in ckpts
    ]


def sweep_checkpoints(
    plans: Sequence[ModelPlan],
    out: str | os.PathLike,
    *,
    text,
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    batch_size: int | None = None,
    engine: Engine | str | None = None,
    progress: bool | None = None,
) -> Path:
    """Plan every model's tasks on the driver, run them on `engine`, write each as it arrives.

    Raises massact.sources._engine.SweepError naming the tasks that failed, after the others
    are written (a re-run retries only those).
    """
    out = Path(out)
    engine = as_engine(engine)
    if dtype is not None:
        extraction_dtype(torch.device("cpu"), dtype)  # reject a bad dtype before any download
    names = [p.model for p in plans]
    if len(set(names)) != len(names):
        raise ValueError(f"two models share a name: {names}")
    job_options = {
        "k": k,
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "device": None if device is None else str(device),
        "batch_size": batch_size,
    }
    tasks: list[Task] = []
    for plan in plans:
        tasks += _plan_model(
            plan,
            out,
            text=text,
            n_seqs=n_seqs,
            seq_len=seq_len,
            seed=seed,
            job_options=job_options,
            cache_dir=cache_dir,
        )

    def write(task: Task, value: tuple[pd.DataFrame, dict]) -> None:
        frame, provenance = value
        write_task(out, frame, provenance)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    failures = run_tasks(tasks, engine, write, title="checkpoints", show=show)
    raise_failures(failures, len(tasks))
    return out


class _Listing:
    """A repo's revisions, listed once when first needed."""

    def __init__(self, repo: str, local_root, cache_dir) -> None:
        self.repo, self.local_root, self.cache_dir = repo, local_root, cache_dir
        self.names: list[str] | None = None

    def __call__(self) -> list[str]:
        if self.names is None:
            self.names = list_revisions(
                self.repo, local_root=self.local_root, cache_dir=self.cache_dir
            )
        return self.names

    def top_step(self, pattern: str | None) -> int | None:
        """The highest step among the revisions, None when they cannot be listed."""
        try:
            steps = [parse_step(r, pattern) for r in self()]
        except (OSError, RuntimeError, ValueError) as exc:
            log.info("%s: revisions not listed (%s); max_step from this sweep", self.repo, exc)
            return None
        return max((s for s in steps if s is not None), default=None)


def default_suite(repo: str) -> str:
    """A suite name from a repo id: its name up to the first '-', lower case
    ('EleutherAI/pythia-70m' -> 'pythia', 'allenai/OLMo-2-0425-1B' -> 'olmo')."""
    return repo.split("/")[-1].split("-")[0].lower() or repo


def _local_checkpoint(root: Path, repo: str, name: str, step: int, revision: str) -> Checkpoint:
    folder = _model_folder(root, repo) / revision
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no checkpoint for {repo} revision {revision} under {root}: expected a "
            f"save_pretrained folder (with config.json) at {folder}"
        )
    return Checkpoint(name, step, folder, revision, "", _weight_hashes(folder))


def sweep_hf_suite(
    repos: str | Sequence[str],
    revisions: str | Sequence[str],
    out: str | os.PathLike,
    *,
    text: str | os.PathLike | Sequence[str],
    suite: str | None = None,
    step_pattern: str | None = None,
    n_seqs: int = 10,
    seq_len: int = 2048,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    local_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    batch_size: int | None = None,
    engine: Engine | str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Statistics of a checkpointed Hugging Face suite into the dataset at `out`; returns `out`.

    repos: "ORG/NAME" ids (a comma string or a list); each is one model, named NAME in the
    dataset. revisions: "all", "every:K" or revision names / steps (see `select_revisions`),
    the same choice for every repo. suite: the dataset's suite name (default: NAME up to its
    first '-', lower case). step_pattern: regex with one group of digits for revision names
    the usual patterns miss. text, n_seqs, seq_len, seed, dtype, device, k, batch_size: as in
    sweep_pythia. local_root: `<local_root>/NAME/<revision>/` save_pretrained folders instead of
    the Hub. engine: "local" (default) or "ray" (with ray_address, or a local Ray instance);
    workers: local processes (default 1) or Ray tasks in flight (default: as resources allow).
    """
    if isinstance(repos, str):
        repos = [r.strip() for r in repos.split(",") if r.strip()]
    if not repos:
        raise ValueError("repos is empty: name at least one Hugging Face repo, ORG/NAME")
    for repo in repos:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ValueError(f"repo {repo!r} is not a Hugging Face id of the form ORG/NAME")
    if local_root is not None and not Path(local_root).is_dir():
        raise FileNotFoundError(f"local_root {local_root} is not a folder")
    root = Path(local_root) if local_root is not None else None
    plans = []
    for repo in repos:
        name = repo.split("/")[-1]
        listing = _Listing(repo, local_root, cache_dir)
        chosen, top = select_revisions(revisions, listing, pattern=step_pattern, repo=repo)
        if top is None:  # named revisions: the suite's last step still from its listing
            top = listing.top_step(step_pattern)

        def locate(step: int, revision: str, repo=repo, name=name) -> Checkpoint:
            if root is not None:
                return _local_checkpoint(root, repo, name, step, revision)
            return hub_checkpoint(repo, name, step, revision, cache_dir=cache_dir, fetch=False)

        plans.append(
            ModelPlan(
                suite=suite or default_suite(repo),
                model=name,
                repo=repo,
                checkpoints=chosen,
                max_step=max(top or 0, chosen[-1][0]),
                locate=locate,
                source=SOURCE,
                local_root=str(local_root) if local_root is not None else None,
                extra={"repo": repo, "source_path": str(local_root) if local_root else ""},
            )
        )
    return sweep_checkpoints(
        plans,
        out,
        text=text,
        n_seqs=n_seqs,
        seq_len=seq_len,
        seed=seed,
        dtype=dtype,
        device=device,
        cache_dir=cache_dir,
        k=k,
        batch_size=batch_size,
        engine=as_engine(engine, workers=workers, address=ray_address),
        progress=progress,
    )


__all__ = [
    "STEP_PATTERNS",
    "architecture_row",
    "list_revisions",
    "parse_step",
    "select_revisions",
    "sweep_checkpoints",
    "sweep_hf_suite",
]
