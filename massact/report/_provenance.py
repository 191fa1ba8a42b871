"""Provenance of a run or benchmark: package versions, git commit, device, platform.

One home for these lookups: the report, the pipeline and the benchmarks all record them.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = (
    "massact",
    "torch",
    "triton",
    "jax",
    "jaxopt",
    "transformers",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "xgboost",
    "shap",
    "matplotlib",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(path: str | Path | None = None) -> str:
    """HEAD of the repository holding massact (plus '-dirty'), or '' when not in git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except Exception:  # a broken torch install must not break the report
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


# settings that pick the CPU kernels torch runs (hence its float rounding): trained mini-suite
# models end up elsewhere under AVX2 than under AVX-512 kernels, and identical under the same
_CPU_KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA")


def cpu_kernels() -> dict[str, str]:
    """torch's CPU kernel level (e.g. AVX512, AVX2) and the settings above where set."""
    out = {}
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # a broken torch install must not break the report
        pass
    out.update({k: os.environ[k] for k in _CPU_KERNEL_SETTINGS if k in os.environ})
    return out


def base_provenance(**extra: Any) -> dict[str, Any]:
    """Provenance common to every run; `extra` (seed, source, stage_seconds...) is merged in."""
    prov = {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "device": device_description(),
        "platform": platform.platform(),
        "cpu_kernels": cpu_kernels(),
        "argv": sys.argv,
    }
    prov.update(extra)
    return prov
