"""Ahead-of-time compilation of the layer-stats kernels for an H100 (sm_90), no GPU needed.

The other kernel tests run under the Triton interpreter, which accepts code the real compiler
rejects. Here every launch the launcher makes for the benchmark shapes is captured (the kernels
are not run) and compiled to TTIR, TTGIR, LLVM IR, PTX and a cubin (bundled ptxas) with exactly
the launcher's specialisation: argument types, constexprs, divisibility attributes, num_warps,
maxnreg. The compile runs in a subprocess without TRITON_INTERPRET (conftest sets it before
imports). The cubin's resource usage gives each kernel's registers and spills (local memory and
stack): the pass kernel must fit in 64 registers with no spill.

Run this file directly to see the resource figures:
    python tests/test_kernels_compile.py '[["bfloat16", [8, 2048, 4096], 3, "contiguous"]]'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import triton
from _cases import HAS_CUDA, INTERPRET, assert_stats_equal

# (dtype, shape, k, layout): the benchmark shapes in every dtype, and small odd shapes (no
# divisibility by 16, unaligned slices, a transposed view, a token mask, leading dims that need
# the slice table: other plans and specialisations)
CASES = [
    (dtype, shape, 3, "contiguous")
    for dtype in ("float32", "float16", "bfloat16")
    for shape in ([8, 2048, 4096], [10, 2048, 5120], [1, 2048, 512], [2, 37, 50])
] + [
    ("bfloat16", [3, 64, 40], 3, "transposed"),
    ("float16", [2, 37, 50], 1, "contiguous"),
    ("bfloat16", [8, 2048, 4096], 3, "masked"),
    ("float32", [8, 2048, 4096], 3, "masked"),
    ("float32", [4, 3, 64, 48], 8, "table"),
]
SM_COUNT = 132  # H100 SXM: the launch configuration (programs, tile, warps) depends on it
MAX_PASS_REGISTERS = 64  # 4 blocks of 8 warps per SM
ROOT = Path(__file__).resolve().parents[1]


def _tensor(dtype: str, shape: list[int], layout: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(h, mask) of the case: CPU memory only reserved (never touched), with the alignment
    (data_ptr, strides) the GPU tensor would have."""
    dt = getattr(torch, dtype)
    if layout == "transposed":
        return torch.empty(shape[:-2] + shape[-2:][::-1], dtype=dt).transpose(-1, -2), None
    if layout == "table":  # [3, 4, S, d] viewed as [4, 3, S, d]: no single leading stride
        return torch.empty([shape[1], shape[0], *shape[2:]], dtype=dt).transpose(0, 1), None
    if shape[-1] % 16:  # a view with an unaligned start: the launcher's ALIGN=1 path
        return torch.empty(torch.Size(shape).numel() + 1, dtype=dt)[1:].view(shape), None
    mask = torch.ones(shape[:-1], dtype=torch.bool) if layout == "masked" else None
    return torch.empty(shape, dtype=dt), mask


def _compile_cases(cases: list) -> list[dict]:
    """Capture the launches of triton_layer_stats for each case and compile each distinct one."""
    import triton
    from massact.kernels import layer_stats as ls
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    launches = []

    def capture(kernel, grid):
        return lambda *args, **kwargs: launches.append((kernel, grid, args, kwargs))

    JITFunction.__getitem__ = capture  # record, do not run
    ls.launch_config = lambda device: ls.cuda_launch_config(SM_COUNT)
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    seen, out = set(), []
    for dtype, shape, k, layout in cases:
        h, mask = _tensor(dtype, shape, layout)
        launches.clear()
        trace = ls.LaunchTrace()
        ls.triton_layer_stats(h, k, mask, trace=trace)
        for kernel, grid, args, kwargs in launches:
            kwargs = dict(kwargs, debug=False)
            for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # newer Tritons
                if hasattr(knobs.compilation, knob):
                    kwargs[knob] = getattr(knobs.compilation, knob)
            binder = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = _pack_args(
                kernel, backend, kwargs, bound, specialization, options
            )
            names = kernel.arg_names
            consts = {names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
            key = (kernel.__name__, str(signature), str(consts), str(attrs), str(options))
            if key in seen:
                continue
            seen.add(key)
            row = dict(
                case=[dtype, shape, k, layout],
                kernel=kernel.__name__,
                grid=list(grid),
                constexprs={n: v for n, v in consts.items() if not isinstance(v, str)},
                # kernel launches of the call (the scratch fill is one more, not a Triton one)
                launches=len(launches),
                plan_launches=trace.plan.launches,
            )
            t0 = time.perf_counter()
            try:
                src = ASTSource(kernel, signature, constexprs, attrs)
                compiled = triton.compile(src, target=target, options=options.__dict__)
            except Exception as e:  # reported per kernel; the test fails on any
                row["error"] = f"{type(e).__name__}: {e}"[:4000]
                out.append(row)
                continue
            row["seconds"] = round(time.perf_counter() - t0, 2)
            row["stages"] = sorted(compiled.asm)
            row["dyn_shared"] = compiled.metadata.shared  # bytes the launch requests
            ptx = compiled.asm["ptx"]
            row["vector_loads"] = ptx.count("ld.global.v")
            row["narrow_loads"] = ptx.count("ld.global.b16") + ptx.count("ld.global.b32")
            row["b16_loads"] = ptx.count("ld.global.b16")  # a 16-bit input read one by one
            if "cubin" in compiled.asm and cuobjdump.exists():
                row.update(_resources(cuobjdump, compiled.asm["cubin"], kernel.__name__))
            row.update(_spills(ptx))
            out.append(row)
    return out


def _pack_args(kernel, backend, kwargs: dict, bound: dict, specialization: list, options) -> tuple:
    """(options, signature, constexprs, attrs) as JITFunction.run packs them before compiling;
    Triton 3.4 does it inline (no _pack_args), the same way."""
    if hasattr(kernel, "_pack_args"):
        return kernel._pack_args(backend, kwargs, bound, specialization, options)
    from triton._utils import find_paths_if, get_iterable_path

    sigvals = [x[0] for x in specialization]
    signature = {p.name: v for p, v in zip(kernel.params, sigvals)}
    paths = find_paths_if(sigvals, lambda _, val: val == "constexpr")
    constexprs = {path: get_iterable_path(list(bound.values()), path) for path in paths}
    attrvals = [x[1] for x in specialization]
    paths = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
    attrs = {path: backend.parse_attr(get_iterable_path(attrvals, path)) for path in paths}
    return backend.parse_options(kwargs), signature, constexprs, attrs


def _spills(ptx: str) -> dict:
    """Spill store / load bytes ptxas reports for ptx (the bundled ptxas, Triton's options): a
    stack frame alone (cuobjdump's STACK) is not a spill."""
    import re
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        try:
            ptxas = get_ptxas(90)  # Triton >= 3.6 picks ptxas by architecture
        except TypeError:
            ptxas = get_ptxas()
        cmd = [ptxas.path, "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a"]
        log = subprocess.run([*cmd, str(src), "-o", str(src.with_suffix(".o"))], **_TEXT).stderr
    found = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(spill_stores=int(found[1]), spill_loads=int(found[2])) if found else {}


_TEXT = dict(capture_output=True, text=True)


def _resources(cuobjdump: Path, cubin: bytes, name: str) -> dict:
    """REG / STACK / LOCAL / SHARED of the kernel in cubin, from cuobjdump --dump-resource-usage."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    fields = text.split(f"Function {name}:", 1)[-1].split()
    return {
        key.lower(): int(value)
        for key, value in (f.split(":", 1) for f in fields if ":" in f)
        if key in ("REG", "STACK", "LOCAL", "SHARED") and value.isdigit()
    }


def _can_target_cuda() -> str | None:
    """Why this Triton build cannot compile for CUDA without a device, or None if it can."""
    try:
        from triton.backends import backends
    except ImportError as e:
        return f"triton.backends unavailable: {e}"
    if "nvidia" not in backends:
        return f"this Triton build has no NVIDIA backend (has {sorted(backends)})"
    return None


def test_kernels_compile_for_sm90(tmp_path):
    reason = _can_target_cuda()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # a fresh cache: a kernel compiled by an earlier run must be compiled again
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(CASES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in rows:  # shown with -s
        keys = ("reg", "spill_stores", "stack", "dyn_shared", "seconds", "vector_loads")
        print(row["kernel"], row["case"], row.get("error", {k: row.get(k) for k in keys}))
    failed = [
        f"{r['kernel']} {r['case']} {r['constexprs']}: {r['error']}" for r in rows if "error" in r
    ]
    assert not failed, "\n".join(failed)
    from massact.kernels._plan import ballot_histogram

    why_slow = ""
    if ballot_histogram(triton.__version__):
        why_slow = f"Triton {triton.__version__}: tl.histogram as warp ballots (ballot_histogram)"
    assert {r["kernel"] for r in rows} == {"layer_stats_sample_kernel", "layer_stats_pass_kernel"}
    for row in rows:
        assert {"ttir", "ttgir", "llir", "ptx", "cubin"} <= set(row["stages"]), row
        # two Triton launches and the scratch fill: at most 3 per call, the selection inside
        assert row["launches"] == 2 and row["plan_launches"] == 3, row
        # no spills in any kernel: Triton <= 3.7 misses this (its tl.histogram, warp ballots)
        assert row["spill_stores"] == row["spill_loads"] == 0, (why_slow, row)
        if "local" in row and row["kernel"] == "layer_stats_pass_kernel":
            fits = row["reg"] <= MAX_PASS_REGISTERS and row["local"] == row["stack"] == 0
            assert fits, (why_slow, row)
    # the hot pass on aligned contiguous input loads 4 values per thread at once (16 bytes of
    # fp32, 8 of bf16), never one 16-bit value at a time
    hot = [
        r
        for r in rows
        if r["kernel"] == "layer_stats_pass_kernel" and r["case"][1:3] == [[8, 2048, 4096], 3]
    ]
    assert len(hot) == 5, hot
    assert all(r["vector_loads"] > 0 and r["b16_loads"] == 0 for r in hot), hot
    esize = {"float32": 4, "float16": 2, "bfloat16": 2}
    assert all(r["constexprs"]["ALIGN"] == 16 // esize[r["case"][0]] for r in hot), hot


def test_ballot_histogram_releases():
    """Triton lowers tl.histogram to warp ballots before 3.8, to shared-memory atomics since
    (read off the SASS of the pass kernel built by 3.6, 3.7, 3.8 and 3.9: POPC vs ATOMS)."""
    from massact.kernels._plan import ballot_histogram

    assert all(ballot_histogram(v) for v in ("2.3.1", "3.6.0", "3.7.1"))
    newer = ("3.8.0", "3.9.0", "3.10.1", "4.0.0", "3.9.0+gitab12")
    assert not any(ballot_histogram(v) for v in newer)


def test_slow_triton_warns_once_per_version():
    from massact.kernels.layer_stats import warn_if_slow_triton

    warn_if_slow_triton.cache_clear()
    with pytest.warns(RuntimeWarning, match=r"Triton 3\.6\.0 lowers tl\.histogram to warp ballots"):
        warn_if_slow_triton("3.6.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_slow_triton("3.6.0")  # said once
        warn_if_slow_triton("3.9.0")  # nothing to say
    warn_if_slow_triton.cache_clear()


@pytest.mark.skipif(not INTERPRET and not HAS_CUDA, reason="needs TRITON_INTERPRET or CUDA")
def test_many_tensors_offsets_from_first_tensor():
    """Slices are addressed as element offsets from the first tensor: negative offsets (other
    allocations below it), and one unaligned tensor turns the 16-byte alignment hint off."""
    from massact.kernels import layer_stats as ls

    from massact import reference_layer_stats

    device = "cuda" if HAS_CUDA else "cpu"
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, 9, 16, generator=gen).to(device, torch.bfloat16) for n in (2, 3))
    hs = sorted([a[1], b, b[::2]], key=lambda x: -x.data_ptr())  # the first is highest
    assert all(ls._slice_align(x) for x in hs)
    unaligned = torch.randn(1 + 2 * 9 * 16, generator=gen).to(device, torch.bfloat16)[1:]
    unaligned = unaligned.view(2, 9, 16)
    assert not ls._slice_align(unaligned)
    for group in (hs, [*hs, unaligned], [unaligned, *hs]):
        for got, h in zip(ls.triton_layer_stats_many(group, 3), group):
            assert_stats_equal(got, reference_layer_stats(h, 3))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET"):
        sys.exit("unset TRITON_INTERPRET: this compiles for a real GPU target")
    sys.path.insert(0, str(ROOT))
    print(json.dumps(_compile_cases(json.loads(sys.argv[1]))))
