"""massact: measure, model and predict massive activations in transformers.

The public API is re-exported here and imported lazily, so `import massact` is cheap
(no JAX, no transformers, no device query) until a name is used.
Stages, one module each:
hidden state -> statistics (_stats, kernels/) -> trajectories (_dataset, _mini_suite,
_pythia, _archive) -> fitted curves (_fit) -> predicted parameters (_predict) -> report (_report).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    # statistics
    "layer_stats": "massact._stats",
    "layer_stats_many": "massact._stats",
    "LayerStats": "massact._stats",
    "reference_layer_stats": "massact._reference",
    # probing: hooks, adapters, training monitor
    "collect_layer_stats": "massact._probe",
    "LayerStatsCollector": "massact._probe",
    "transformer_lens_hook": "massact._probe",
    "stats_of": "massact._probe",
    "decoder_layers": "massact._probe",
    "RatioMonitor": "massact._monitor",
    "RatioMonitorCallback": "massact._monitor",
    # curves
    "fit_trajectories": "massact._fit",
    "FitResult": "massact._fit",
    "FitStatus": "massact._fit",
    "fit_hypotheses": "massact._hypotheses",
    "curve": "massact._curves",
    # trajectories
    "Trajectories": "massact._dataset",
    "load_dataset": "massact._dataset",
    "load_trajectories": "massact._dataset",
    "variability_table": "massact._dataset",
    "Dataset": "massact._dataset",
    "write_task": "massact._dataset",
    "task_done": "massact._dataset",
    "write_architectures": "massact._dataset",
    "MINI_PRESETS": "massact._mini_suite",
    "MiniArch": "massact._mini_suite",
    "ingest_archive": "massact._archive",
    "sweep_pythia": "massact._pythia",
    "PYTHIA_ARCHS": "massact._pythia",
    "PYTHIA_STEPS": "massact._pythia",
    "paper_steps": "massact._pythia",
    "train_mini_suite": "massact._mini_suite",
    # prediction and report
    "architecture_features": "massact._predict",
    "predict_from_config": "massact._predict",
    "arch_from_config": "massact._arch_config",
    "FEATURES": "massact._predict",
    "train_predictors": "massact._predict",
    "Predictor": "massact._predict",
    "write_report": "massact._report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'massact' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static tools see the real names
    from ._stats import LayerStats as LayerStats
    from ._stats import layer_stats as layer_stats
