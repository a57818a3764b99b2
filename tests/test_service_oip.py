"""In-process tests of the HTTP service (FastAPI TestClient): the Open Inference Protocol v2
routes (metadata, health, JSON and binary tensors agreeing with the native route, bad requests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.service_helpers import err, x_batch


# ----------------------------------------------------------------------------------- OIP v2
def test_oip_metadata_and_health(shared):
    assert shared.get("/v2/health/live").status_code == 200
    assert shared.get("/v2/health/ready").json() == {"ready": True}
    meta = shared.get("/v2").json()
    assert meta["name"] == "agedchip" and "binary_tensor_data" in meta["extensions"]
    m = shared.get("/v2/models/default").json()
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}] and m["versions"] == ["1"]
    assert shared.get("/v2/models/default/versions/1").status_code == 200
    assert shared.get("/v2/models/default/ready").json()["ready"] is True
    assert err(shared.get("/v2/models/nope")) == (404, "chip_id")
    assert err(shared.get("/v2/models/default/versions/2/ready")) == (404, "model_version")


def test_oip_json_and_binary_agree_with_native(shared):
    x = np.asarray(x_batch(3), np.float32)
    native = shared.post("/infer", json={"chip_id": "default", "inputs": x.tolist(), "age": "1w", "seed": 2}).json()[
        "outputs"
    ]["y"]
    req = {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": {"age": "1w", "seed": 2},
    }
    r = shared.post("/v2/models/default/infer", json=req)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["model_name"] == "default" and b["id"] == "r1" and b["parameters"]["age_s"] == 7 * 86400.0
    out = b["outputs"][0]
    assert out["name"] == "y" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    assert np.array_equal(np.asarray(out["data"], np.float32).reshape(3, 10), np.asarray(native, np.float32))
    # nested data is accepted too
    req["inputs"][0]["data"] = x.tolist()
    assert shared.post("/v2/models/default/infer", json=req).json()["outputs"][0]["data"] == out["data"]
    # binary in, binary out
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [3, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            "parameters": {"age": 604800, "seed": 2},
        }
    ).encode()
    r = shared.post(
        "/v2/models/default/versions/1/infer",
        content=header + x.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4
    y = np.frombuffer(r.content[n:], "<f4").reshape(head["outputs"][0]["shape"])
    assert np.array_equal(y, np.asarray(native, np.float32))
    # binary_data_output for JSON input
    req["parameters"]["binary_data_output"] = True
    r = shared.post("/v2/models/default/infer", json=req)
    n = int(r.headers["inference-header-content-length"])
    assert np.array_equal(np.frombuffer(r.content[n:], "<f4").reshape(3, 10), np.asarray(native, np.float32))


def _oip(shape=(1, 1, 8, 8), **kw):
    t = {"name": "x", "shape": list(shape), "datatype": "FP32", "data": [0.5] * int(np.prod(shape))}
    t.update(kw)
    return {"inputs": [t]}


@pytest.mark.parametrize(
    "body, field",
    [
        (_oip(datatype="FP64"), "inputs.0.datatype"),
        (_oip(datatype="BYTES"), "inputs.0.datatype"),
        (_oip(name="z"), "inputs.0.name"),
        (_oip(data=[0.5] * 3), "inputs.0.data"),
        (_oip(data=["a"] * 64), "inputs.0.data"),
        (_oip(shape=(1, 64), data=[0.5] * 64), "inputs.x"),
        (_oip(data=[float("nan")] * 64), "inputs.x"),
        (_oip(shape=(1, -1, 8, 8)), "inputs.0.shape"),
        ({**_oip(), "parameters": {"age": "yesterday"}}, "parameters.age"),
        ({**_oip(), "parameters": {"age": -3}}, "parameters.age"),
        ({**_oip(), "parameters": {"seed": "x"}}, "parameters.seed"),
        ({**_oip(), "parameters": {"gdc": "maybe"}}, "parameters.gdc"),
        ({**_oip(), "parameters": {"colour": 1}}, "parameters"),
        ({**_oip(), "outputs": [{"name": "nope"}]}, "outputs.0.name"),
        ({"inputs": [{"name": "x", "shape": [1]}]}, "inputs.0.datatype"),
        ({"inputs": "x"}, "inputs"),
    ],
)
def test_oip_bad_requests_are_400(shared, body, field):
    r = shared.post("/v2/models/default/infer", content=json.dumps(body), headers={"content-type": "application/json"})
    assert err(r) == (400, field), r.text


def test_oip_binary_errors(shared):
    x = np.zeros((1, 1, 8, 8), np.float32)
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
    ).encode()
    url = "/v2/models/default/infer"
    r = shared.post(
        url, content=header + x.tobytes()[:100], headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert err(r) == (400, "inputs.0.parameters.binary_data_size")
    r = shared.post(
        url, content=header + x.tobytes() + b"xx", headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert err(r) == (400, "body")
    r = shared.post(url, content=header + x.tobytes(), headers={"Inference-Header-Content-Length": "nope"})
    assert err(r) == (400, "Inference-Header-Content-Length")
    r = shared.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert err(r) == (400, "body")
    assert err(shared.post("/v2/models/Bad..Id/infer", json=_oip())) == (404, "chip_id")
