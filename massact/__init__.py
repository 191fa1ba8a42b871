"""massact: measure, model and predict massive activations in transformers.

The public API is re-exported here and imported lazily, so `import massact` is cheap
(no JAX, no transformers, no device query) until a name is used.
One subpackage per stage of the data's journey, each importing only the stages before it:

    hidden state -> stats (kernels/) -> probe -> dataset <- sources -> curves -> predict -> report

`pipeline` runs the stages in order; `run` and `cli` are the command lines. Plumbing (task
files, manifests, solver internals) stays in its subpackage's namespace, e.g. massact.dataset.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the stage subpackage that exports it
_EXPORTS: dict[str, str] = {
    "layer_stats": "massact.stats",
    "layer_stats_many": "massact.stats",
    "LayerStats": "massact.stats",
    "reference_layer_stats": "massact.stats",
    "collect_layer_stats": "massact.probe",
    "LayerStatsCollector": "massact.probe",
    "transformer_lens_hook": "massact.probe",
    "stats_of": "massact.probe",
    "decoder_layers": "massact.probe",
    "layer_names": "massact.probe",
    "RatioMonitor": "massact.probe",
    "RatioMonitorCallback": "massact.probe",
    "Dataset": "massact.dataset",
    "Trajectories": "massact.dataset",
    "load_dataset": "massact.dataset",
    "load_trajectories": "massact.dataset",
    "variability_table": "massact.dataset",
    "train_mini_suite": "massact.sources",
    "MINI_PRESETS": "massact.sources",
    "MiniArch": "massact.sources",
    "sweep_pythia": "massact.sources",
    "sweep_hf_suite": "massact.sources",
    "PYTHIA_ARCHS": "massact.sources",
    "PYTHIA_STEPS": "massact.sources",
    "paper_steps": "massact.sources",
    "ingest_archive": "massact.sources",
    "fit_trajectories": "massact.curves",
    "FitResult": "massact.curves",
    "FitStatus": "massact.curves",
    "FitSettings": "massact.curves",
    "fit_hypotheses": "massact.curves",
    "curve": "massact.curves",
    "train_predictors": "massact.predict",
    "Predictor": "massact.predict",
    "architecture_features": "massact.predict",
    "FEATURES": "massact.predict",
    "predict_from_config": "massact.predict",
    "arch_from_config": "massact.predict",
    "write_report": "massact.report",
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


if TYPE_CHECKING:  # static tools see every public name
    from .curves import FitResult as FitResult
    from .curves import FitSettings as FitSettings
    from .curves import FitStatus as FitStatus
    from .curves import curve as curve
    from .curves import fit_hypotheses as fit_hypotheses
    from .curves import fit_trajectories as fit_trajectories
    from .dataset import Dataset as Dataset
    from .dataset import Trajectories as Trajectories
    from .dataset import load_dataset as load_dataset
    from .dataset import load_trajectories as load_trajectories
    from .dataset import variability_table as variability_table
    from .predict import FEATURES as FEATURES
    from .predict import Predictor as Predictor
    from .predict import arch_from_config as arch_from_config
    from .predict import architecture_features as architecture_features
    from .predict import predict_from_config as predict_from_config
    from .predict import train_predictors as train_predictors
    from .probe import LayerStatsCollector as LayerStatsCollector
    from .probe import RatioMonitor as RatioMonitor
    from .probe import RatioMonitorCallback as RatioMonitorCallback
    from .probe import collect_layer_stats as collect_layer_stats
    from .probe import decoder_layers as decoder_layers
    from .probe import layer_names as layer_names
    from .probe import stats_of as stats_of
    from .probe import transformer_lens_hook as transformer_lens_hook
    from .report import write_report as write_report
    from .sources import MINI_PRESETS as MINI_PRESETS
    from .sources import PYTHIA_ARCHS as PYTHIA_ARCHS
    from .sources import PYTHIA_STEPS as PYTHIA_STEPS
    from .sources import MiniArch as MiniArch
    from .sources import ingest_archive as ingest_archive
    from .sources import paper_steps as paper_steps
    from .sources import sweep_hf_suite as sweep_hf_suite
    from .sources import sweep_pythia as sweep_pythia
    from .sources import train_mini_suite as train_mini_suite
    from .stats import LayerStats as LayerStats
    from .stats import layer_stats as layer_stats
    from .stats import layer_stats_many as layer_stats_many
    from .stats import reference_layer_stats as reference_layer_stats
