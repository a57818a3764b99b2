"""In-process tests of the HTTP service (FastAPI TestClient): programming chips (upload, zoo
model, evaluation set, bad requests), deleting them, the chip limit and API keys."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from service.app import create_app
from tests.service_helpers import ZOO_MODEL, err, eval_npz, make_settings, tiny_model, x_batch


# ----------------------------------------------------------------------------------- programming
def test_program_upload_shares_model_blob_and_serves(client, tmp_path):
    model = tiny_model()  # same bytes as the zoo's model → the same blob
    files = {
        "model": ("tiny.onnx", model, "application/octet-stream"),
        "eval": ("eval.npz", eval_npz(model, n=50), "application/octet-stream"),
    }
    data = {
        "chip_id": "mine",
        "profile": "pcm-faulty",
        "overrides": json.dumps({"drift_scale": 2.0}),
        "seed": "7",
        "time_scale": "3600",
    }
    r = client.post("/program", files=files, data=data)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["chip_id"] == "mine" and s["seed"] == 7 and s["time_scale"] == 3600.0
    assert s["profile"]["preset"] == "pcm-faulty" and s["profile"]["values"]["drift_scale"] == 2.0
    assert s["profile"]["overrides"] == {"drift_scale": 2.0} and s["eval_samples"] == 50
    assert s["stuck_reset"] + s["stuck_set"] > 0  # 2.5 % faulty devices
    assert r.headers["location"] == "/chips/mine"
    default = client.get("/chips/default").json()
    assert s["model"]["digest"] == default["model"]["digest"]
    blobs = list((tmp_path / "state" / "blobs").glob(s["model"]["digest"] + ".*"))
    assert len(blobs) == 1  # stored once, shared by both chips
    assert client.post("/infer", json={"chip_id": "mine", "inputs": x_batch(2), "age": "1h"}).status_code == 200
    # ids are unique and chips immutable
    assert err(client.post("/program", files=files, data=data)) == (409, "chip_id")


def test_program_json_zoo_model_with_generated_id(client):
    r = client.post("/program", json={"model": ZOO_MODEL, "profile": {"preset": "reram", "out_noise": 0.02}})
    assert r.status_code == 201, r.text
    s = r.json()
    assert re.fullmatch(rf"{ZOO_MODEL}-[0-9a-f]{{8}}", s["chip_id"]) and s["profile"]["values"]["device"] == "reram"
    assert s["profile"]["values"]["out_noise"] == 0.02 and s["model"]["source"] == "zoo"
    ids = [c["chip_id"] for c in client.get("/chips").json()["chips"]]
    assert s["chip_id"] in ids
    # multipart with a zoo name as a text field
    text = {"model": (None, ZOO_MODEL), "chip_id": (None, "zoo2"), "seed": (None, "1")}
    r = client.post("/program", files=text)
    assert r.status_code == 201, r.text
    # a url-encoded form cannot carry an upload: refused as a content type
    r = client.post("/program", data={"model": ZOO_MODEL, "chip_id": "zoo3"})
    assert err(r) == (415, "content-type") and "multipart/form-data" in r.json()["error"]["message"]


def _unmappable_model() -> bytes:
    """A weight-bearing op no rewriter maps (Einsum with a constant operand)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    node = helper.make_node("Einsum", ["x", "w"], ["y"], name="contract", equation="nk,km->nm")
    m = helper.make_model(
        helper.make_graph([node], "g", [x], [y], initializer=[w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    return m.SerializeToString()


def _external_data_model() -> bytes:
    m = onnx.load_from_string(tiny_model())
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../etc/passwd")
    return m.SerializeToString()


@pytest.mark.parametrize(
    "files, data, status, field",
    [
        ({"model": ("m.onnx", b"not an onnx file at all", "application/octet-stream")}, {}, 422, "model"),
        ({"model": ("m.onnx", b"", "application/octet-stream")}, {}, 422, "model"),
        ({"model": ("m.onnx", _unmappable_model(), "application/octet-stream")}, {}, 422, "model"),
        ({"model": ("m.onnx", _external_data_model(), "application/octet-stream")}, {}, 422, "model"),
        ({}, {"model": "no-such-model"}, 422, "model"),
        ({}, {"model": "../../etc/passwd"}, 422, "model"),
        ({}, {}, 422, "model"),
        ({}, {"model": ZOO_MODEL, "profile": "pcm-ultra"}, 422, "profile"),
        ({}, {"model": ZOO_MODEL, "overrides": '{"drift_scale": 50}'}, 422, "profile.drift_scale"),
        ({}, {"model": ZOO_MODEL, "overrides": '{"p_stuck_set": -0.1}'}, 422, "profile.p_stuck_set"),
        ({}, {"model": ZOO_MODEL, "overrides": '{"warp": 1}'}, 422, "profile.warp"),
        ({}, {"model": ZOO_MODEL, "overrides": "not json"}, 422, "overrides"),
        ({}, {"model": ZOO_MODEL, "seed": "minus one"}, 422, "seed"),
        ({}, {"model": ZOO_MODEL, "time_scale": "-2"}, 422, "time_scale"),
        ({}, {"model": ZOO_MODEL, "chip_id": "Bad/Id"}, 422, "chip_id"),
        ({}, {"model": ZOO_MODEL, "chip_id": "default"}, 409, "chip_id"),
        ({}, {"model": ZOO_MODEL, "colour": "red"}, 422, "colour"),
        ({"eval": ("e.npz", b"garbage", "application/octet-stream")}, {"model": ZOO_MODEL}, 422, "eval"),
        ({"calibration": ("c.npz", b"garbage", "application/octet-stream")}, {"model": ZOO_MODEL}, 422, "calibration"),
    ],
)
def test_bad_program_requests(client, files, data, status, field):
    parts = {**files, **{k: (None, v) for k, v in data.items()}}  # text fields as multipart parts too
    r = client.post("/program", files=parts or None)
    assert err(r) == (status, field), r.text


def test_program_eval_set_shape_checked_and_calibration(client):
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 3), np.float32), y=np.zeros(5, np.int64))
    r = client.post("/program", data={"model": ZOO_MODEL}, files={"eval": ("e.npz", buf.getvalue(), "x")})
    assert err(r) == (422, "eval")
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32) * 4)
    model = tiny_model(ranges=False)
    r = client.post(
        "/program",
        files={"model": ("plain.onnx", model, "x"), "calibration": ("c.npz", buf.getvalue(), "x")},
        data={"chip_id": "calibrated"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["layers"][0]["input_range"] > 2  # calibrated from data in [0, 4), not the default 1.0
    assert r.json()["eval_samples"] == 0
    # no eval set: evaluation says so
    r = client.post("/chips/calibrated/evaluate", json={"ages": ["1h"]})
    assert err(r) == (409, "chip_id") and "eval" in r.json()["error"]["message"]
    assert client.get("/chips/nope").status_code == 404
    assert client.request("DELETE", "/chips/nope").status_code == 404


def test_delete_chip(client):
    assert client.post("/program", json={"model": ZOO_MODEL, "chip_id": "gone"}).status_code == 201
    assert client.delete("/chips/gone").status_code == 204
    assert err(client.get("/chips/gone")) == (404, "chip_id")
    assert err(client.post("/infer", json={"chip_id": "gone", "inputs": x_batch(1)})) == (404, "chip_id")
    assert "gone" not in [c["chip_id"] for c in client.get("/chips").json()["chips"]]
    assert 'chip="gone"' not in client.get("/metrics").text


def test_max_chips(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo, max_chips=2))) as c:
        assert c.post("/program", json={"model": ZOO_MODEL}).status_code == 201
        r = c.post("/program", json={"model": ZOO_MODEL})
        assert err(r) == (409, "chip_id") and "AGEDCHIP_MAX_CHIPS" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------------- auth
def test_api_keys(tmp_path, zoo):
    s = make_settings(tmp_path, zoo, api_key="admin-secret", infer_api_key="infer-secret")
    with TestClient(create_app(s)) as c:
        body = {"model": ZOO_MODEL, "chip_id": "keyed"}
        assert err(c.post("/program", json=body)) == (401, "api_key")
        assert err(c.post("/program", json=body, headers={"X-API-Key": "wrong"})) == (401, "api_key")
        assert err(c.post("/program", json=body, headers={"X-API-Key": "infer-secret"})) == (401, "api_key")
        assert c.post("/program", json=body, headers={"X-API-Key": "admin-secret"}).status_code == 201
        inf = {"chip_id": "keyed", "inputs": x_batch(1)}
        assert err(c.post("/infer", json=inf)) == (401, "api_key")
        assert c.post("/infer", json=inf, headers={"Authorization": "Bearer infer-secret"}).status_code == 200
        assert c.post("/infer", json=inf, headers={"X-API-Key": "admin-secret"}).status_code == 200
        oip = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
        assert c.post("/v2/models/keyed/infer", json=oip).status_code == 401
        assert c.post("/v2/models/keyed/infer", json=oip, headers={"X-API-Key": "infer-secret"}).status_code == 200
        assert c.delete("/chips/keyed").status_code == 401
        assert c.delete("/chips/keyed", headers={"Authorization": "Bearer admin-secret"}).status_code == 204
        assert err(c.get("/chips")) == (401, "api_key")  # chips show seeds and profiles: keyed too
        assert c.get("/chips", headers={"X-API-Key": "infer-secret"}).status_code == 200
        assert c.get("/metrics").status_code == 200 and c.get("/healthz").status_code == 200


def test_inference_open_when_only_admin_key(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo, api_key="k"))) as c:
        assert c.post("/infer", json={"chip_id": "default", "inputs": x_batch(1)}).status_code == 200
        assert c.post("/program", json={"model": ZOO_MODEL}).status_code == 401
