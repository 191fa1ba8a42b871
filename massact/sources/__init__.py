"""Sources of trajectories: each writes the massact.dataset format, resumably.

Modules: `_mini_suite` (small GPTNeoX models trained from scratch, offline), `_pythia` (sweeps
of Pythia checkpoints) with `_pythia_archs` (the suite's architectures and schedule),
`_pythia_checkpoints` (resolving, hashing, loading checkpoints) and `_pythia_inputs` (the probe
sequences), `_archive` (the paper's released statistics).
Imports: massact.dataset, massact.probe (and through it massact.stats).
"""

from ._archive import ingest_archive as ingest_archive
from ._archive import parse_stats_file as parse_stats_file
from ._mini_suite import MINI_PRESETS as MINI_PRESETS
from ._mini_suite import MiniArch as MiniArch
from ._mini_suite import train_mini_suite as train_mini_suite
from ._pythia import PYTHIA_ARCHS as PYTHIA_ARCHS
from ._pythia import PYTHIA_STEPS as PYTHIA_STEPS
from ._pythia import paper_steps as paper_steps
from ._pythia import sweep_pythia as sweep_pythia
