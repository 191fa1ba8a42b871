#!/usr/bin/env bash
# The GPU check (`make bench-gpu`): the CUDA kernel tests, then the CUDA benchmarks (statistics
# against the recipe, topk+kthvalue, amax and a copy; fits/s), rows appended to
# bench/results.jsonl and bench/RESULTS.md regenerated.
#
# Made for a GPU machine without network access (such as the device tool's image), where no venv
# can be built: the Python is $PY, else .venv's when its torch sees a GPU, else `python3` (an
# image's own, holding torch, triton and jax). Not installed there, massact.kernels is linked to
# kernels/ (the mapping setup.py installs). Each step has its own time limit, so a slow step
# cannot take the others' results with it; where $OUT is set (the device tool), the log and the
# result files are copied there. The exit code is the first failing step's.
# MASSACT_GPU_TRITON=image: use the machine's Triton even where a carried one is at hand.
# MASSACT_GPU_REHEARSE=1: the same steps on the CPU with small shapes, results in a scratch file.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp}/bench-gpu.log
: >"$LOG"

cuda_python() { "$1" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }
if [ -z "${PY:-}" ]; then
    PY=python3
    if [ -x .venv/bin/python ] && { [ -n "${MASSACT_GPU_REHEARSE:-}" ] || cuda_python .venv/bin/python; }; then
        PY=.venv/bin/python
    fi
fi
DEVICE=cuda RESULTS=bench/results.jsonl QUICK=()
if [ -n "${MASSACT_GPU_REHEARSE:-}" ]; then  # the same steps on the CPU, small (try it here first)
    DEVICE=cpu RESULTS=${TMPDIR:-/tmp}/massact-rehearsal/results.jsonl QUICK=(--quick)
elif ! cuda_python "$PY"; then
    echo "bench-gpu: $PY's torch sees no CUDA device (set PY to a Python whose torch does)" >&2
    exit 2
fi
# a Triton packed by `python -m bench.carry_triton` (.whl/, git-ignored) goes in front of the
# machine's own: Triton <= 3.7 lowers the pass's histogram to warp ballots (see that module)
BUNDLE=$("$PY" -c '
import glob, re, sys
for path in sorted(glob.glob(".whl/triton-*.slim.tar.xz")):  # one built for this Python
    major, minor, abi = re.search(r"-cp(\d)(\d+)-(\w+?)-", path).groups()
    built = (int(major), int(minor))
    if sys.version_info[:2] == built or (abi == "abi3" and sys.version_info[:2] > built):
        print(path)' | tail -1)
if [ -n "$BUNDLE" ] && [ "${MASSACT_GPU_TRITON:-carried}" != image ]; then
    SITE=${TMPDIR:-/tmp}/massact-triton
    rm -rf "$SITE" && mkdir -p "$SITE"
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$BUNDLE" "$SITE" || exit 2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} TRITON_BACKENDS_IN_TREE=1
fi
if ! "$PY" -c 'import massact.kernels' 2>/dev/null; then
    ln -sfn ../kernels massact/kernels  # ignored by git (.gitignore)
fi
# JAX would otherwise take 75% of the GPU's memory at its first use, beside torch's tensors
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

rc=0
step() {  # step NAME SECONDS CMD...: run and log it, keep the first failure's exit code, and
    # copy the results to $OUT at once (a call cut short still returns what was measured)
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local code=${PIPESTATUS[0]}
    echo "== $name: exit $code after $((SECONDS - t0))s" | tee -a "$LOG"
    if [ "$code" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=$code; fi
    if [ -n "${OUT:-}" ]; then cp "$RESULTS" "$(dirname "$RESULTS")/RESULTS.md" "$OUT"/ 2>/dev/null; fi
}

# the limits add up to 10 minutes, one device call; a step usually takes a fraction of its own
step versions 60 "$PY" -c '
import jax, numpy, torch, triton
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.multi_processor_count} SMs", f"{p.total_memory / 2**30:.0f} GiB")
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__,
      "jax", jax.__version__, jax.devices(), "numpy", numpy.__version__)'
step kernel-tests 150 "$PY" -m pytest -q -p no:cacheprovider -m "gpu or not gpu" \
    tests/test_kernels.py tests/test_kernels_traffic.py tests/test_layer_stats.py
# registers and spills per kernel, as this machine's Triton compiles them for sm_90
step kernel-resources 90 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_kernels_compile.py
step stats-bench 180 "$PY" -m bench --device $DEVICE --results "$RESULTS" "${QUICK[@]}" -k layer_stats "$@"
step fit-bench 120 "$PY" -m bench --device $DEVICE --results "$RESULTS" "${QUICK[@]}" -k "bench_fit and not corpus" "$@"
exit "$rc"
