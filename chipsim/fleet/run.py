"""Running a fleet evaluation: choose an executor, map the tasks, summarise.

Apart from :mod:`chipsim.fleet.evaluate` (what one task computes) and
:mod:`chipsim.fleet.executors` (where tasks run), so neither of those imports the other's user.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from chipsim.fleet.errors import FleetError
from chipsim.fleet.evaluate import make_tasks, summarise
from chipsim.fleet.executors import ENV_RAY_ADDRESS, Executor, LocalProcessExecutor
from chipsim.fleet.manifest import Fleet, FleetStore
from chipsim.fleet.spec import FleetEvalSpec


def executor_from_env() -> Executor:
    """:class:`RayExecutor` when ``AGEDCHIP_RAY_ADDRESS`` is set, else :class:`LocalProcessExecutor`."""
    if os.environ.get(ENV_RAY_ADDRESS):
        from chipsim.fleet.ray_executor import RayExecutor

        return RayExecutor()
    return LocalProcessExecutor()


def evaluate_fleet(
    fleets: FleetStore,
    fleet: str | Fleet,
    spec: FleetEvalSpec,
    executor: Executor | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    ages_per_task: int | None = None,
) -> dict[str, Any]:
    """Evaluate a published fleet (see :func:`summarise` for the report). ``executor`` defaults to
    :func:`executor_from_env` (closed afterwards); ``progress(done,
    total)`` counts finished tasks; ``cancel`` (Event or callable) is checked between tasks."""
    if isinstance(fleet, str):
        fleet = fleets.get(fleet)
    if fleet.eval_samples == 0:
        raise FleetError(
            f"fleet_id: fleet {fleet.fleet_id!r} has no labelled eval set; program it with one", "fleet_id"
        )
    tasks = make_tasks(fleet, fleets.store.root, spec, ages_per_task)
    own = executor is None
    executor = executor or executor_from_env()
    t0 = time.perf_counter()
    try:
        rows = executor.map(tasks, progress=progress, cancel=cancel)
    finally:
        if own:
            executor.close()
    report = summarise(fleet, spec, rows)
    report.update(executor=executor.describe(), tasks=len(tasks), seconds=time.perf_counter() - t0)
    return report
