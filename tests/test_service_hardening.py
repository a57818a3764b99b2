"""The service under hostile use (issue 15, service side): auth on every route that computes,
full-match chip ids, DELETE that keeps the chip when storage fails, admission control (bounded
queues with 429 + Retry-After, cancelled evaluations, a refresher that yields, a programming
cost bound), no 500 for bad input or benign events (client disconnects, shutdown, a full disk),
and the memory budget with its gauges.

Client disconnects and task cancellation cannot be expressed through TestClient, so those tests
drive the ASGI app directly (:func:`asgi_request`) on the TestClient's event loop, with the app
started by the TestClient (lifespan)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.memory import readout_cost
from service.settings import Settings
from tests.service_helpers import ZOO_MODEL, err, eval_npz, make_settings, tiny_model, x_batch
from tests.service_process import http, run_service, wait_until

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------- helpers
def metric(client: TestClient, name: str, **labels) -> float | None:
    """The value of one sample of /metrics (None when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def matmul_model(rows: int, cols: int) -> bytes:
    """One MatMul (N, rows) @ (rows, cols): the smallest model whose tile count a profile sets."""
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])
    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
            "mm",
            [x],
            [y],
            initializer=[numpy_helper.from_array(w, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m.SerializeToString()


async def asgi_request(
    app,
    method: str,
    path: str,
    parts: list[bytes],
    *,
    complete: bool = True,
    content_type: str = "application/json",
    disconnect_after: float | None = None,
    cancel_after: float | None = None,
    before_cancel=None,
) -> tuple[int | None, dict, bytes, float]:
    """One request straight to the ASGI app: (status or None, headers, body, seconds).

    ``parts`` are the body's chunks; ``complete=False`` leaves the body unfinished and the client
    then disconnects; ``disconnect_after`` disconnects that many seconds after the start once the
    body was sent; ``cancel_after`` cancels the request's task (what uvicorn does when its graceful
    shutdown times out), after calling ``before_cancel``."""
    queue = list(parts)
    total = sum(len(p) for p in parts)
    t0 = time.monotonic()
    sent: list[dict] = []

    async def receive() -> dict:
        if queue:
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue) or not complete}
        if not complete:
            return {"type": "http.disconnect"}
        if disconnect_after is not None:
            left = t0 + disconnect_after - time.monotonic()
            if left > 0:  # like uvicorn: wait for the event, but once disconnected answer at once
                await asyncio.sleep(left)
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", b"test"), (b"content-type", content_type.encode())]
    if complete:
        headers.append((b"content-length", str(total).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }
    task = asyncio.ensure_future(app(scope, receive, send))
    if cancel_after is not None:
        await asyncio.sleep(cancel_after)
        if before_cancel is not None:
            before_cancel()
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = {k.decode().lower(): v.decode() for k, v in (start or {}).get("headers", [])}
    return (start["status"] if start else None), head, body, time.monotonic() - t0


# =================================================================================== 4. auth
#: Routes that stay open with keys set: probes, the scrape target, the protocol's constant server
#: metadata, and the API documentation.
OPEN = {
    "/metrics",
    "/healthz",
    "/readyz",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
#: Path parameters of the sweep: a chip that does not exist, so that a DELETE that gets through deletes nothing.
PATH_VALUES = {
    "chip_id": "nochip",
    "model_name": "nochip",
    "model_version": "1",
    "job_id": "job-0123456789abcdef",
    "fleet_id": "nofleet",
}


def test_every_route_but_probes_metrics_and_docs_needs_a_key(tmp_path, zoo):
    s = make_settings(tmp_path, zoo, api_key="admin-secret", infer_api_key="infer-secret")
    app = create_app(s)
    with TestClient(app) as c:
        checked = 0
        for route in app.routes:
            for method in sorted(getattr(route, "methods", None) or ()):
                if method == "HEAD":
                    continue
                path = route.path.format(**PATH_VALUES)
                r = c.request(method, path, json={} if method in ("POST", "PUT") else None)
                if route.path in OPEN:
                    assert r.status_code != 401, (method, route.path)
                    continue
                assert err(r) == (401, "api_key"), (method, route.path, r.status_code)
                checked += 1
                if isinstance(route, APIRoute):  # the inference key opens whatever is not management
                    ok = c.request(method, path, json={}, headers={"X-API-Key": "infer-secret"})
                    admin = c.request(method, path, json={}, headers={"X-API-Key": "admin-secret"})
                    assert admin.status_code != 401, (method, route.path)
                    if ok.status_code == 401:  # management routes take only the management key
                        assert (method, route.path) in {
                            ("POST", "/program"),
                            ("DELETE", "/chips/{chip_id}"),
                            ("POST", "/chips/{chip_id}/recalibrate"),
                            ("DELETE", "/jobs/{job_id}"),
                            ("POST", "/fleets"),
                            ("DELETE", "/fleets/{fleet_id}"),
                        }, (method, route.path)
        # chips (list, summary, drift, evaluate), the zoo, OIP model metadata and readiness, inference, jobs
        assert checked >= 17
        for path in (
            "/chips",
            "/chips/default",
            "/chips/default/drift?age=1h",
            "/zoo",
            "/v2/models/default",
            "/v2/models/default/versions/1",
            "/v2/models/default/ready",
        ):
            assert err(c.get(path)) == (401, "api_key"), path
            assert c.get(path, headers={"Authorization": "Bearer infer-secret"}).status_code == 200, path


# =================================================================================== 5. chip ids
LOOKALIKES = ["default\n", "default\r", "default\n\n", "\ndefault", "default ", "défault"]


@pytest.mark.parametrize("chip_id", LOOKALIKES)
def test_program_refuses_a_lookalike_chip_id(client, chip_id):
    assert err(client.post("/program", json={"model": ZOO_MODEL, "chip_id": chip_id})) == (422, "chip_id")
    form = client.post(
        "/program", files={"model": ("m.onnx", tiny_model(), "application/octet-stream"), "chip_id": (None, chip_id)}
    )
    assert err(form) == (422, "chip_id")
    assert [c["chip_id"] for c in client.get("/chips").json()["chips"]] == ["default"]
    assert sorted(p.name for p in (client.state_dir / "chips").iterdir()) == ["default"]


def test_path_ids_are_fully_matched(shared):
    for method, path in (
        ("GET", "/chips/default%0A"),
        ("GET", "/chips/default%0A/drift"),
        ("DELETE", "/chips/default%0A"),
    ):
        assert err(shared.request(method, path)) == (422, "chip_id"), path
    r = shared.post("/chips/default%0A/evaluate", json={"ages": ["1d"], "readouts": 1})
    assert err(r) == (422, "chip_id")
    r = shared.post("/infer", json={"chip_id": "default\n", "inputs": x_batch(1)})
    assert err(r) == (422, "chip_id")
    # OIP: a name that cannot be a chip id names no model
    oip = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    assert err(shared.post("/v2/models/default%0A/infer", json=oip)) == (404, "chip_id")
    assert err(shared.get("/v2/models/default%0A")) == (404, "chip_id")
    assert err(shared.get("/jobs/job-0123456789abcdef%0A")) == (422, "job_id")


def test_recalibration_refuses_lookalike_ids(shared):
    data = ("d.npz", eval_npz(tiny_model()), "application/octet-stream")
    r = shared.post("/chips/default%0A/recalibrate", files={"data": data})
    assert err(r) == (422, "chip_id")
    r = shared.post("/chips/default/recalibrate", files={"data": data, "new_chip_id": (None, "mine\n")})
    assert err(r) == (422, "new_chip_id")
    assert "mine" not in [c["chip_id"].strip() for c in shared.get("/chips").json()["chips"]]


def test_default_chip_id_setting_is_fully_matched(tmp_path):
    with pytest.raises(ValueError, match="default_chip_id"):
        Settings(state_dir=tmp_path, default_chip_id="default\n")


# =================================================================================== 2. DELETE
@pytest.mark.parametrize(
    "code, status",
    [(errno.EROFS, 507), (errno.ENOSPC, 507), (errno.EDQUOT, 507), (errno.EIO, 503), (errno.EACCES, 503)],
)
def test_delete_that_fails_on_storage_keeps_the_chip(client, monkeypatch, code, status):
    registry = client.app.state.registry
    real = registry.store.delete

    def failing(chip_id: str) -> None:
        raise OSError(code, os.strerror(code), str(client.state_dir / "chips" / chip_id))

    monkeypatch.setattr(registry.store, "delete", failing)
    r = client.delete("/chips/default")
    assert err(r) == (status, None), r.text
    assert os.strerror(code) in r.json()["error"]["message"]
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1
    # the chip is intact and still served
    assert client.get("/chips/default").status_code == 200
    assert client.post("/infer", json={"chip_id": "default", "inputs": x_batch(1), "age": "1d"}).status_code == 200
    assert (client.state_dir / "chips" / "default").is_dir()
    monkeypatch.setattr(registry.store, "delete", real)
    assert client.delete("/chips/default").status_code == 204
    assert err(client.get("/chips/default")) == (404, "chip_id")


def test_parallel_deletes_of_one_chip(client, monkeypatch):
    """Eight DELETEs at once: one 204, seven 404, never a 500. The store's rename of the chip's
    folder is slowed down, so that every request has checked the folder before the first moves it."""
    assert client.post("/program", json={"model": ZOO_MODEL, "chip_id": "twin"}).status_code == 201
    chips = str((client.state_dir / "chips").resolve())
    real_rename = os.rename

    def slow_rename(src, dst, *a, **k):
        if str(Path(src).resolve()).startswith(chips):
            time.sleep(0.2)
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", slow_rename)
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: client.delete("/chips/twin").status_code, range(8)))
    assert codes == [204] + [404] * 7
    assert not (client.state_dir / "chips" / "twin").exists()
    assert (
        metric(client, "agedchip_http_requests_total", route="/chips/{chip_id}", method="DELETE", status="5xx") is None
    )


# =================================================================================== 8. admission control
def _block_inference(client: TestClient, monkeypatch) -> threading.Event:
    """Inference on the default chip waits for the returned event (at most 20 s)."""
    chip = client.app.state.registry.get("default")
    release = threading.Event()
    real = chip.infer

    def blocked(*a, **k):
        release.wait(20)
        return real(*a, **k)

    monkeypatch.setattr(chip, "infer", blocked)
    return release


def test_infer_flood_gets_429_with_retry_after(tmp_path, zoo, monkeypatch):
    s = make_settings(tmp_path, zoo, infer_concurrency=1, max_queue_infer=1)
    with TestClient(create_app(s)) as c, ThreadPoolExecutor(4) as pool:
        release = _block_inference(c, monkeypatch)
        body = {"chip_id": "default", "inputs": x_batch(1), "age": "1d"}
        try:
            running = pool.submit(c.post, "/infer", json=body)
            wait_until(lambda: metric(c, "agedchip_workload_inflight", workload="infer") == 1, 10, "one running")
            queued = pool.submit(c.post, "/infer", json=body)
            wait_until(lambda: metric(c, "agedchip_workload_queued", workload="infer") == 1, 10, "one queued")
            t0 = time.monotonic()
            flood = [c.post("/infer", json=body) for _ in range(5)]
            oip = c.post(
                "/v2/models/default/infer",
                json={"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]},
            )
            assert time.monotonic() - t0 < 5  # refused at once, not after a wait
        finally:
            release.set()
        for r in (*flood, oip):
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
        assert "AGEDCHIP_MAX_QUEUE_INFER" in flood[0].json()["error"]["message"]
        assert running.result().status_code == 200 and queued.result().status_code == 200
        assert metric(c, "agedchip_admission_rejections_total", workload="infer", reason="queue_full") == 6
        assert metric(c, "agedchip_http_requests_total", route="/infer", method="POST", status="4xx") == 5


def test_a_queued_request_waits_at_most_the_queue_timeout(tmp_path, zoo, monkeypatch):
    s = make_settings(tmp_path, zoo, infer_concurrency=1, max_queue_infer=8, queue_timeout_s=0.5)
    with TestClient(create_app(s)) as c, ThreadPoolExecutor(2) as pool:
        release = _block_inference(c, monkeypatch)
        try:
            running = pool.submit(c.post, "/infer", json={"chip_id": "default", "inputs": x_batch(1)})
            wait_until(lambda: metric(c, "agedchip_workload_inflight", workload="infer") == 1, 10, "one running")
            t0 = time.monotonic()
            r = c.post("/infer", json={"chip_id": "default", "inputs": x_batch(1)})
            waited = time.monotonic() - t0
        finally:
            release.set()
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert 0.4 < waited < 5
        assert running.result().status_code == 200
        assert metric(c, "agedchip_admission_rejections_total", workload="infer", reason="queue_timeout") == 1


def test_evaluation_stops_when_its_client_disconnects(client, monkeypatch, caplog):
    chip = client.app.state.registry.get("default")
    calls: list[float] = []

    def slow_accuracy(*a, **k) -> float:
        calls.append(time.monotonic())
        time.sleep(0.02)
        return 0.5

    monkeypatch.setattr(chip, "accuracy", slow_accuracy)
    body = json.dumps({"ages": [f"{d}d" for d in range(1, 21)], "readouts": 50}).encode()  # 2000 accuracy passes
    with caplog.at_level(logging.INFO):
        status, _, _, seconds = client.portal.call(
            lambda: asgi_request(client.app, "POST", "/chips/default/evaluate", [body], disconnect_after=0.5)
        )
    n = len(calls)
    time.sleep(0.3)
    assert len(calls) == n, "the evaluation went on after its client left"
    assert n < 200 and seconds < 10, (n, seconds)  # 2000 passes (40 s) had it run to the end
    assert status in (None, 499)
    assert metric(client, "agedchip_client_disconnects_total", route="/chips/{chip_id}/evaluate") == 1
    assert (
        metric(client, "agedchip_http_requests_total", route="/chips/{chip_id}/evaluate", method="POST", status="5xx")
        is None
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # the slot was released: the next evaluation runs
    monkeypatch.undo()
    assert client.post("/chips/default/evaluate", json={"ages": ["1d"], "readouts": 1}).status_code == 200


def test_drift_does_not_wait_for_the_refresher(tmp_path, zoo, monkeypatch):
    """The refresher runs on its own thread; a /drift request does not queue behind its pass."""
    entered, release = threading.Event(), threading.Event()
    from service.background import Refresher

    real = Refresher.refresh_chip

    def slow_refresh(self, chip):
        entered.set()
        release.wait(20)
        return real(self, chip)

    monkeypatch.setattr(Refresher, "refresh_chip", slow_refresh)
    with TestClient(create_app(make_settings(tmp_path, zoo, refresh_seconds=0.2))) as c:
        try:
            assert entered.wait(20), "the refresher did not start"
            t0 = time.monotonic()
            r = c.get("/chips/default/drift?age=1h")
            elapsed = time.monotonic() - t0
            e = c.post("/chips/default/evaluate", json={"ages": ["1d"], "readouts": 1})
        finally:
            release.set()
        assert r.status_code == 200 and e.status_code == 200
        assert elapsed < 5, elapsed


def test_refresher_bounds_chips_per_pass_and_yields_to_evaluations(tmp_path, zoo, monkeypatch):
    s = make_settings(tmp_path, zoo, refresh_max_chips=2)
    with TestClient(create_app(s)) as c:
        for i in range(3):
            assert c.post("/program", json={"model": ZOO_MODEL, "chip_id": f"c{i}"}).status_code == 201
        refresher = c.app.state.refresher
        refreshed = lambda: {  # noqa: E731
            ch.chip_id for ch in c.app.state.registry.ready() if ch.gauges.refreshed_at is not None
        }
        refresher.refresh_once()
        assert len(refreshed()) == 2
        refresher.refresh_once()
        assert len(refreshed()) == 4  # round robin: the other two
        # while an evaluation runs, the refresher starts no chip
        chip = c.app.state.registry.get("default")
        release, started = threading.Event(), threading.Event()

        def blocked_accuracy(*a, **k):
            started.set()
            release.wait(20)
            return 0.5

        monkeypatch.setattr(chip, "accuracy", blocked_accuracy)
        before = refresher.chips_refreshed
        with ThreadPoolExecutor(1) as pool:
            ev = pool.submit(c.post, "/chips/default/evaluate", json={"ages": ["1d"], "readouts": 1})
            try:
                assert started.wait(10)
                loop = c.portal.start_task_soon(refresher.run_pass)
                time.sleep(1.0)
                assert refresher.chips_refreshed == before, "the refresher did not yield to the evaluation"
            finally:
                release.set()
            assert ev.result().status_code == 200
            loop.result(timeout=30)
        assert refresher.chips_refreshed > before


def test_programming_cost_is_bounded_before_any_work(tmp_path, zoo):
    s = make_settings(tmp_path, zoo, max_tiles=32, max_devices=1_000_000)
    with TestClient(create_app(s)) as c:
        model = matmul_model(64, 16)  # 64 rows; tile_rows=1 → 64 tiles
        t0 = time.monotonic()
        r = c.post(
            "/program",
            files={
                "model": ("m.onnx", model, "application/octet-stream"),
                "overrides": (None, json.dumps({"tile_rows": 1})),
            },
        )
        assert err(r) == (422, "profile.tile_rows"), r.text
        assert "AGEDCHIP_MAX_TILES" in r.json()["error"]["message"] and "64 tiles" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 2
        ok = c.post("/program", files={"model": ("m.onnx", model, "application/octet-stream")})
        assert ok.status_code == 201 and ok.json()["tiles"] == 1
    s = make_settings(tmp_path / "b", zoo, max_devices=1000)
    with TestClient(create_app(s)) as c:
        r = c.post("/program", json={"model": ZOO_MODEL})  # 2368 weights = 4736 devices
        assert err(r) == (422, "model") and "AGEDCHIP_MAX_DEVICES" in r.json()["error"]["message"]
        assert "4736" in r.json()["error"]["message"]


def conv_model(groups: int) -> bytes:
    """Conv (N, 6, 8, 8) → 8 channels, 3×3 kernel in ``groups`` groups, then Gemm 8·6·6 → 10."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 6 // groups, 3, 3)).astype(np.float32) * 0.2
    g = rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=groups),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1),
    ]
    m = helper.make_model(
        helper.make_graph(
            nodes, "conv", [x], [y], initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")]
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m.SerializeToString()


def _graph_model(nodes, inits: dict[str, np.ndarray], x_shape: list, outputs: dict[str, list]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def op_coverage_models() -> list[bytes]:
    """A grouped ConvTranspose; a bidirectional LSTM and a GRU whose R is two layers; a weight
    read by two MatMuls (one layer) and by MatMul(W, x) (its own, transposed layer)."""
    rng = np.random.default_rng(2)
    f = np.float32
    convt = _graph_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])],
        {"w": rng.standard_normal((40, 3, 3, 3)).astype(f)},
        ["N", 40, 5, 5],
        {"y": ["N", 6, 11, 11]},
    )
    recurrent = []
    for op, gates, dirs, attrs in (("LSTM", 4, 2, {"direction": "bidirectional"}), ("GRU", 3, 1, {})):
        recurrent.append(
            _graph_model(
                [helper.make_node(op, ["x", "W", "R"], ["y"], hidden_size=24, **attrs)],
                {
                    "W": rng.standard_normal((dirs, gates * 24, 30)).astype(f),
                    "R": rng.standard_normal((dirs, gates * 24, 24)).astype(f),
                },
                [7, "N", 30],
                {"y": [7, dirs, "N", 24]},
            )
        )
    shared = _graph_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"]),
            helper.make_node("MatMul", ["x", "w"], ["b"]),
            helper.make_node("Unsqueeze", ["x", "ax"], ["x3"]),
            helper.make_node("MatMul", ["w", "x3"], ["c"]),
        ],
        {"w": rng.standard_normal((30, 30)).astype(f), "ax": np.array([-1], np.int64)},
        ["N", 30],
        {"a": ["N", 30], "b": ["N", 30], "c": ["N", 30, 1]},
    )
    return [convt, *recurrent, shared]


@pytest.mark.parametrize("tile_rows", [512, 64, 9, 20])
def test_cost_estimate_matches_the_programmed_chip(tile_rows):
    """The estimate (weight shapes only) against chipsim's compiler and programming (independent):
    the zoo models, a grouped Conv, a Gemm with transB, and the op-coverage layers (ConvTranspose,
    LSTM, GRU, a shared weight, MatMul(W, x))."""
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from service.program_cost import estimate

    zoo = REPO / "models" / "zoo"
    models = [conv_model(1), conv_model(2), tiny_model(), *op_coverage_models()]
    models += [p.read_bytes() for p in sorted(zoo.glob("*.onnx"))]
    for model in models:
        chip = program_onnx(model, get_profile("pcm", tile_rows=tile_rows), 0)
        cost = estimate(model, tile_rows)
        assert cost is not None
        assert (cost.tiles, cost.devices) == (sum(len(layer.tiles) for layer in chip.layers), chip.n_devices)
    assert estimate(b"not an onnx model", 512) is None


@pytest.mark.slow
def test_quadratic_profile_on_a_bigger_model_is_refused_fast(client):
    """The issue's case with the default limits: tile_rows=1 on a 2048-row layer (2048 tiles; 40 s of
    session build measured on the dev machine) is refused before any programming."""
    t0 = time.monotonic()
    r = client.post(
        "/program",
        files={
            "model": ("m.onnx", matmul_model(2048, 8), "application/octet-stream"),
            "profile": (None, json.dumps({"preset": "pcm", "tile_rows": 1})),
        },
    )
    assert err(r) == (422, "profile.tile_rows")
    assert time.monotonic() - t0 < 3


# =================================================================================== 9. no 500
def test_huge_integers_are_4xx(shared):
    x = np.zeros((1, 1, 8, 8)).tolist()
    x[0][0][0][0] = 10**400
    r = shared.post(
        "/infer", content=json.dumps({"chip_id": "default", "inputs": x}), headers={"content-type": "application/json"}
    )
    assert err(r) == (422, "inputs.x"), r.text
    for label in (2**63, 10**30, -(2**63) - 1):
        r = shared.post(
            "/infer",
            content=json.dumps({"chip_id": "default", "inputs": x_batch(1), "labels": [label]}),
            headers={"content-type": "application/json"},
        )
        assert err(r) == (422, "labels.0"), r.text
    oip = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [10**400] + [0] * 63}]}
    assert err(shared.post("/v2/models/default/infer", json=oip)) == (400, "inputs.0.data")


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**62, 4, 0], [2**64, 1, 8, 8], [0, 2**63, 8, 8]])
def test_oip_absurd_shapes_are_400(shared, shape):
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]}
    r = shared.post("/v2/models/default/infer", json=body)
    assert err(r)[0] == 400 and err(r)[1].startswith("inputs.0"), r.text


def test_client_disconnect_mid_upload_is_not_a_server_error(client, caplog):
    model = tiny_model()
    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.INFO):
        for path in ("/program", "/infer", "/v2/models/default/infer"):
            ctype = f"multipart/form-data; boundary={boundary}" if path == "/program" else "application/json"
            first = head + model[:1000] if path == "/program" else b'{"inputs": [[[[0.5, 0.5'
            status, _, _, _ = client.portal.call(
                lambda: asgi_request(client.app, "POST", path, [first], complete=False, content_type=ctype)
            )
            assert status in (None, 499), path
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    text = client.get("/metrics").text
    assert 'status="5xx"' not in text
    assert metric(client, "agedchip_client_disconnects_total", route="/program") == 1
    assert metric(client, "agedchip_http_requests_total", route="/program", method="POST", status="4xx") == 1
    assert not list((client.state_dir / "tmp").iterdir())


def test_a_stopping_service_answers_json_503(client):
    client.app.state.stopping.set()
    r = client.post("/infer", json={"chip_id": "default", "inputs": x_batch(1)})
    assert err(r) == (503, None) and "shutting down" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1 and r.headers["connection"] == "close"
    r = client.get("/v2/models/default")
    assert err(r) == (503, None)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503 and client.get("/metrics").status_code == 200


def test_evaluation_in_flight_at_shutdown_ends_with_json_503(client, monkeypatch):
    chip = client.app.state.registry.get("default")
    monkeypatch.setattr(chip, "accuracy", lambda *a, **k: time.sleep(0.02) or 0.5)
    body = json.dumps({"ages": [f"{d}d" for d in range(1, 21)], "readouts": 50}).encode()

    async def evaluate_then_stop():
        task = asyncio.ensure_future(asgi_request(client.app, "POST", "/chips/default/evaluate", [body]))
        await asyncio.sleep(0.5)
        client.app.state.stopping.set()
        return await task

    status, head, payload, seconds = client.portal.call(evaluate_then_stop)
    assert status == 503 and head["content-type"] == "application/json", payload
    assert json.loads(payload)["error"]["message"].startswith("the service is shutting down")
    assert seconds < 10


def test_a_request_cancelled_by_shutdown_answers_json_503(client, monkeypatch, caplog):
    """uvicorn cancels the tasks still running when its graceful shutdown times out (after its
    signal handler marked the app stopping); without care the client gets a text/plain 500."""
    release = _block_inference(client, monkeypatch)
    body = json.dumps({"chip_id": "default", "inputs": x_batch(1)}).encode()

    def stop() -> None:
        client.app.state.stopping.set()
        threading.Timer(0.2, release.set).start()

    with caplog.at_level(logging.INFO):
        status, head, payload, _ = client.portal.call(
            lambda: asgi_request(client.app, "POST", "/infer", [body], cancel_after=0.5, before_cancel=stop)
        )
    assert status == 503 and head["content-type"] == "application/json", payload
    assert json.loads(payload)["error"]["message"].startswith("the service is shutting down")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_signal_handler_marks_the_app_stopping(tmp_path, zoo):
    from service.__main__ import make_server

    app = create_app(make_settings(tmp_path, zoo))
    server = make_server(app, app.state.settings)
    assert not app.state.stopping.is_set()
    server.handle_exit(signal.SIGTERM, None)
    assert app.state.stopping.is_set() and server.should_exit


def _fail_fsync_under(root: Path, monkeypatch, code: int, where) -> None:
    """``os.fsync`` fails with ``code`` for files under ``root`` that ``where(path)`` selects."""
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(str(root)) and where(Path(path)):
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to map descriptors to paths")
@pytest.mark.parametrize("code, status", [(errno.ENOSPC, 507), (errno.EROFS, 507), (errno.EIO, 503)])
def test_program_on_a_full_or_readonly_disk(client, monkeypatch, code, status):
    state = client.state_dir.resolve()
    _fail_fsync_under(state, monkeypatch, code, lambda p: p.parent.parent.name == "tmp")  # the chip's own files
    r = client.post(
        "/program",
        files={"model": ("m.onnx", tiny_model(seed=3), "application/octet-stream"), "chip_id": (None, "full")},
    )
    assert err(r) == (status, None), r.text
    assert os.strerror(code) in r.json()["error"]["message"]
    assert not list((state / "tmp").iterdir()) and not (state / "chips" / "full").exists()
    monkeypatch.undo()
    assert client.post("/program", json={"model": ZOO_MODEL, "chip_id": "full"}).status_code == 201  # id free


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to map descriptors to paths")
def test_program_on_a_full_disk_leaves_no_blob_temp_file(client, monkeypatch):
    state = client.state_dir.resolve()
    _fail_fsync_under(state, monkeypatch, errno.ENOSPC, lambda p: p.parent.name == "tmp" and p.is_file())
    r = client.post("/program", files={"model": ("m.onnx", tiny_model(seed=4), "application/octet-stream")})
    assert err(r) == (507, None)
    assert not list((state / "tmp").iterdir())


@pytest.mark.slow
def test_sigterm_during_an_evaluation_answers_json_503(tmp_path, zoo):
    """A real server: SIGTERM while a long evaluation runs; the client gets a JSON 503 (not
    uvicorn's text/plain 500) at once, not after the evaluation, and the process exits cleanly."""
    env = {"AGEDCHIP_ZOO_DIR": str(zoo), "AGEDCHIP_DEFAULT_MODEL": ZOO_MODEL, "AGEDCHIP_REFRESH_SECONDS": "0"}
    with run_service(sys.executable, REPO, tmp_path / "state", tmp_path / "log", env) as (base, proc):
        out: dict = {}
        body = {"ages": [f"{d}d" for d in range(1, 21)], "readouts": 50}

        def evaluate():
            out["r"] = http("POST", f"{base}/chips/default/evaluate", body, timeout=60)

        t = threading.Thread(target=evaluate)
        t.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        t.join(30)
        assert not t.is_alive() and time.monotonic() - t0 < 10
        status, payload = out["r"]
        assert status == 503, payload
        assert json.loads(payload)["error"]["message"].startswith("the service is shutting down")
        # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM is a clean exit
        assert proc.wait(30) in (0, -signal.SIGTERM)
        log = (tmp_path / "log").read_text()
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


# =================================================================================== 3. memory
def test_memory_gauges(client):
    client.post("/infer", json={"chip_id": "default", "inputs": x_batch(1), "age": "1d"})
    client.get("/chips/default/drift?age=1h")
    assert metric(client, "agedchip_process_resident_memory_bytes") > 10 << 20
    assert metric(client, "agedchip_memory_budget_bytes") == client.app.state.settings.memory_budget > 0
    assert metric(client, "agedchip_readout_cache_entries", chip="default", runtime="serving") == 1
    assert metric(client, "agedchip_readout_cache_entries", chip="default", runtime="eval") == 1
    assert metric(client, "agedchip_readout_cache_bytes", chip="default", runtime="serving") > 4 * 2368


def test_memory_budget_default_is_a_share_of_the_memory_limit(tmp_path, monkeypatch):
    from service import memory

    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    monkeypatch.setattr(memory, "_CGROUP_LIMITS", (v2, v1))
    if Path("/proc/meminfo").is_file():  # no cgroup limit: the physical memory, as the kernel reports it
        kib = int(
            next(
                line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
            ).split()[1]
        )
        assert abs(memory.memory_limit() - kib * 1024) <= 0.01 * kib * 1024
    v2.write_text("max\n")  # cgroup v2 without a limit
    v1.write_text(f"{1 << 30}\n")  # cgroup v1 with one
    assert memory.memory_limit() == 1 << 30
    v2.write_text(f"{3 << 29}\n")
    assert memory.memory_limit() == 3 << 29
    assert Settings(state_dir=tmp_path).memory_budget == int(0.75 * (3 << 29))
    assert Settings(state_dir=tmp_path, memory_budget=123 << 20).memory_budget == 123 << 20


def test_over_budget_a_new_age_is_refused_a_cached_age_served(client):
    assert client.post("/infer", json={"chip_id": "default", "inputs": x_batch(1), "age": "1h"}).status_code == 200
    client.app.state.registry.memory.budget_bytes = 1  # every process is over a 1-byte budget
    assert client.post("/infer", json={"chip_id": "default", "inputs": x_batch(1), "age": "1h"}).status_code == 200
    r = client.post("/infer", json={"chip_id": "default", "inputs": x_batch(1), "age": "2h"})
    assert err(r) == (503, "age") and int(r.headers["retry-after"]) >= 1
    assert "AGEDCHIP_MEMORY_BUDGET" in r.json()["error"]["message"]
    oip = {
        "inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
        "parameters": {"age": "3h"},
    }
    assert err(client.post("/v2/models/default/infer", json=oip)) == (503, "parameters.age")
    assert err(client.get("/chips/default/drift?age=5h")) == (503, "age")
    assert metric(client, "agedchip_admission_rejections_total", workload="infer", reason="memory") == 2


@pytest.mark.slow
def test_rss_stays_within_the_budget_under_the_new_age_attack(tmp_path, zoo):
    """The issue's attack on a 1000×1000 chip: batch 512 at 15 new ages. Unbounded, each new age
    adds 58-77 B per weight (bench/results/serving_costs.md): ~1 GB for 15 ages. With a budget of the
    current RSS + 200 MiB, the RSS stays under budget + one read-out's estimate (the check admits
    a read-out only while the estimate fits)."""
    with TestClient(create_app(make_settings(tmp_path, zoo, cache_bytes=8 << 30))) as c:
        files = {"model": ("big.onnx", matmul_model(1000, 1000), "application/octet-stream"), "chip_id": (None, "big")}
        assert c.post("/program", files=files).status_code == 201
        memory = c.app.state.registry.memory
        budget = memory.rss() + (200 << 20)
        memory.budget_bytes = budget
        x = np.random.default_rng(0).random((512, 1000)).astype(np.float32).tolist()
        codes = []
        for i in range(15):
            r = c.post("/infer", json={"chip_id": "big", "inputs": x, "age": f"{i + 1}d"})
            codes.append(r.status_code)
            assert r.status_code in (200, 503), r.text
        estimate = readout_cost(c.app.state.registry.get("big").chip.n_weights, c.app.state.settings.binding)
        assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
        assert memory.rss() <= budget + estimate, (memory.rss() - budget) / 2**20
