"""The fitter's host-side runner: the compiled-function cache and padded row chunks.

Shapes are padded to few buckets (`bucket_size`, `round_rows`) so that few programs compile;
`_run_chunks` runs one compiled program over row chunks, several in flight at once. Used by
`_fit` (both rounds) and `_hypotheses` (its buckets).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

# (program, its settings, padded curve length, rows per call) -> compiled executable
_COMPILED: dict[tuple, object] = {}


def _compile(lowered):
    """XLA compile. On the CPU the legacy elemental emitters compile this many-small-fusions
    program ~30% faster than the MLIR fusion emitters at the same run time (measured)."""
    if jax.default_backend() != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options={"xla_cpu_use_fusion_emitters": False})
    except Exception:  # an XLA without the option: its default
        return lowered.compile()


def _compiled(key, fn, specs) -> tuple[object, float]:
    """The compiled fn for argument shapes `specs` (cached under key), and the seconds spent
    compiling it now (0.0 when cached)."""
    exe = _COMPILED.get(key)
    if exe is not None:
        return exe, 0.0
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        spec = [jax.ShapeDtypeStruct(shape, jnp.float64) for shape in specs]
        exe = _compile(jax.jit(fn).lower(*spec))
    _COMPILED[key] = exe
    return exe, time.perf_counter() - t0


def bucket_size(x: int, lo: int = 8) -> int:
    """Smallest m * 2**k >= x with m in {4, 5, 6, 7}: at most ~25% padding, few shapes."""
    x = max(int(x), lo)
    k = max(x.bit_length() - 3, 0)
    while True:
        for m in (4, 5, 6, 7, 8):
            if m << k >= x:
                return m << k
        k += 1


def round_rows(k: int, chunk: int, workers: int) -> int:
    """Rows per call of a later round for k curves: 8, 32, 128, ... (x4: few compiled shapes
    as the batch shrinks from round to round) enough for one call per worker, at most
    `chunk`'s bucket (`FitSettings.round_chunk_size`)."""
    cb, cap = 8, bucket_size(chunk)
    while cb * workers < k and cb < cap:
        cb *= 4
    return min(cb, cap)


def _dummy_curve(n: int) -> np.ndarray:
    """A harmless curve for rows that carry no real curve (pathological inputs, padding)."""
    return np.linspace(0.0, 1.0, n)


# a harmless z (b, u, A1, A2, K) for padding rows of the later rounds
_DUMMY_Z = np.array([1.0, 0.0, 1.0, 0.0, 0.0])


def _run_chunks(fn, cols, cb: int, nb: int, consts, workers: int, extra=()) -> list[list]:
    """The compiled fn over row chunks of cols = (tn, yn, w), each [N, n], padded to [cb, nb]
    (padding rows get a dummy curve), then extra per-curve arrays [N, ...] (padded with their
    paired fill row), then the shared consts.

    Up to `workers` chunks run at once, one XLA execution each, from a thread pool (XLA
    releases the GIL). On the CPU one execution of this program of many small kernels leaves
    the cores idle between kernels; two in flight were measured 1.3x faster on 2 cores.
    Each chunk is computed independently, so results do not depend on workers.
    """
    N, n = cols[0].shape

    def run(start: int) -> list[np.ndarray]:
        k = min(cb, N - start)
        args = [np.zeros((cb, nb)) for _ in cols]
        for dst, src in zip(args, cols):
            dst[:k, :n] = src[start : start + k]
        for dst in args[:2]:
            dst[k:, :n] = _dummy_curve(n)
        args[2][k:, :n] = 1.0
        for arr, fill in extra:
            pad = np.empty((cb, *arr.shape[1:]))
            pad[:k], pad[k:] = arr[start : start + k], fill
            args.append(pad)
        with jax.enable_x64(True):  # thread-local: set in the worker too
            return [np.asarray(x)[:k] for x in fn(*args, *consts)]

    starts = range(0, N, cb)
    if workers == 1 or len(starts) == 1:
        return [run(s) for s in starts]
    with ThreadPoolExecutor(min(workers, len(starts))) as pool:
        return list(pool.map(run, starts))


def _gather(outs) -> list[np.ndarray]:
    """Per-chunk outputs -> one array per output, rows in order (writable copies)."""
    return [np.concatenate(x) for x in zip(*outs)]
