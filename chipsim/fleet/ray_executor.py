"""Fleet tasks on a Ray cluster (``pip install -r requirements/ray.txt``; optional).

``AGEDCHIP_RAY_ADDRESS`` selects the cluster: ``auto`` (this node belongs to a running cluster),
``ray://head:10001`` (Ray Client), or ``local`` (start a private cluster in this process, as the
tests do). Every Ray worker must see the chip store at the same path (a shared, read-only
volume: docs/scale-out.md) and have agedchip importable (install it in the cluster image, or
pass ``runtime_env``). A task is :func:`chipsim.fleet.evaluate.evaluate_task` with one CPU:
results are fetched in submission order, so rows do not depend on which node ran what.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chipsim.fleet.errors import FleetError
from chipsim.fleet.evaluate import evaluate_task
from chipsim.fleet.executors import ENV_RAY_ADDRESS, POLL_S, Executor, _cancelled_error, _default_workers
from chipsim.fleet.program import cancelled

LOCAL = "local"


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayExecutor(Executor):
    """``workers``: tasks in flight at once (default ``AGEDCHIP_FLEET_WORKERS`` or the CPU count;
    on a cluster, raise it to the cluster's CPUs). A local cluster gets ``workers`` CPUs."""

    name = "ray"

    def __init__(
        self, address: str | None = None, workers: int | None = None, runtime_env: dict[str, Any] | None = None
    ):
        super().__init__()
        self.address = address or os.environ.get(ENV_RAY_ADDRESS) or LOCAL
        self.workers = workers or _default_workers()
        self.runtime_env = runtime_env
        self._owns_cluster = False
        self._remote = None

    def describe(self) -> str:
        return f"ray({self.address}, {self.workers})"

    def start(self) -> None:
        """Connect (or start the local cluster); idempotent."""
        if self._remote is not None:
            return
        try:
            import ray
        except ImportError:
            raise FleetError(
                f"{ENV_RAY_ADDRESS}: Ray is not installed (pip install -r requirements/ray.txt)", ENV_RAY_ADDRESS
            ) from None
        if not ray.is_initialized():
            env = self.runtime_env
            if self.address == LOCAL:
                # Local workers import chipsim from this checkout, wherever the driver's cwd is.
                repo = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
                env = env or {"env_vars": {"PYTHONPATH": path}}
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, runtime_env=env)
            else:
                ray.init(address=self.address, runtime_env=env, log_to_driver=False)
            self._owns_cluster = True
        self._remote = ray.remote(num_cpus=1, max_retries=2)(evaluate_task)

    def run(self, tasks, progress, cancel):
        import ray

        self.start()
        refs: list[Any] = []
        in_flight: list[Any] = []
        done = 0
        # On cancellation or a task's error, the tasks in flight (at most `workers`, one fleet
        # task each) are left to finish and their results dropped, not ray.cancel()-ed: in Ray
        # 2.58 a cancel that races with the task's completion reply fails a RAY_CHECK ("Tried to
        # complete task that was not pending", ray-project/ray#54846) and ends this process with
        # status 1 — the service, for a fleet job. Seen once in this project's CI (2026-12-01).
        for task in tasks:
            while len(in_flight) >= self.workers:
                done += self._wait(in_flight, cancel, len(tasks), done, progress)
            if cancelled(cancel):  # submit nothing more once cancelled
                raise _cancelled_error(done, len(tasks))
            refs.append(self._remote.remote(task))  # type: ignore[union-attr]
            in_flight.append(refs[-1])
        while in_flight:
            done += self._wait(in_flight, cancel, len(tasks), done, progress)
        return ray.get(refs)

    def _wait(self, in_flight: list[Any], cancel, total: int, done: int, progress) -> int:
        import ray

        if cancelled(cancel):
            raise _cancelled_error(done, total)
        ready, rest = ray.wait(in_flight, num_returns=1, timeout=POLL_S)
        for ref in ready:
            ray.get(ref)  # raise a task's error now
        in_flight[:] = rest
        if ready and progress:
            progress(done + len(ready), total)
        return len(ready)

    def close(self) -> None:
        if self._owns_cluster:
            import ray

            ray.shutdown()
            self._owns_cluster = False
        self._remote = None
