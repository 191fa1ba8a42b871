"""Benchmark-wide setup: device and commit in pytest-benchmark's machine info.

Run with `python -m pytest bench --benchmark-only` (see the Makefile's `bench` target).
"""

from __future__ import annotations

import subprocess

import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        machine_info["cuda_device"] = torch.cuda.get_device_name()
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    machine_info["massact_commit"] = out.stdout.strip() or "unknown"
