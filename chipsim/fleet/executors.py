"""Where fleet tasks run: one small interface, interchangeable implementations.

``Executor.map(tasks) -> rows`` runs :func:`chipsim.fleet.evaluate.evaluate_task` on every task
and returns the rows in task order, whatever order the tasks finished in. Implementations:

- :class:`SerialExecutor`: in this process, one task after another (the reference).
- :class:`LocalProcessExecutor` (default): ``concurrent.futures.ProcessPoolExecutor``, no new
  dependency. Workers are *spawned*, not forked: the service process runs onnxruntime thread
  pools, which a fork would copy mid-state. As with any spawned pool, each worker re-imports the
  calling program's main module, so a script must guard its top level with
  ``if __name__ == "__main__":`` (and cannot come from stdin).
- :class:`chipsim.fleet.ray_executor.RayExecutor`: a Ray cluster (``AGEDCHIP_RAY_ADDRESS``).

Tasks carry no chip data, only the store root, chip id and digest: every worker reads the chip
from the (shared, read-only) store and verifies it, so a task costs the same wherever it runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from chipsim.fleet.errors import FleetCancelled, FleetError
from chipsim.fleet.evaluate import EvalRow, EvalTask, TaskResult, evaluate_task
from chipsim.fleet.program import Cancel, cancelled

#: Environment: a Ray cluster address ("auto", "ray://host:10001", or "local" for a cluster
#: started in this process); unset → local processes.
ENV_RAY_ADDRESS = "AGEDCHIP_RAY_ADDRESS"
#: Environment: worker processes (local) or tasks in flight (Ray); default: the CPU count.
ENV_WORKERS = "AGEDCHIP_FLEET_WORKERS"
#: How often a waiting executor looks at the cancel flag, s.
POLL_S = 0.2


class Executor(ABC):
    """Runs evaluation tasks. Use as a context manager, or call :meth:`close`."""

    name = "executor"

    def __init__(self) -> None:
        self.last_results: list[TaskResult] = []  # per-task timings of the last map (benchmarks)

    def map(
        self,
        tasks: Sequence[EvalTask],
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: Cancel | None = None,
    ) -> list[EvalRow]:
        """Rows of every task, in task order. ``progress(done, total)`` after each task;
        ``cancel`` is checked between tasks (:class:`FleetCancelled`; running tasks finish)."""
        results = self.run(list(tasks), progress, cancel)
        self.last_results = results
        return [row for r in results for row in r.rows]

    @abstractmethod
    def run(
        self, tasks: list[EvalTask], progress: Callable[[int, int], None] | None, cancel: Cancel | None
    ) -> list[TaskResult]:
        """TaskResults in task order."""

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cancelled_error(done: int, total: int) -> FleetCancelled:
    return FleetCancelled(f"evaluation cancelled after {done} of {total} task(s)", None)


class SerialExecutor(Executor):
    name = "serial"

    def run(self, tasks, progress, cancel):
        out = []
        for i, task in enumerate(tasks):
            if cancelled(cancel):
                raise _cancelled_error(i, len(tasks))
            out.append(evaluate_task(task))
            if progress:
                progress(i + 1, len(tasks))
        return out


def _default_workers() -> int:
    raw = os.environ.get(ENV_WORKERS)
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise FleetError(f"{ENV_WORKERS}: must be a positive integer, got {raw!r}", ENV_WORKERS)
        return n
    return os.cpu_count() or 1


class LocalProcessExecutor(Executor):
    """A pool of spawned worker processes on this machine, started on first use and kept until
    :meth:`close` (each worker keeps its last chips loaded)."""

    name = "local"

    def __init__(self, workers: int | None = None):
        super().__init__()
        self.workers = workers or _default_workers()
        if self.workers < 1:
            raise FleetError("workers: must be ≥ 1", "workers")
        self._pool: cf.ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"local({self.workers})"

    def pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def warm_up(self) -> None:
        """Start every worker now (process start and imports), so timings exclude it."""
        list(self.pool().map(_ping, range(self.workers)))

    def run(self, tasks, progress, cancel):
        pool = self.pool()
        futures = [pool.submit(evaluate_task, t) for t in tasks]
        pending = set(futures)
        try:
            while pending:
                if cancelled(cancel):
                    raise _cancelled_error(len(futures) - len(pending), len(futures))
                done, pending = cf.wait(pending, timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    f.result()  # raise a task's error now, not after the others ran
                if done and progress:
                    progress(len(futures) - len(pending), len(futures))
        except cf.process.BrokenProcessPool as err:
            self.close()  # a broken pool cannot be reused; the next map starts a new one
            raise RuntimeError(
                "a fleet worker process died: killed (e.g. out of memory), or it could not re-import the "
                "calling program's main module, which spawned workers do: run from a file whose top level is "
                "guarded by `if __name__ == '__main__':` (not from stdin), or use SerialExecutor"
            ) from err
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _ping(_: int) -> int:
    import chipsim.fleet.evaluate  # noqa: F401 - the imports a task needs

    return os.getpid()
