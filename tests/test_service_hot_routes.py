"""The inference routes' hot path (service.routes.hot): POST /infer and the OIP infer routes
served by plain Starlette routes ahead of FastAPI's. Every answer must be the FastAPI route's,
byte for byte: the same request is sent once through the hot routes and once with them taken out
of the table (the FastAPI routes then answer), for successes (seeded: bit-identical outputs) and
for every kind of error (validation naming the field, 401, 404, 405, 415)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Match

from service.app import create_app
from service.routes.hot import HotRoute
from tests.service_helpers import make_settings, metric_value, x_batch

KEY = "hot-key"
AUTH = {"X-API-Key": KEY}
#: Response headers that must agree (the date differs between two responses).
HEADERS = (
    "content-type",
    "content-length",
    "inference-header-content-length",
    "allow",
    "www-authenticate",
    "retry-after",
)


@pytest.fixture(scope="module")
def c(tmp_path_factory, zoo) -> Iterator[TestClient]:
    state = tmp_path_factory.mktemp("hot") / "state"
    with TestClient(create_app(make_settings(state, zoo, infer_api_key=KEY))) as client:
        yield client


@contextmanager
def fastapi_routes_only(client: TestClient) -> Iterator[None]:
    """The app without its hot routes, so FastAPI's inference routes answer."""
    routes = client.app.router.routes
    saved = list(routes)
    routes[:] = [r for r in routes if not isinstance(r, HotRoute)]
    try:
        yield
    finally:
        routes[:] = saved


def both(client: TestClient, method: str, url: str, **kw) -> tuple:
    """(hot answer, FastAPI answer) of one request, each as (status, headers that must agree, body)."""

    def send():
        r = client.request(method, url, **kw)
        return r.status_code, {h: r.headers.get(h) for h in HEADERS}, r.content

    hot = send()
    with fastapi_routes_only(client):
        slow = send()
    return hot, slow


def oip_binary(xs: np.ndarray, **params) -> dict:
    tensor = {"name": "x", "shape": list(xs.shape), "datatype": "FP32", "parameters": {"binary_data_size": xs.nbytes}}
    head = json.dumps({"inputs": [tensor], "parameters": {"age": "1d", "binary_data_output": True, **params}}).encode()
    return {
        "content": head + xs.astype("<f4").tobytes(),
        "headers": {
            **AUTH,
            "Inference-Header-Content-Length": str(len(head)),
            "content-type": "application/octet-stream",
        },
    }


def oip_json(xs: np.ndarray, name: str = "x", **params) -> dict:
    tensor = {"name": name, "shape": list(xs.shape), "datatype": "FP32", "data": xs.ravel().tolist()}
    return {"json": {"inputs": [tensor], "parameters": {"age": "1d", **params}}, "headers": AUTH}


def infer_body(**fields) -> dict:
    return {"json": {"chip_id": "default", "inputs": x_batch(2), "age": "1d", **fields}, "headers": AUTH}


XS = np.random.default_rng(3).random((2, 1, 8, 8)).astype(np.float32)

#: (name, method, url, keyword arguments of the request, expected status)
CASES = [
    ("infer seeded, labels", "POST", "/infer", infer_body(seed=5, labels=[1, 2]), 200),
    ("infer read seed, gdc off", "POST", "/infer", infer_body(seed=6, read_seed=3, gdc=False), 200),
    ("infer malformed JSON", "POST", "/infer", {"content": b"{not json", "headers": AUTH}, 422),
    ("infer unknown field", "POST", "/infer", infer_body(sed=5), 422),
    ("infer wrong shape", "POST", "/infer", infer_body(inputs=[[1.0, 2.0]]), 422),
    ("infer negative age", "POST", "/infer", infer_body(age="-1d"), 422),
    ("infer labels of the wrong length", "POST", "/infer", infer_body(seed=1, labels=[1]), 422),
    ("infer unseeded labels out of range", "POST", "/infer", infer_body(labels=[1, 99]), 422),
    ("infer no such chip", "POST", "/infer", infer_body(chip_id="nochip"), 404),
    (
        "infer not JSON",
        "POST",
        "/infer",
        {"content": b"{}", "headers": {**AUTH, "content-type": "text/plain"}},
        415,
    ),
    ("infer no key", "POST", "/infer", {"json": infer_body()["json"]}, 401),
    ("infer wrong method", "GET", "/infer", {"headers": AUTH}, 405),
    ("oip binary seeded", "POST", "/v2/models/default/infer", oip_binary(XS, seed=7), 200),
    ("oip JSON seeded", "POST", "/v2/models/default/versions/1/infer", oip_json(XS, seed=7), 200),
    ("oip unknown input", "POST", "/v2/models/default/infer", oip_json(XS, name="nope"), 400),
    ("oip unknown parameter", "POST", "/v2/models/default/infer", oip_json(XS, colour=1), 400),
    ("oip bad seed", "POST", "/v2/models/default/infer", oip_json(XS, seed=-1), 400),
    ("oip version 2", "POST", "/v2/models/default/versions/2/infer", oip_json(XS), 404),
    ("oip no such model", "POST", "/v2/models/nochip/infer", oip_json(XS), 404),
    ("oip invalid model name", "POST", "/v2/models/no%20chip/infer", oip_json(XS), 404),
    ("oip no key", "POST", "/v2/models/default/infer", {"json": oip_json(XS)["json"]}, 401),
]


@pytest.mark.parametrize("name, method, url, kw, status", CASES, ids=[c[0] for c in CASES])
def test_hot_answer_is_the_fastapi_answer(c, name, method, url, kw, status):
    hot, slow = both(c, method, url, **kw)
    assert hot[0] == status, hot
    assert hot == slow


def test_unseeded_answers_agree_but_for_the_noise(c):
    """Unseeded requests (dynamic batching) get fresh noise: everything else agrees."""
    (s1, h1, b1), (s2, h2, b2) = both(c, "POST", "/infer", **infer_body(labels=[0, 1]))
    assert s1 == s2 == 200
    hot, slow = json.loads(b1), json.loads(b2)
    assert hot["outputs"] != slow["outputs"]  # fresh per-MVM noise in each request
    for d in (hot, slow):
        del d["outputs"], d["argmax"], d["accuracy"]
    assert hot == slow
    assert h1["content-type"] == h2["content-type"] == "application/json"


def test_validation_error_on_the_hot_path_names_the_field(c):
    r = c.post("/infer", **infer_body(age="soon"))
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "age"
    r = c.post("/v2/models/default/infer", **oip_json(XS, gdc="sideways"))
    assert r.status_code == 400
    assert r.json()["field"] == "parameters.gdc"


def test_hot_routes_answer_instead_of_the_fastapi_routes(c):
    """The FastAPI routes are never reached while the hot routes are in the table (and are
    reached without them: the check can fail)."""
    docs = [r for r in c.app.router.routes if isinstance(r, APIRoute) and r.path.endswith("/infer")]
    assert {r.path for r in docs} == {r.path for r in c.app.router.routes if isinstance(r, HotRoute)}

    async def broken(scope, receive, send):
        raise AssertionError("the FastAPI route answered")

    saved = [r.app for r in docs]
    try:
        for r in docs:
            r.app = broken
        assert c.post("/infer", **infer_body(seed=1)).status_code == 200
        assert c.post("/v2/models/default/infer", **oip_binary(XS, seed=1)).status_code == 200
        with fastapi_routes_only(c), pytest.raises(AssertionError, match="FastAPI route answered"):
            c.post("/infer", **infer_body(seed=1))
    finally:
        for r, app in zip(docs, saved):
            r.app = app


def test_hot_routes_match_what_their_fastapi_routes_matched(c):
    """Being first changes no answer: for each hot route's paths, the first route of the rest of
    the table that matches a POST is the FastAPI route of the same template."""
    rest = [r for r in c.app.router.routes if not isinstance(r, HotRoute)]
    paths = {
        "/infer": "/infer",
        "/v2/models/{model_name}/infer": "/v2/models/default/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer": "/v2/models/default/versions/1/infer",
    }
    for template, path in paths.items():
        scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
        first = next(r for r in rest if r.matches(dict(scope))[0] is Match.FULL)
        assert isinstance(first, APIRoute) and first.path == template
        assert first.methods == {"POST"}


def test_hot_requests_are_labelled_by_their_template(c):
    labels = {"route": "/v2/models/{model_name}/infer", "method": "POST", "status": "2xx"}
    before = metric_value(c, "agedchip_http_requests_total", **labels) or 0.0
    assert c.post("/v2/models/default/infer", **oip_binary(XS)).status_code == 200
    assert metric_value(c, "agedchip_http_requests_total", **labels) == before + 1


def test_hot_routes_stay_out_of_the_openapi_document(c):
    doc = c.get("/openapi.json").json()
    assert doc["paths"]["/infer"]["post"]["summary"] == "Run a chip at an age"
    assert "/v2/models/{model_name}/infer" in doc["paths"]
