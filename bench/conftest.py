"""Benchmark-wide setup: the run's options, its cases, and provenance in the machine info.

Run with `python -m bench` (bench/__main__.py; `make bench`), which passes these options:

- `--bench-device cpu|cuda` (env MASSACT_BENCH_DEVICE, default cpu): which variants run; the
  CUDA ones skip cleanly without a GPU.
- `--bench-quick` (env MASSACT_BENCH_QUICK=1): small shapes, a CPU run in a few minutes.
- `--bench-real DATASET_ROOT` (env MASSACT_BENCH_REAL): also fit a real dataset's curves.

A test that takes a fixture named `case` (or `<name>_case`) is parametrized with what its
module's `cases(device, quick, real)` (or `<name>_cases(...)`) returns for this run; an empty
list skips it. Commit and device come from massact.report (the one home of these lookups).
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("massact bench")
    group.addoption(
        "--bench-device",
        choices=["cpu", "cuda"],
        default=os.environ.get("MASSACT_BENCH_DEVICE", "cpu"),
        help="run the CPU or the CUDA variants of the benchmarks",
    )
    group.addoption(
        "--bench-quick",
        action="store_true",
        default=os.environ.get("MASSACT_BENCH_QUICK", "") not in ("", "0"),
        help="small shapes (a CPU run in a few minutes)",
    )
    group.addoption(
        "--bench-real",
        default=os.environ.get("MASSACT_BENCH_REAL") or None,
        metavar="DATASET_ROOT",
        help="also fit the trajectories of this dataset",
    )


def bench_settings(config) -> dict:
    return {
        "device": config.getoption("bench_device"),
        "quick": config.getoption("bench_quick"),
        "real": config.getoption("bench_real"),
    }


def pytest_generate_tests(metafunc):
    for name in metafunc.fixturenames:
        if name == "case" or name.endswith("_case"):
            settings = bench_settings(metafunc.config)
            cases = getattr(metafunc.module, name + "s")(**settings)
            if cases:
                metafunc.parametrize(name, cases, ids=[c.id for c in cases])
            else:
                why = f"no {name} for --bench-device {settings['device']}"
                why += " --bench-quick" if settings["quick"] else " (full set)"
                none = pytest.param(None, marks=pytest.mark.skip(reason=why))
                metafunc.parametrize(name, [none], ids=["none"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each benchmark's extra_info gets the 1-minute load average after its test (shared
    machines) and test_failed when the test's assertions failed after timing."""
    report = yield
    bench = getattr(item, "funcargs", {}).get("benchmark")
    if report.when == "call" and bench is not None:
        try:
            bench.extra_info["load_avg"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
        if report.failed:
            bench.extra_info["test_failed"] = True
    return report


def pytest_benchmark_update_machine_info(config, machine_info):
    from massact.report import cpu_kernels, device_description, git_commit

    settings = bench_settings(config)
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["massact_commit"] = git_commit() or "unknown"
    machine_info["bench_device"] = settings["device"]
    machine_info["bench_quick"] = settings["quick"]
    if settings["device"] == "cuda":
        machine_info["device"] = device_description()
    else:
        name = (machine_info.get("cpu") or {}).get("brand_raw")
        desc = device_description()
        name = name or (desc.removeprefix("cpu: ") if desc.startswith("cpu") else "cpu")
        threads = torch.get_num_threads()
        level = cpu_kernels().get("torch_cpu_capability", "unknown")  # AVX512, AVX2...
        machine_info["device"] = (
            f"cpu: {name}, {os.cpu_count()} cores, {threads} torch threads, {level} kernels"
        )
