"""Test-wide setup.

Without CUDA, Triton kernels run under its interpreter on CPU tensors. The variable must be
set before `triton.jit` decorates the kernels, hence here, before any massact import.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests are small; two threads is what CI has.
torch.set_num_threads(min(2, os.cpu_count() or 1))

HAS_CUDA = torch.cuda.is_available()
