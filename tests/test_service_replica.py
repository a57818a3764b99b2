"""One writer per state folder, any number of read-only replicas (issue #15, finding 1), with
real ``python -m service`` processes on one temporary state folder:

- a second writer refuses to start: non-zero exit, a message naming the folder and the holder's
  pid, no traceback; after the first writer stops (its store closed), a new writer starts;
- a replica (``AGEDCHIP_READ_ONLY=true``) beside the writer: it programs no default chip, refuses
  program/delete/recalibrate with 405 naming the setting, serves a chip the writer programs after
  the replica started with bit-identical seeded outputs, and drops a chip the writer deletes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.service_process import REPO, http, run_service, stop, wait_until

pytestmark = pytest.mark.slow

#: No default chip: the tests program the chips they need (startup then takes ~2 s, not ~10 s).
QUIET = {"AGEDCHIP_DEFAULT_MODEL": "", "AGEDCHIP_REFRESH_SECONDS": "0"}
RELIST_S = "0.5"


def _env(state_dir, **extra):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AGEDCHIP_") or k == "AGEDCHIP_ZOO_DIR"}
    env.update(
        {
            "AGEDCHIP_HOST": "127.0.0.1",
            "AGEDCHIP_PORT": "0",
            "AGEDCHIP_STATE_DIR": str(state_dir),
            "AGEDCHIP_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            **QUIET,
            **extra,
        }
    )
    return env


def test_second_writer_refuses_to_start_then_starts_after_the_first_stops(tmp_path):
    state = tmp_path / "state"
    with run_service(sys.executable, REPO, state, tmp_path / "first.log", env_extra=QUIET) as (base, first):
        second = subprocess.run(
            [sys.executable, "-m", "service"], cwd=REPO, env=_env(state), capture_output=True, text=True, timeout=120
        )
        assert second.returncode != 0
        err = second.stderr
        assert str(state) in err, err
        assert f"pid {first.pid}" in err, err
        assert "AGEDCHIP_READ_ONLY" in err, err  # says how to serve beside the writer
        assert "Traceback" not in err and "Traceback" not in second.stdout, err
        assert http("GET", base + "/readyz")[0] == 200  # the first writer is untouched
    # The first writer's store was closed on shutdown: the lock is free again.
    with run_service(sys.executable, REPO, state, tmp_path / "third.log", env_extra=QUIET) as (base, _):
        assert http("GET", base + "/readyz")[0] == 200


def _infer(base, chip, seed):
    x = [[[[0.25 * ((r + c) % 5) for c in range(8)] for r in range(8)]]] * 2  # digits: [batch, 1, 8, 8]
    status, body = http(
        "POST", base + "/infer", {"chip_id": chip, "inputs": x, "age": "1d", "seed": seed, "read_seed": 3}
    )
    assert status == 200, body
    return json.loads(body)["outputs"]


def test_read_only_replica_serves_what_the_writer_programs(tmp_path):
    state = tmp_path / "state"
    replica_env = {
        **QUIET,
        "AGEDCHIP_READ_ONLY": "true",
        "AGEDCHIP_READ_ONLY_RELIST_SECONDS": RELIST_S,
        # would be programmed by a writer; a replica must not
        "AGEDCHIP_DEFAULT_MODEL": "cnn-hwa",
    }
    with (
        run_service(sys.executable, REPO, state, tmp_path / "writer.log", env_extra=QUIET) as (writer, _),
        run_service(sys.executable, REPO, state, tmp_path / "replica.log", env_extra=replica_env) as (replica, _),
    ):
        assert json.loads(http("GET", replica + "/chips")[1])["chips"] == []  # no default chip programmed

        for method, path, body in (
            ("POST", "/program", {"zoo_model": "cnn-hwa", "chip_id": "nope"}),
            ("DELETE", "/chips/any", None),
            ("POST", "/chips/any/recalibrate", None),
        ):
            status, raw = http(method, replica + path, body)
            assert status == 405, (path, status, raw)
            assert "AGEDCHIP_READ_ONLY" in json.loads(raw)["error"]["message"], raw

        status, raw = http(
            "POST", writer + "/program", {"zoo_model": "mlp-plain", "chip_id": "late", "seed": 5}, timeout=120
        )
        assert status == 201, raw
        wait_until(lambda: http("GET", replica + "/chips/late")[0] == 200, 30, "the replica to list chip 'late'")
        for seed in (1, 2):
            assert _infer(replica, "late", seed) == _infer(writer, "late", seed)  # bit-identical (JSON floats)
        assert _infer(replica, "late", 1) != _infer(replica, "late", 2)  # the seed matters: the check can fail

        assert http("DELETE", writer + "/chips/late")[0] == 204
        wait_until(lambda: http("GET", replica + "/chips/late")[0] == 404, 30, "the replica to drop chip 'late'")


def test_replica_on_a_missing_folder_exits_with_a_message(tmp_path):
    missing = tmp_path / "nothing-here"
    proc = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=_env(missing, AGEDCHIP_READ_ONLY="true"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not missing.exists()  # a replica creates nothing


def test_replica_starts_on_a_folder_the_writer_never_finished_creating(tmp_path):
    """A state folder with nothing in it (the writer's first start not yet done) serves no chips."""
    state = tmp_path / "state"
    state.mkdir()
    t0 = time.monotonic()
    with run_service(
        sys.executable, REPO, state, tmp_path / "replica.log", env_extra={**QUIET, "AGEDCHIP_READ_ONLY": "true"}
    ) as (replica, proc):
        assert json.loads(http("GET", replica + "/chips")[1])["chips"] == []
        stop(proc)
    assert time.monotonic() - t0 < 120
