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
_ROUNDS = ("round_vp_iter", "round_newton_iter", "round_lm_iter")


@dataclass(frozen=True)
class FitSettings:
    """Knobs of `fit_trajectories`; the defaults are the benchmarked ones (bench/).

    Solver (see `_core.fit_one`): grid starts are the best point of each of n_starts beta
    bands x n_u_bands log-tau0 bands of the (b_grid x u_grid) grid, plus the paper's initial
    guess; vp_iter variable-projection LM iterations from every start; the best n_newton go
    on with newton_iter Newton steps on the projected SSE; lm_iter LM steps polish all five
    parameters. Curves that have not met the stopping rule after that first round go on, as
    a smaller batch, for up to max_rounds rounds in all (1: the first round only): each
    further round is round_vp_iter Gauss-Newton and round_newton_iter Newton steps on the
    projected SSE and round_lm_iter LM steps (`_refine.refine_one`). Host: chunk_size curves
    per device call and workers chunks in flight at once (None: 128 x 2 on the CPU, 65536 x 1
    on an accelerator), round_chunk_size curves at most per call of the later rounds (None: 32
    on the CPU, chunk_size on an accelerator). These choose the rows per compiled call only
    (with few curves, workers does too): a row's fit does not depend on the others, but a
    different call shape can change its last bits (measured: 64 vs 128 rows; 128 and 256
    agreed). Integers are coerced with int(), grids stored as tuples of floats (hashable).
    ValueError for settings the solver cannot run with (no starts, negative iteration counts,
    empty or non-finite grids, b_grid <= 0, ...).
    """

    n_starts: int = 3
    n_u_bands: int = 2
    vp_iter: int = 30
    n_newton: int = 1
    newton_iter: int = 12
    lm_iter: int = 20
    max_rounds: int = 16
    round_vp_iter: int = 10
    round_newton_iter: int = 25
    round_lm_iter: int = 20
    b_grid: tuple[float, ...] = _B_GRID
    u_grid: tuple[float, ...] = _U_GRID
    chunk_size: int | None = None
    workers: int | None = None
    round_chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in (*_SOLVER, "max_rounds", *_ROUNDS):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("b_grid", "u_grid"):
            grid = np.asarray(getattr(self, name), dtype=np.float64)
            if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
                raise ValueError(f"{name} must be a non-empty 1-D finite grid, got {grid!r}")
            object.__setattr__(self, name, tuple(grid.tolist()))
        self._check_solver()
        for name in ("chunk_size", "workers", "round_chunk_size"):
            v = getattr(self, name)
            v = None if v is None else int(v)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
            object.__setattr__(self, name, v)

    def _check_solver(self) -> None:
        """ValueError, naming the field, for settings the solver cannot run with."""
        at_least = {"n_starts": 1, "n_u_bands": 1, "n_newton": 1, "max_rounds": 1}
        at_least.update({n: 0 for n in ("vp_iter", "newton_iter", "lm_iter", *_ROUNDS)})
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        n_runs = self.n_starts * self.n_u_bands + 1  # the grid cells' starts and the paper's
        if self.n_newton > n_runs:
            raise ValueError(
                f"n_newton must be <= n_starts * n_u_bands + 1 = {n_runs} (the starts), "
                f"got {self.n_newton}"
            )
        if min(self.b_grid) <= 0:
            raise ValueError(f"b_grid must be > 0 (the basis divides by beta), got {self.b_grid}")
        for grid, bands, what in ((self.b_grid, self.n_starts, "n_starts"),
                                  (self.u_grid, self.n_u_bands, "n_u_bands")):  # fmt: skip
            if len(grid) < bands:
                raise ValueError(f"{what} = {bands} bands need a grid of >= {bands} points")
        if self.max_rounds > 1 and sum(getattr(self, n) for n in _ROUNDS) == 0:
            raise ValueError("max_rounds > 1 needs round_*_iter steps (all are 0)")

    @classmethod
    def from_options(cls, settings: FitSettings | None = None, **options: Any) -> FitSettings:
        """The settings a fit runs with: `settings` (default FitSettings()) with the fields
        named in `options` replaced, and chunk_size / workers of None set for the current JAX
        backend. Raises TypeError for an option that is not a field."""
        base = cls() if settings is None else settings
        values = {f.name: options.pop(f.name, getattr(base, f.name)) for f in fields(cls)}
        # CPU: small chunks stay in cache, and two in flight at once keep both cores busy
        # (_chunks._run_chunks); 128 x 2 measured 1.3x faster per curve than 512 x 1, 512 x 1
        # 2.2x faster than 4096 x 1
        cpu = jax.default_backend() == "cpu"
        if values["chunk_size"] is None:
            values["chunk_size"] = 128 if cpu else 65536
        if values["workers"] is None:
            values["workers"] = 2 if cpu else 1
        # the later rounds: up to 32 rows per call measured 1.5x faster per curve than 8 and
        # 1.1x faster than 64 on the CPU (the leftovers of 20,000 curves; a call's loops stop
        # once all its rows have stopped, so smaller calls stop earlier but pay more overhead)
        if values["round_chunk_size"] is None:
            values["round_chunk_size"] = 32 if cpu else values["chunk_size"]
        out = cls(**values)
        if options:
            raise TypeError(f"unknown options {sorted(options)}")
        return out

    def compiled_part(self) -> FitSettings:
        """These settings without chunk_size, workers and round_chunk_size, which only choose
        how many rows one compiled call takes (a shape, keyed separately): what a compiled
        function depends on."""
        return replace(self, chunk_size=None, workers=None, round_chunk_size=None)

    def solver(self) -> dict[str, int]:
        """The keyword arguments of `_core.fit_batch` (the first round)."""
        return {name: getattr(self, name) for name in _SOLVER}

    def round_solver(self) -> dict[str, int]:
        """The keyword arguments of `_refine.refine_batch` (every further round)."""
        return {name.removeprefix("round_"): getattr(self, name) for name in _ROUNDS}

    def grids(self) -> tuple[np.ndarray, np.ndarray]:
        """(b_grid, u_grid) as float64 arrays."""
        return np.asarray(self.b_grid, np.float64), np.asarray(self.u_grid, np.float64)

    def as_dict(self) -> dict[str, Any]:
        """Plain (JSON-ready) dict of every field, grids as lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["b_grid"], out["u_grid"] = list(self.b_grid), list(self.u_grid)
        return out
