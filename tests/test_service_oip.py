"""In-process tests of the HTTP service (FastAPI TestClient): the Open Inference Protocol v2
routes (metadata, health, JSON and binary tensors agreeing with the native route, bad requests)."""


from __future__ import annotations



import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.durations import quantise_age
from service.settings import Settings
from tests.service_helpers import ZOO_MODEL, err, eval_npz, make_settings, tiny_model, x_batch


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


# ----------------------------------------------------------------------------------- settings & imports
def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEDCHIP_PORT", "9123")
    monkeypatch.setenv("AGEDCHIP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AGEDCHIP_API_KEY", "abc")
    monkeypatch.setenv("AGEDCHIP_MAX_UPLOAD_BYTES", "1048576")
    s = Settings()
    assert s.port == 9123 and s.state_dir == tmp_path and s.api_key.get_secret_value() == "abc"
    assert s.max_upload_bytes == 1 << 20 and s.host == "127.0.0.1" and s.default_model == "cnn-hwa"
    assert "abc" not in repr(s)
    monkeypatch.setenv("AGEDCHIP_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("AGEDCHIP_DEFAULT_PROFILE", "unobtainium")
    with pytest.raises(ValueError):
        Settings()
