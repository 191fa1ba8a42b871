"""Statistics of one hidden state: top-k and lower median of |h| per slice.

Modules: `_result` (LayerStats, input and mask checks, bit-pattern constants: the leaf that
kernels/ imports), `_reference` (the pure-torch oracle that defines the numbers, masks
included), `_patterns` (bit patterns of |h| and back), `_torch_path` (the fast torch path, any
device), `_cpu_path` (its CPU branch for large slices: one read per slice by the numba kernels
of `_cpu_scan`, the median search of `_cpu_search`, slices in parallel),
`_dispatch` (layer_stats / layer_stats_many: validates, picks a backend).
Imports: torch only (numpy and numba from `_cpu_path`, on first use), massact.kernels lazily.
"""

from ._dispatch import BACKENDS as BACKENDS
from ._dispatch import layer_stats as layer_stats
from ._dispatch import layer_stats_many as layer_stats_many
from ._dispatch import triton_available as triton_available
from ._reference import reference_layer_stats as reference_layer_stats
from ._result import DTYPES as DTYPES
from ._result import LayerStats as LayerStats
from ._result import validate_input as validate_input
from ._result import validate_mask as validate_mask
from ._torch_path import torch_layer_stats as torch_layer_stats
