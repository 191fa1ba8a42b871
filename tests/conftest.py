"""Test-wide setup.

Without CUDA, Triton kernels run under its interpreter on CPU tensors. The variable must be
set before `triton.jit` decorates the kernels, hence here, before any massact import.

The shared helpers (tests/_models.py, tests/_cases.py) are imported as top-level modules
(`from _cases import ...`): pytest's default import mode puts this folder on sys.path (it has no
__init__.py); the insert below makes it so in every import mode and from any working directory.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
# their asserts (assert_stats_equal ...) report like a test module's: rewritten by pytest
pytest.register_assert_rewrite("_cases", "_models")

# Tests are small; two threads is what CI has.
torch.set_num_threads(min(2, os.cpu_count() or 1))

HAS_CUDA = torch.cuda.is_available()
