"""Revisions of a checkpointed Hugging Face suite: the training step a revision name gives,
the revisions of a repo (a local root, the Hub cache offline, or the Hub), and the choice of
"all", "every:K" or named revisions.

Part of the Hugging Face suite source (massact.sources._hf_suite, which plans the sweep);
every_k and every_kth also pick Pythia's steps (massact.sources._pythia, massact.run).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ._pythia_checkpoints import hub_offline

# a step in a revision name: step1000, stage1-step1000-tokens4B, step-1000, ckpt_100, iter_500
STEP_PATTERNS = (
    r"(?<![A-Za-z])step[-_]?(\d+)",
    r"(?<![A-Za-z])ckpt[-_]?(\d+)",
    r"(?<![A-Za-z])(?:checkpoint|iter)[-_]?(\d+)",
)


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


__all__ = [
    "STEP_PATTERNS",
    "every_k",
    "every_kth",
    "list_revisions",
    "parse_step",
    "select_revisions",
]
