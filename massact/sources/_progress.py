"""A sweep's progress on the driver: a bar per model and one for the sweep with its ETA (rich),
or, without a terminal, logged lines (logger massact.engine); and the bookkeeping that lets
running tasks report units before they finish (`_Reported`). Used by `_engine.run_tasks`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: at run time _engine imports this module, not the reverse
    from ._engine import Task, TaskFailure

# the engine's logger: progress lines keep the name they always had
log = logging.getLogger("massact.engine")


def _duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class _Progress:
    """Per-model bars (units done / total) and a sweep bar with its ETA when `show`; without
    bars (no terminal, --no-progress), a logged line (logger massact.engine, INFO) at most every
    `every_s` seconds and at the end: units done / total per model, and the sweep's ETA."""

    title: str
    totals: dict[str, int]
    show: bool
    every_s: float = 30.0
    _bar: Any = None
    _ids: dict[str, Any] = field(default_factory=dict)
    _done: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)

    def __enter__(self) -> _Progress:
        if not self.show:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.__enter__()
        self._ids["*"] = self._bar.add_task(self.title, total=sum(self.totals.values()))
        if len(self.totals) > 1:
            for model, total in self.totals.items():
                self._ids[model] = self._bar.add_task(f"  {model}", total=total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, model: str, n: float) -> None:
        if not n:
            return
        if self._bar is not None:
            self._bar.advance(self._ids["*"], n)
            if model in self._ids:
                self._bar.advance(self._ids[model], n)
            return
        self._done[model] = self._done.get(model, 0.0) + n
        now, done, total = time.monotonic(), sum(self._done.values()), sum(self.totals.values())
        if now - self._last < self.every_s and done < total:
            return
        self._last = now
        rate = done / max(now - self._start, 1e-9)
        eta = f", ETA {_duration((total - done) / rate)}" if 0 < done < total else ""
        models = self.totals.items() if len(self.totals) > 1 else ()
        per_model = ", ".join(f"{m} {self._done.get(m, 0):.0f}/{t}" for m, t in models)
        tail = f" ({per_model})" if per_model else ""
        share = 100 * done / max(total, 1)
        log.info("%s: %.0f/%d (%.0f%%)%s%s", self.title, done, total, share, eta, tail)

    def failed(self, failure: TaskFailure) -> None:
        """Name a failed task at once (above the bars, else as a logged warning)."""
        if self._bar is not None:
            self._bar.console.print(f"failed: {failure.name}: {failure.error}", markup=False)
        else:
            log.warning("task %s failed: %s", failure.name, failure.error)


class _Reported:
    """Units reported by running tasks, so that completion adds only what is left."""

    def __init__(self, progress: _Progress) -> None:
        self.progress = progress
        self.seen: dict[str, float] = {}

    def report(self, task: Task, n: float) -> None:
        self.seen[task.name] = self.seen.get(task.name, 0) + n
        self.progress.advance(task.model, n)

    def complete(self, task: Task) -> None:
        left = task.units - self.seen.pop(task.name, 0)
        self.progress.advance(task.model, max(0.0, left))
