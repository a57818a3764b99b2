"""The Ray executor on a real local Ray cluster (2 CPUs, no dashboard) gives the very rows of
the serial and local-process executors. Ray takes ~10 s to start here: marked slow (CI runs it).

The test body runs in a child pytest process: when a local raylet dies, Ray's driver ends its
own process with status 1 and no traceback, which took a whole CI run down with it once (pytest
stopped silently at this test, 2026-11-30). In a child, that is this test failing, with its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chipsim import ChipStore
from chipsim.fleet import (
    FleetCancelled,
    FleetCorruptError,
    FleetEvalSpec,
    FleetSpec,
    FleetStore,
    SerialExecutor,
    evaluate_fleet,
    executor_from_env,
    make_tasks,
    program_fleet,
)
from chipsim.fleet.evaluate import EvalTask

ray = pytest.importorskip("ray", reason="Ray is optional (requirements/ray.txt); the Ray executor test needs it")
from chipsim.fleet.ray_executor import RayExecutor  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
EVAL = FleetEvalSpec.parse(
    {"ages_s": [1.0, 86400.0, 3.15e8], "readouts": 2, "slo": {"metric": "accuracy", "threshold": 0.9}}
)


#: Set in the child process that runs the Ray test's body.
CHILD_ENV = "AGEDCHIP_TEST_RAY_CHILD"


@pytest.mark.slow
def test_ray_cluster_rows_equal_serial_rows():
    """Runs :func:`test_ray_cluster_body` in a child pytest process (see the module
    docstring); fails with the child's output when it fails or dies."""
    node = f"{__file__}::test_ray_cluster_body"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node]
    child = subprocess.run(cmd, env={**os.environ, CHILD_ENV: "1"}, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-4000:]
    assert "1 passed" in child.stdout  # the body ran, not skipped


@pytest.mark.skipif(not os.environ.get(CHILD_ENV), reason="runs only in the child process of the test above")
def test_ray_cluster_body(tmp_path, monkeypatch):
    store = ChipStore(tmp_path / "state")
    fleets = FleetStore(store)
    fleet = program_fleet(
        store,
        FleetSpec(fleet_id="r", model_name="mlp-hwa", n_chips=3, seed=5),
        (ZOO / "mlp-hwa.onnx").read_bytes(),
        (ZOO / "mlp-hwa.eval.npz").read_bytes(),
        fleets=fleets,
    )
    tasks = make_tasks(fleet, store.root, EVAL, ages_per_task=2)
    serial = SerialExecutor().map(tasks)
    assert not ray.is_initialized()

    # ray.cancel racing a task's completion crashes the driver in Ray 2.58 (see RayExecutor.run):
    # the executor must never call it, on cancellation or on a task's error
    def no_cancel(*args, **kwargs):
        raise AssertionError("RayExecutor called ray.cancel")

    monkeypatch.setattr(ray, "cancel", no_cancel)
    monkeypatch.setenv("AGEDCHIP_RAY_ADDRESS", "local")  # the one variable that selects Ray
    monkeypatch.setenv("AGEDCHIP_FLEET_WORKERS", "2")
    assert isinstance(executor_from_env(), RayExecutor)
    done = []
    with RayExecutor() as ex:
        assert ex.describe() == "ray(local, 2)"
        rows = ex.map(tasks, progress=lambda d, n: done.append(d))
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
        # tasks ran in Ray worker processes, not in this one
        assert all(r.worker.rsplit(":", 1)[1] != str(__import__("os").getpid()) for r in ex.last_results)
        # a task's domain error comes back as itself
        bad = EvalTask(**{**tasks[0].__dict__, "digest": "f" * 64})
        with pytest.raises(FleetCorruptError):
            ex.map([bad])
        stop = threading.Event()
        stop.set()
        with pytest.raises(FleetCancelled):
            ex.map(tasks, cancel=stop)
        report = evaluate_fleet(fleets, fleet, EVAL, ex)
    assert not ray.is_initialized()  # the executor started the cluster, so it stops it
    assert rows == serial
    assert sorted(done) == list(range(1, len(tasks) + 1))
    assert report["executor"] == "ray(local, 2)" and report["tasks"] == 3
    with SerialExecutor() as ex:
        assert evaluate_fleet(fleets, fleet, EVAL, ex)["results"] == report["results"]
