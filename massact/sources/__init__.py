"""Sources of trajectories: each writes the massact.dataset format, resumably.

Modules: `_mini_suite` (small GPTNeoX models trained from scratch, offline; with
`_mini_presets` (MiniArch, presets), `_mini_corpus` (data, seeds) and `_mini_state` (states)),
`_hf_suite` (sweeps of any checkpointed Hugging Face suite) with `_hf_revisions` (revision
names -> steps, the choice of revisions) and `_hf_task` (architecture rows, the per-checkpoint
task),
`_pythia` (Pythia as one such suite) with `_pythia_archs` (the suite's architectures and
schedule), `_pythia_checkpoints` (resolving, hashing, loading checkpoints of any repo) and
`_pythia_inputs` (the probe sequences), `_engine` (where a sweep's tasks run: this process, local
worker processes, or Ray; the calling process writes), `_archive` (the paper's released
statistics, with `_archive_parser`: one file read with bounded memory, no code executed).
Imports: massact.dataset, massact.probe (and through it massact.stats); ray only for the ray
engine.
"""

from ._archive import ingest_archive as ingest_archive
from ._archive import parse_stats_file as parse_stats_file
from ._engine import Engine as Engine
from ._engine import SweepError as SweepError
from ._hf_revisions import every_k as every_k
from ._hf_revisions import every_kth as every_kth
from ._hf_revisions import parse_step as parse_step
from ._hf_suite import sweep_hf_suite as sweep_hf_suite
from ._mini_presets import MINI_PRESETS as MINI_PRESETS
from ._mini_presets import MiniArch as MiniArch
from ._mini_suite import train_mini_suite as train_mini_suite
from ._pythia import PYTHIA_ARCHS as PYTHIA_ARCHS
from ._pythia import PYTHIA_STEPS as PYTHIA_STEPS
from ._pythia import paper_steps as paper_steps
from ._pythia import sweep_pythia as sweep_pythia
