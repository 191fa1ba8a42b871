"""The batched fitter's knobs as one frozen value: `FitSettings`.

It is what `fit_trajectories` runs with, what a compiled function is specialised to (the
compile-cache key, with the padded shapes) and what `FitResult.settings` reports
(`as_dict()` for provenance). The per-curve algorithm the solver knobs steer is in `_core`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import jax
import numpy as np

from ._core import B_MIN

# the start grid over normalised beta (B_MIN: the bound, so log-increase curves have a start)
# and over u = log tau0
_B_GRID = tuple(np.r_[B_MIN, np.geomspace(0.03, 500.0, 23)].tolist())
_U_GRID = tuple(np.log(np.geomspace(1e-7, 30.0, 19)).tolist())
_SOLVER = ("n_starts", "n_u_bands", "vp_iter", "n_newton", "newton_iter", "lm_iter")


@dataclass(frozen=True)
class FitSettings:
    """Knobs of `fit_trajectories`; the defaults are the benchmarked ones (bench/).

    Solver (see `_core.fit_one`): grid starts are the best point of each of n_starts beta
    bands x n_u_bands log-tau0 bands of the (b_grid x u_grid) grid, plus the paper's initial
    guess; vp_iter variable-projection LM iterations from every start; the best n_newton go
    on with newton_iter Newton steps on the projected SSE; lm_iter LM steps polish all five
    parameters. Host: chunk_size curves per device call and workers chunks in flight at once
    (None: 128 x 2 on the CPU, 65536 x 1 on an accelerator; results do not depend on them).
    Integers are coerced with int(), grids stored as tuples of floats (hashable).
    """

    n_starts: int = 3
    n_u_bands: int = 2
    vp_iter: int = 30
    n_newton: int = 1
    newton_iter: int = 12
    lm_iter: int = 20
    b_grid: tuple[float, ...] = _B_GRID
    u_grid: tuple[float, ...] = _U_GRID
    chunk_size: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        for name in _SOLVER:
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("b_grid", "u_grid"):
            grid = np.asarray(getattr(self, name), dtype=np.float64)
            if grid.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {grid.shape}")
            object.__setattr__(self, name, tuple(grid.tolist()))
        chunk, workers = (None if v is None else int(v) for v in (self.chunk_size, self.workers))
        if (chunk is not None and chunk < 1) or (workers is not None and workers < 1):
            raise ValueError(f"chunk_size and workers must be >= 1, got {chunk} and {workers}")
        object.__setattr__(self, "chunk_size", chunk)
        object.__setattr__(self, "workers", workers)

    @classmethod
    def from_options(cls, settings: FitSettings | None = None, **options: Any) -> FitSettings:
        """The settings a fit runs with: `settings` (default FitSettings()) with the fields
        named in `options` replaced, and chunk_size / workers of None set for the current JAX
        backend. Raises TypeError for an option that is not a field."""
        base = cls() if settings is None else settings
        values = {f.name: options.pop(f.name, getattr(base, f.name)) for f in fields(cls)}
        # CPU: small chunks stay in cache, and two in flight at once keep both cores busy
        # (_fit._run_chunks); 128 x 2 measured 1.3x faster per curve than 512 x 1, 512 x 1
        # 2.2x faster than 4096 x 1
        cpu = jax.default_backend() == "cpu"
        if values["chunk_size"] is None:
            values["chunk_size"] = 128 if cpu else 65536
        if values["workers"] is None:
            values["workers"] = 2 if cpu else 1
        out = cls(**values)
        if options:
            raise TypeError(f"unknown options {sorted(options)}")
        return out

    def compiled_part(self) -> FitSettings:
        """These settings without chunk_size and workers, which only choose how many rows one
        compiled call takes (a shape, keyed separately): what a compiled function depends on."""
        return replace(self, chunk_size=None, workers=None)

    def solver(self) -> dict[str, int]:
        """The keyword arguments of `_core.fit_batch`."""
        return {name: getattr(self, name) for name in _SOLVER}

    def grids(self) -> tuple[np.ndarray, np.ndarray]:
        """(b_grid, u_grid) as float64 arrays."""
        return np.asarray(self.b_grid, np.float64), np.asarray(self.u_grid, np.float64)

    def as_dict(self) -> dict[str, Any]:
        """Plain (JSON-ready) dict of every field, grids as lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["b_grid"], out["u_grid"] = list(self.b_grid), list(self.u_grid)
        return out
