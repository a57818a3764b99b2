"""The service under hostile use (issue 15, service side), access and input: auth on every route
that computes, full-match chip ids, DELETE that keeps the chip when storage fails, and no 500 for
absurd numbers or shapes.

The other hardening topics live in test_service_overload (admission control, memory budget),
test_service_cost (the programming cost bound) and test_service_shutdown (disconnects, shutdown,
full disks)."""

from __future__ import annotations

import errno
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.hardening_helpers import metric
from tests.service_helpers import ZOO_MODEL, err, eval_npz, make_settings, tiny_model, x_batch

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
