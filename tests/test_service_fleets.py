"""Fleets over HTTP: programming and evaluation as jobs, listing, deletion, the chip-delete rule,
restart recovery, and the fleet gauges. Evaluations run on chipsim's SerialExecutor here (the
local-process and Ray executors are checked against it in tests/test_fleet*.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from chipsim.fleet import SerialExecutor, wilson_interval
from service.app import create_app
from tests.service_helpers import ZOO_MODEL, err, make_settings

DASHBOARD = Path(__file__).resolve().parent.parent / "docker" / "grafana" / "dashboards" / "agedchip.json"


def _serial(client) -> None:
    client.app.state.fleets.executor = SerialExecutor


def _wait(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/jobs/{job_id}").json()
        if view["status"] in ("succeeded", "failed", "cancelled"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {view['status']}")


def _program(client, fleet_id: str = "fl", n: int = 4, seed: int = 3) -> dict:
    r = client.post("/fleets", json={"fleet_id": fleet_id, "model": ZOO_MODEL, "n_chips": n, "seed": seed})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['job_id']}"
    return _wait(client, r.json()["job_id"])


def _metrics(client) -> dict:
    out = {}
    for f in text_string_to_metric_families(client.get("/metrics").text):
        for s in f.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_program_list_get_evaluate_delete(client):
    _serial(client)
    job = _program(client)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "fleet_program" and job["progress"]["step"] == 4 and job["progress"]["fraction"] == 1
    fleet = client.get("/fleets/fl").json()
    assert fleet["n_chips"] == 4 and [c["chip_id"] for c in fleet["chips"]] == ["fl-000", "fl-001", "fl-002", "fl-003"]
    assert len({c["seed"] for c in fleet["chips"]}) == 4  # each chip its own seed
    assert client.get("/fleets").json()["fleets"] == [
        {"fleet_id": "fl", "state": "ready", "model": ZOO_MODEL, "n_chips": 4, "seed": 3, "error": None}
    ]
    chips = {c["chip_id"] for c in client.get("/chips").json()["chips"]}
    assert {"fl-000", "fl-003"} <= chips
    # a fleet chip is an ordinary chip for inference, but is deleted only with its fleet
    assert client.post("/infer", json={"chip_id": "fl-001", "inputs": [[[[0.1] * 8] * 8]]}).status_code == 200
    r = client.delete("/chips/fl-002")
    assert err(r) == (409, "chip_id") and "fleet 'fl'" in r.json()["error"]["message"]

    r = client.post(
        "/fleets/fl/evaluate",
        json={"ages": ["1s", "1d", "1y"], "readouts": 2, "slo": {"metric": "accuracy", "threshold": 0.9}},
    )
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    rep = job["result"]
    assert rep["ages_s"] == [1.0, 86400.0, 365 * 86400.0] and rep["n_chips"] == 4
    for entry in rep["results"]:
        for gdc in ("gdc_on", "gdc_off"):
            y = entry[gdc]["yield"]
            assert (y["ci95_low"], y["ci95_high"]) == pytest.approx(wilson_interval(y["meets"], 4))
            assert set(entry[gdc]["accuracy"]) >= {"mean", "std", "p5", "p50", "p95"}
    # each chip's numbers are the single-chip route's (the same seeds)
    single = client.post("/chips/fl-001/evaluate", json={"ages": ["1s", "1d", "1y"], "readouts": 2}).json()
    assert rep["chips"][1]["gdc_on"]["accuracy"] == pytest.approx([r["gdc_on"]["mean"] for r in single["results"]])
    m = _metrics(client)
    share = rep["results"][2]["gdc_on"]["yield"]["share"]
    assert m[("agedchip_fleet_yield_ratio", (("age", "1y"), ("fleet", "fl"), ("gdc", "on")))] == share
    # each age label's seconds, by which the dashboard orders the yield bars
    ages = {dict(k[1])["age"]: v for k, v in m.items() if k[0] == "agedchip_fleet_eval_age_seconds"}
    assert ages == {"1s": 1.0, "1d": 86400.0, "1y": 365 * 86400.0}

    assert client.delete("/fleets/fl").status_code == 204
    assert err(client.get("/fleets/fl")) == (404, "fleet_id")
    assert not {"fl-000", "fl-001", "fl-002", "fl-003"} & {c["chip_id"] for c in client.get("/chips").json()["chips"]}
    assert not any(k[0].startswith("agedchip_fleet_") for k in _metrics(client))


def test_fleet_breach_gauges_follow_the_report(client):
    _serial(client)
    assert _program(client, "br", n=3)["status"] == "succeeded"
    # a threshold no chip meets: every chip breaches at the first age, the percentiles at its bracket end
    r = client.post(
        "/fleets/br/evaluate",
        json={"ages": [10, 1000], "readouts": 1, "slo": {"metric": "normalised_accuracy", "threshold": 1.5}},
    )
    job = _wait(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["breach"]["gdc_on"]["chips_breached_at_first"] == 3
    m = _metrics(client)
    for pct in ("5", "50", "95"):
        assert m[("agedchip_fleet_slo_breach_age_seconds", (("fleet", "br"), ("percentile", pct)))] == 10.0
    assert m[("agedchip_fleet_yield_ratio", (("age", "10s"), ("fleet", "br"), ("gdc", "off")))] == 0.0
    # the Grafana dashboard's fleet panels query series this service really exports
    dashboard = DASHBOARD.read_text()
    queried = set(re.findall(r"agedchip_fleet_[a-z_]+", dashboard))
    assert queried >= {"agedchip_fleet_yield_ratio", "agedchip_fleet_slo_breach_age_seconds"}
    assert queried <= {name for name, _ in m}, queried - {name for name, _ in m}


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"fleet_id": "Bad!", "model": ZOO_MODEL, "n_chips": 2, "seed": 0}, 422, "fleet_id"),
        ({"fleet_id": "a", "model": "nope", "n_chips": 2, "seed": 0}, 422, "model"),
        ({"fleet_id": "a", "model": ZOO_MODEL, "n_chips": 0, "seed": 0}, 422, "n_chips"),
        ({"fleet_id": "a", "model": ZOO_MODEL, "n_chips": 2, "seed": 0, "profile": "nope"}, 422, "profile"),
        (
            {"fleet_id": "a", "model": ZOO_MODEL, "n_chips": 2, "seed": 0, "overrides": {"drift_scale": -1}},
            422,
            "profile.drift_scale",
        ),
        ({"fleet_id": "a", "model": ZOO_MODEL, "n_chips": 100, "seed": 0}, 409, "fleet_id"),  # over AGEDCHIP_MAX_CHIPS
    ],
)
def test_program_validation(shared, body, status, field):
    assert err(shared.post("/fleets", json=body)) == (status, field)
    assert shared.get("/fleets").json()["fleets"] == []


def test_evaluate_validation_and_unknown_fleet(client):
    _serial(client)
    assert err(client.post("/fleets/nope/evaluate", json={"ages": ["1d"], "slo": {"threshold": 0.5}})) == (
        404,
        "fleet_id",
    )
    assert _program(client, "v", n=1)["status"] == "succeeded"
    for body, field in (
        ({"ages": ["soon"], "slo": {"threshold": 0.5}}, "ages.0"),
        ({"ages": [0], "slo": {"threshold": 0.5}}, "ages"),  # the message names ages.0
        ({"ages": ["1d", "1d"], "slo": {"threshold": 0.5}}, "ages"),
        ({"ages": ["1d"], "readouts": 51, "slo": {"threshold": 0.5}}, "readouts"),
        ({"ages": ["1d"], "slo": {"threshold": 2.0}}, "slo"),
    ):
        assert err(client.post("/fleets/v/evaluate", json=body))[1] == field, body
    assert err(client.post("/fleets", json={"fleet_id": "v", "model": ZOO_MODEL, "n_chips": 1, "seed": 0})) == (
        409,
        "fleet_id",
    )


def test_cancelled_programming_leaves_nothing(client, monkeypatch):
    import chipsim.fleet.program as program

    real = program.program_onnx
    started = []

    def slow(*args, **kw):
        started.append(1)
        time.sleep(0.3)
        return real(*args, **kw)

    monkeypatch.setattr(program, "program_onnx", slow)
    r = client.post("/fleets", json={"fleet_id": "cx", "model": ZOO_MODEL, "n_chips": 20, "seed": 0})
    job_id = r.json()["job_id"]
    while not started:
        time.sleep(0.01)
    assert client.delete(f"/jobs/{job_id}").status_code == 202
    job = _wait(client, job_id)
    assert job["status"] == "cancelled", job
    assert client.get("/fleets").json()["fleets"] == []
    assert not [c for c in client.get("/chips").json()["chips"] if c["chip_id"].startswith("cx-")]
    assert not [p for p in (client.state_dir / "chips").iterdir() if p.name.startswith("cx-")]


def test_a_full_eval_lane_answers_429(tmp_path, zoo):
    settings = make_settings(tmp_path / "state", zoo, eval_concurrency=1, max_queue_eval=0)
    with TestClient(create_app(settings)) as c:
        _serial(c)
        assert _program(c, "q", n=1)["status"] == "succeeded"
        assert _program(c, "q2", n=1)["status"] == "succeeded"
        gate = __import__("threading").Event()
        c.app.state.fleets.executor = lambda: (gate.wait(30), SerialExecutor())[1]
        body = {"ages": ["1d"], "readouts": 1, "slo": {"threshold": 0.5}}
        first = c.post("/fleets/q/evaluate", json=body)
        assert first.status_code == 202
        # the same fleet: 409 (one job per fleet); the lane is full for any other evaluation
        assert err(c.post("/fleets/q/evaluate", json=body)) == (409, "fleet_id")
        r = c.post("/fleets/q2/evaluate", json=body)
        assert err(r) == (429, None) and int(r.headers["retry-after"]) >= 1
        gate.set()
        assert _wait(c, first.json()["job_id"])["status"] == "succeeded"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_fleet_cut_short_by_a_crash_is_rolled_back_at_start(tmp_path, zoo):
    """A writer that died mid-programming left a marker and some chips: the next start deletes them
    before loading chips, so they are never served, and the fleet does not exist."""
    settings = make_settings(tmp_path / "state", zoo)
    with TestClient(create_app(settings)) as c:
        _serial(c)
        assert _program(c, "half", n=2)["status"] == "succeeded"
        assert _program(c, "kept", n=1)["status"] == "succeeded"
    state = tmp_path / "state"
    # turn "half" into a fleet whose writer died before publishing: manifest gone, marker of a dead process
    (state / "fleets" / "half.json").unlink()
    marker = {
        "fleet_id": "half",
        "op": "program",
        "pid": _dead_pid(),
        "token": "x",
        "started_at": 0,
        "chip_ids": ["half-000", "half-001"],
    }
    (state / "fleets" / "half.pending.json").write_text(json.dumps(marker))
    with TestClient(create_app(settings)) as c:
        ids = {x["chip_id"] for x in c.get("/chips").json()["chips"]}
        assert "half-000" not in ids and "half-001" not in ids and "kept-000" in ids
        assert [f["fleet_id"] for f in c.get("/fleets").json()["fleets"]] == ["kept"]
    assert not (state / "fleets" / "half.pending.json").exists()
    assert not [p for p in (state / "chips").iterdir() if p.name.startswith("half-")]


def test_shutdown_cancels_a_running_evaluation_and_publishes_nothing(tmp_path, zoo):
    settings = make_settings(tmp_path / "state", zoo)
    with TestClient(create_app(settings)) as c:
        _serial(c)
        assert _program(c, "sd", n=3)["status"] == "succeeded"
        fleets = c.app.state.fleets
        entered = __import__("threading").Event()

        class Slow(SerialExecutor):
            def run(self, tasks, progress, cancel):
                entered.set()
                while not cancel.is_set():
                    time.sleep(0.01)
                return super().run(tasks, progress, cancel)

        fleets.executor = Slow
        r = c.post("/fleets/sd/evaluate", json={"ages": ["1d"], "readouts": 1, "slo": {"threshold": 0.5}})
        job_id = r.json()["job_id"]
        assert entered.wait(30)
        jobs = c.app.state.recalibration_jobs
    # leaving the client ran the shutdown: the job was cancelled, no gauges were published
    assert jobs.get(job_id)["status"] == "cancelled"
    assert "sd" not in fleets.gauges
    assert os.path.exists(tmp_path / "state" / "fleets" / "sd.json")  # the fleet itself is untouched


@pytest.mark.slow  # spawns a worker process
def test_the_default_executor_is_local_processes_and_agrees_with_serial(tmp_path, zoo):
    """AGEDCHIP_FLEET_WORKERS=1: a spawned worker process evaluates; the report equals the serial one."""
    settings = make_settings(tmp_path / "state", zoo, fleet_workers=1)
    with TestClient(create_app(settings)) as c:
        assert c.app.state.fleets.executor().describe() == "local(1)"
        _serial(c)
        assert _program(c, "lp", n=2)["status"] == "succeeded"
        body = {"ages": ["1h", "1y"], "readouts": 1, "slo": {"threshold": 0.5}}
        serial = _wait(c, c.post("/fleets/lp/evaluate", json=body).json()["job_id"])["result"]
        del c.app.state.fleets.executor  # back to the service's own: local processes
        local = _wait(c, c.post("/fleets/lp/evaluate", json=body).json()["job_id"], timeout=300)["result"]
    assert local["executor"] == "local(1)" and serial["executor"] == "serial"
    assert local["results"] == serial["results"] and local["chips"] == serial["chips"]


# ----------------------------------------------------------------------------------- a fleet from a chip
def _infer(client, chip_id: str) -> list:
    body = {"chip_id": chip_id, "inputs": [[[[0.1 * (i % 7)] * 8] * 8] for i in range(3)], "age": "1d", "seed": 4}
    r = client.post("/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


def test_a_fleet_from_a_programmed_chip_is_that_chips_model(client, zoo):
    """`from_chip` programs the fleet from the chip's stored ONNX and eval set: with the same fleet seed,
    its chips read exactly as the chips of a fleet made from the zoo model the chip came from."""
    _serial(client)
    r = client.post("/fleets", json={"fleet_id": "fc", "from_chip": "default", "n_chips": 2, "seed": 3})
    assert r.status_code == 202, r.text
    assert _wait(client, r.json()["job_id"])["status"] == "succeeded"
    assert _program(client, "fz", n=2, seed=3)["status"] == "succeeded"
    fc, fz = client.get("/fleets/fc").json(), client.get("/fleets/fz").json()
    assert (
        fc["model"]
        == fz["model"]
        == {"name": ZOO_MODEL, "digest": client.get("/chips/default").json()["model"]["digest"]}
    )
    assert fc["eval_samples"] == fz["eval_samples"] > 0 and fc["fp_accuracy"] == fz["fp_accuracy"]
    assert [c["seed"] for c in fc["chips"]] == [c["seed"] for c in fz["chips"]]
    assert _infer(client, "fc-001") == _infer(client, "fz-001")
    assert _infer(client, "fc-001") != _infer(client, "fc-000")  # the chips differ: the comparison can fail
    assert client.get("/chips/fc-000").json()["model"]["source"] == "chip"
    assert client.get("/chips/fz-000").json()["model"]["source"] == "zoo"
    # an uploaded model (no zoo name, no eval set) becomes a fleet without uploading it again
    onnx = (zoo / f"{ZOO_MODEL}.onnx").read_bytes()
    r = client.post(
        "/program", files={"model": ("mine.onnx", onnx, "application/octet-stream")}, data={"chip_id": "up"}
    )
    assert r.status_code == 201, r.text
    r = client.post("/fleets", json={"fleet_id": "fu", "from_chip": "up", "n_chips": 1, "seed": 3})
    assert r.status_code == 202, r.text
    assert _wait(client, r.json()["job_id"])["status"] == "succeeded"
    fu = client.get("/fleets/fu").json()
    assert fu["model"]["name"] == "mine.onnx" and fu["eval_samples"] == 0
    assert _infer(client, "fu-000") == _infer(client, "fz-000")


@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"fleet_id": "a", "n_chips": 2, "seed": 0}, 422, "model"),
        ({"fleet_id": "a", "model": ZOO_MODEL, "from_chip": "default", "n_chips": 2, "seed": 0}, 422, "from_chip"),
        ({"fleet_id": "a", "from_chip": "nope", "n_chips": 2, "seed": 0}, 404, "from_chip"),
        ({"fleet_id": "a", "from_chip": "Bad!", "n_chips": 2, "seed": 0}, 422, "from_chip"),
        ({"fleet_id": "a", "from_chip": 7, "n_chips": 2, "seed": 0}, 422, "from_chip"),
    ],
)
def test_from_chip_validation(shared, body, status, field):
    r = shared.post("/fleets", json=body)
    assert err(r) == (status, field), r.text
    assert r.json()["error"]["message"].startswith(f"{field}: ")
    assert shared.get("/fleets").json()["fleets"] == []


def test_a_recalibrated_chip_cannot_seed_a_fleet(client, monkeypatch):
    """Its re-written layer is in no ONNX model: a fleet from it would silently be its parent's."""
    served = client.app.state.registry.get("default")
    monkeypatch.setattr(served, "chip", dataclasses.replace(served.chip, meta={**served.chip.meta, "parent": "p"}))
    r = client.post("/fleets", json={"fleet_id": "a", "from_chip": "default", "n_chips": 2, "seed": 0})
    assert err(r) == (422, "from_chip") and "recalibrating 'p'" in r.json()["error"]["message"], r.text
