"""Pack a Triton release, slimmed, to travel to a GPU machine that cannot reach a package index.

    python -m bench.carry_triton [--version 3.9.0] [--python 3.12] [--out .whl]

The statistics kernels' pass counts its window with `tl.histogram`. Triton 3.8 and later lower
that to one shared-memory atomic per element; 3.7 and earlier to warp ballots, about 12 warp
instructions per element for 1024 bins, and the pass then also spills at 64 registers
(tests/test_kernels_compile.py shows both). A GPU image with an older Triton (torch 2.11 ships
3.6) would time the ballots, not the kernels. Its wheel is ~290 MB, too large to carry; this
keeps what compiling and launching for sm_90 and later needs: the Python package, libtriton.so
stripped of debug symbols, the NVIDIA backend (ptxas-blackwell, libdevice, headers), ~48 MB as
.tar.xz. bench/gpu.sh unpacks it in front of the machine's own Triton, with
TRITON_BACKENDS_IN_TREE=1 so that the pruned AMD backend is not looked for.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# not needed to compile or launch on Hopper: the AMD backend, the profiler's libraries, the
# disassemblers and the legacy ptxas (for GPUs before sm_90; ptxas-blackwell serves sm_90 on)
PRUNE = (
    "triton/backends/amd",
    "triton/_C/libproton.so",
    "triton/backends/nvidia/lib/cupti",
    "triton/backends/nvidia/lib/cupti-blackwell",
    "triton/backends/nvidia/bin/ptxas",
    "triton/backends/nvidia/bin/cuobjdump",
    "triton/backends/nvidia/bin/nvdisasm",
    "triton/instrumentation",
    "triton/FileCheck",
)


def download(version: str, python: str, dest: Path) -> Path:
    tag = python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for platform in ("manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"):
        cmd += ["--platform", platform]
    subprocess.run([*cmd, f"triton=={version}"], check=True)
    wheels = sorted(dest.glob(f"triton-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"carry_triton: pip found no triton {version} wheel for cp{tag}")
    return wheels[0]


def pack(wheel: Path, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        zipfile.ZipFile(wheel).extractall(tree)
        for rel in PRUNE:
            target = tree / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for binary in [tree / "triton/_C/libtriton.so", *(tree / "triton/backends").rglob("bin/*")]:
            binary.chmod(0o755)  # zip extraction drops the mode bits
        subprocess.run(["strip", "--strip-unneeded", str(tree / "triton/_C/libtriton.so")])
        out.mkdir(parents=True, exist_ok=True)
        target = out / (wheel.name.removesuffix(".whl") + ".slim.tar.xz")
        with tarfile.open(target, "w:xz", preset=6) as tar:
            for entry in sorted(tree.iterdir()):
                tar.add(entry, arcname=entry.name)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.carry_triton", description=__doc__)
    p.add_argument("--version", default="3.9.0", help="Triton release (default 3.9.0)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--wheel", type=Path, help="pack this wheel instead of downloading one")
    p.add_argument("--out", type=Path, default=ROOT / ".whl", help="folder (git-ignored)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download(args.version, args.python, Path(tmp))
        target = pack(wheel, args.out)
    print(f"{target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
