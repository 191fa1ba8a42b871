"""The dataset of statistics over checkpoints: one Parquet file per (model, step) + manifest.

Modules: `_format` (names and columns, the manifest, task writing), `_atomic` (atomic writes,
the metadata lock), `_frame` (task rows from LayerStats), `_validate` (read_task: the one check
of a task file against its manifest entry, used by load_dataset and by task_done on resume),
`_load` (Dataset, loading with checks, Trajectories, Table 2).
`atomic_write_bytes` / `atomic_write_text` / `atomic_writer` are the atomic-write helper for
every file a later run or reader relies on (derived outputs included).
Imports: numpy, pandas, pyarrow; nothing else of massact (LayerStats arrive duck-typed).
"""

from ._atomic import atomic_write_bytes as atomic_write_bytes
from ._atomic import atomic_write_text as atomic_write_text
from ._atomic import atomic_writer as atomic_writer
from ._format import ARCH_COLUMNS as ARCH_COLUMNS
from ._format import KEY_COLUMNS as KEY_COLUMNS
from ._format import MANIFEST_VERSION as MANIFEST_VERSION
from ._format import MAX_STEP as MAX_STEP
from ._format import PROVENANCE_COLUMNS as PROVENANCE_COLUMNS
from ._format import add_note as add_note
from ._format import read_architectures as read_architectures
from ._format import read_manifest as read_manifest
from ._format import remove_task as remove_task
from ._format import task_key as task_key
from ._format import task_path as task_path
from ._format import top_columns as top_columns
from ._format import write_architectures as write_architectures
from ._format import write_task as write_task
from ._frame import frame_from_layer_stats as frame_from_layer_stats
from ._load import Dataset as Dataset
from ._load import Trajectories as Trajectories
from ._load import load_dataset as load_dataset
from ._load import load_trajectories as load_trajectories
from ._load import variability_table as variability_table
from ._validate import TaskError as TaskError
from ._validate import check_task as check_task
from ._validate import read_task as read_task
from ._validate import task_done as task_done
