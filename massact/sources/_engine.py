"""Where a sweep's units of work run: in this process, in local worker processes, or on Ray.

A sweep is a list of `Task`s: a module-level function and its arguments, named for progress and
failure messages ("pythia-70m/step1000"), grouped by model. `run_tasks` runs them on an
`Engine` and hands each task's return value to `on_result` *on the driver*, as it arrives, so
the one writer of the dataset is the calling process (tasks return statistics; they never write
shared state unless the caller's task function does so on purpose, as the local mini-suite
engine does for its resume files).

- `local` with workers = 1: the tasks run one after the other in this process (one model in
  memory at a time, the current device).
- `local` with workers N > 1: a pool of N fresh ("spawn") processes; the largest tasks start
  first. A crashed worker fails the tasks it held (named); nothing is retried.
- `ray`: one Ray task per unit on an existing cluster (`address`) or a local Ray instance with
  this machine's CPUs and GPUs; each asks for one CPU, and one GPU when the cluster has GPUs;
  a worker that dies mid-task is retried (`retries`) by Ray, so every task's result arrives
  once. Ray is imported only here, only for this engine.

Failures: a task that raises is named (task name and the error's first line), logged, and the
others go on; `run_tasks` returns the failures and `raise_failures` turns them into one
`SweepError` after the rest of the sweep has been written. Progress (with `show`): one bar per
model (units done / total) and one for the sweep with its ETA (drawn by `_progress`).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._progress import _Progress as _Progress  # re-exported: tests import it from here
from ._progress import _Reported

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """How a sweep runs: `kind` "local" or "ray"; `workers` (local: processes, None = the
    sweep's own default; ray: tasks in flight at most, None = as the cluster's resources allow);
    `address` of an existing Ray cluster (None: start a local one); `retries` of a Ray task whose
    worker died."""

    kind: str = "local"
    workers: int | None = None
    address: str | None = None
    retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.kind!r}")
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(f"workers must be a positive int, got {self.workers!r}")
        if self.address is not None and self.kind != "ray":
            raise ValueError("a Ray address goes with the ray engine only")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {self.retries!r}")


def as_engine(
    engine: Engine | str | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
) -> Engine:
    """An Engine from an Engine, a kind name or None (local), with workers/address applied."""
    if isinstance(engine, Engine):
        if workers is None and address is None:
            return engine
        return Engine(
            engine.kind,
            workers if workers is not None else engine.workers,
            address if address is not None else engine.address,
            engine.retries,
        )
    return Engine(engine or "local", workers, address)


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Task:
    """One unit of work: fn(*args) runs anywhere and returns a picklable value.

    name: shown in progress and failures; model: the progress group; units: the task's share of
    its model's bar; cost: larger tasks start first on a pool. With `reports`, fn also gets a
    keyword `report` (a callable taking a number of units done) while it runs locally.
    """

    name: str
    model: str
    fn: Callable[..., Any]
    args: tuple = ()
    units: int = 1
    cost: float = 1.0
    reports: bool = False


@dataclass(frozen=True)
class TaskFailure:
    name: str
    error: str


class SweepError(RuntimeError):
    """Some tasks of a sweep failed; the others were written. Re-running retries the failed."""

    def __init__(self, failures: Sequence[TaskFailure], total: int) -> None:
        self.failures = list(failures)
        shown = "; ".join(f"{f.name}: {f.error}" for f in self.failures[:5])
        more = f"; and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} of {total} tasks failed: {shown}{more}")


def raise_failures(failures: Sequence[TaskFailure], total: int) -> None:
    if failures:
        raise SweepError(failures, total)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# ----------------------------------------------------------------------------- running
def run_tasks(
    tasks: Sequence[Task],
    engine: Engine,
    on_result: Callable[[Task, Any], None],
    *,
    title: str = "sweep",
    show: bool = False,
    default_workers: int = 1,
) -> list[TaskFailure]:
    """Run `tasks` on `engine`; `on_result(task, value)` on the driver as each one finishes.

    Returns the failed tasks (named, with the error's first line); an exception raised by
    `on_result` (the driver's own writing) or a KeyboardInterrupt stops the sweep at once.
    `default_workers`: the local engine's processes when `engine.workers` is None.
    """
    totals: dict[str, int] = {}
    for t in tasks:
        totals[t.model] = totals.get(t.model, 0) + t.units
    if not tasks:
        return []
    with _Progress(title, totals, show) as progress:
        state = _Reported(progress)
        if engine.kind == "ray":
            return _run_ray(tasks, engine, on_result, state)
        workers = min(engine.workers or default_workers, len(tasks))
        if workers <= 1:
            return _run_here(tasks, on_result, state)
        return _run_pool(tasks, workers, on_result, state)


def _run_here(tasks, on_result, state: _Reported) -> list[TaskFailure]:
    failures = []
    for task in tasks:
        kwargs = {"report": lambda n, t=task: state.report(t, n)} if task.reports else {}
        try:
            value = task.fn(*task.args, **kwargs)
        except Exception as exc:  # named, and the sweep goes on
            failures.append(TaskFailure(task.name, _first_line(exc)))
            state.progress.failed(failures[-1])
            continue
        on_result(task, value)
        state.complete(task)
    return failures


# worker side of the local pool: the queue progress reports go to (set by the initializer)
_REPORTS: Any = None


def _pool_init(reports) -> None:
    global _REPORTS
    _REPORTS = reports
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when the sweep's process dies (a killed sweep leaves no
    worker writing on after it; its re-run resumes alone)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


def _pool_call(name: str, fn, args: tuple, reports: bool):
    if not reports:
        return fn(*args)

    def report(n: float) -> None:
        _REPORTS.put((name, n))

    return fn(*args, report=report)


def _run_pool(tasks, workers: int, on_result, state: _Reported) -> list[TaskFailure]:
    ctx = multiprocessing.get_context("spawn")  # fork of a process holding torch threads: no
    reports = ctx.Queue()
    by_name = {t.name: t for t in tasks}
    failures: list[TaskFailure] = []

    def drain() -> None:
        while True:
            try:
                name, n = reports.get_nowait()
            except queue.Empty:
                return
            state.report(by_name[name], n)

    order = sorted(tasks, key=lambda t: -t.cost)  # largest first: the pool ends together
    pool = cf.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_pool_init, initargs=(reports,)
    )
    try:
        pending = {pool.submit(_pool_call, t.name, t.fn, t.args, t.reports): t for t in order}
        while pending:
            done, _ = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            drain()
            for fut in done:
                task = pending.pop(fut)
                try:
                    value = fut.result()
                except Exception as exc:  # the task raised, or its worker died
                    failures.append(TaskFailure(task.name, _first_line(exc)))
                    state.progress.failed(failures[-1])
                    continue
                on_result(task, value)
                state.complete(task)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    drain()
    reports.close()
    return failures


# ----------------------------------------------------------------------------- Ray
def import_ray():
    """The ray module, or an ImportError saying how to get it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "--engine ray needs the `ray` package: pip install 'massact[ray]' (or pip install ray)"
        ) from exc
    return ray


def _run_ray(tasks, engine: Engine, on_result, state: _Reported) -> list[TaskFailure]:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if engine.address:
            ray.init(address=engine.address, **kwargs)
        else:  # a local instance with this machine's CPUs and GPUs
            ray.init(**kwargs)
        started = True
    try:
        return _ray_loop(ray, tasks, engine, on_result, state)
    finally:
        if started:
            ray.shutdown()


def _ray_loop(ray, tasks, engine: Engine, on_result, state: _Reported) -> list[TaskFailure]:
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remotes: dict[Any, Any] = {}
    shared: dict[int, Any] = {}  # one object-store copy of an argument many tasks share

    def ref(arg):
        if isinstance(arg, bytes | bytearray) or hasattr(arg, "__array__"):
            if id(arg) not in shared:
                shared[id(arg)] = (ray.put(arg), arg)  # keep arg alive: ids stay unique
            return shared[id(arg)][0]
        return arg

    def submit(task: Task):
        if task.fn not in remotes:
            remotes[task.fn] = ray.remote(task.fn).options(
                num_cpus=1, num_gpus=gpus, max_retries=engine.retries, retry_exceptions=False
            )
        return remotes[task.fn].remote(*[ref(a) for a in task.args])

    todo = sorted(tasks, key=lambda t: -t.cost)
    limit = engine.workers or len(todo)
    pending: dict[Any, Task] = {}
    failures: list[TaskFailure] = []
    try:
        while todo or pending:
            while todo and len(pending) < limit:
                task = todo.pop(0)
                pending[submit(task)] = task
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for obj in ready:
                task = pending.pop(obj)
                try:
                    value = ray.get(obj)
                except Exception as exc:  # RayTaskError (the task raised), retries exhausted...
                    cause = getattr(exc, "cause", None)
                    failures.append(TaskFailure(task.name, _first_line(cause or exc)))
                    state.progress.failed(failures[-1])
                    continue
                on_result(task, value)
                state.complete(task)
    except BaseException:
        for obj in pending:
            ray.cancel(obj, force=True)
        raise
    return failures
