"""In-process tests of the HTTP service (FastAPI TestClient): routes, validation, auth, limits,
OIP v2, metrics contract, corrupt chips, the refresher. The tiny zoo and the clients come from
tests/conftest.py and tests/service_helpers.py."""

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

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------- startup & chips
def test_default_chip_programmed_on_first_start(shared):
    chips = shared.get("/chips").json()["chips"]
    assert [c["chip_id"] for c in chips] == ["default"] and chips[0]["state"] == "ready"
    s = shared.get("/chips/default").json()
    assert s["analog_layers"] == 2 and s["tiles"] == 2 and s["weights"] == 64 * 32 + 32 * 10
    assert s["devices"] == 2 * s["weights"] and s["stuck_reset"] + s["stuck_set"] >= 0
    assert s["model"]["source"] == "zoo" and len(s["model"]["digest"]) == 64
    assert s["profile"]["preset"] == "pcm" and s["time_scale"] == 86400.0 and s["eval_samples"] == 120
    assert s["disk_bytes"] > 0 and s["shared_bytes"] > 0 and s["classifier"] is True
    assert s["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 1, 8, 8]}]
    assert shared.get("/healthz").json()["status"] == "ok"
    assert shared.get("/readyz").status_code == 200
    assert shared.get("/zoo").json()["models"][0]["name"] == ZOO_MODEL
    assert "/infer" in shared.get("/openapi.json").json()["paths"]


def test_infer_outputs_argmax_age_and_alpha(shared):
    r = shared.post("/infer", json={"chip_id": "default", "inputs": x_batch(3), "age": "1d", "seed": 5})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["age_s"] == 86400.0 and b["age_source"] == "request" and b["gdc"] == "global" and b["batch"] == 3
    y = np.asarray(b["outputs"]["y"])
    assert y.shape == (3, 10) and b["argmax"] == y.argmax(1).tolist()
    assert [a["layer"] for a in b["alpha"]] == ["fc1", "fc2"] and all(a["alpha_mean"] > 1 for a in b["alpha"])
    # the same request with the same seed is bit-identical; the age as seconds or ISO-8601 is the same age
    for age in ("1d", 86400, "P1D", "24h"):
        again = shared.post("/infer", json={"chip_id": "default", "inputs": x_batch(3), "age": age, "seed": 5}).json()
        assert again["outputs"] == b["outputs"]
    other = shared.post("/infer", json={"chip_id": "default", "inputs": x_batch(3), "age": "1d", "seed": 6}).json()
    assert other["outputs"] != b["outputs"]
    # inputs as an object name → array; GDC off applies no α
    off = shared.post(
        "/infer", json={"chip_id": "default", "inputs": {"x": x_batch(3)}, "age": "1y", "seed": 5, "gdc": False}
    ).json()
    assert off["gdc"] == "off" and off["gdc_applied"] is False


def test_infer_without_age_uses_wall_clock_times_scale(shared):
    b = shared.post("/infer", json={"chip_id": "default", "inputs": x_batch(1)}).json()
    assert b["age_source"] == "wall_clock" and b["age_s"] >= 0
    chip = shared.get("/chips/default").json()
    assert chip["age_s"] >= b["age_s"]


def test_older_chips_drift_more(shared):
    errs = [shared.get("/chips/default/drift", params={"age": a}).json() for a in ("1s", "1d", "10y")]
    raw = [e["weight_error"] for e in errs]
    assert raw[0] < raw[1] < raw[2]
    assert all(e["weight_error_gdc"] < e["weight_error"] for e in errs[1:])
    assert errs[2]["g_ratio"] < errs[1]["g_ratio"] < errs[0]["g_ratio"] <= 1.05
    layer = errs[2]["layers"][0]
    assert {
        "alpha_mean",
        "alpha_per_tile",
        "g_ratio",
        "weight_error",
        "weight_error_gdc",
        "stuck_reset",
        "stuck_set",
        "mean_nu",
    } <= set(layer)
    assert err(shared.get("/chips/default/drift", params={"age": "soon"})) == (422, "age")
    assert err(shared.get("/chips/default/drift", params={"gdc": "maybe"})) == (422, "gdc")


def test_quantised_wall_clock_ages():
    assert quantise_age(0) == 0 and quantise_age(-3) == 0 and quantise_age(0.123) == 0.12
    for age in (1.0, 3600.0, 86400.0 * 365, 1e10):
        q = quantise_age(age * 1.001)
        assert abs(q / age - 1) < 0.024
    assert quantise_age(1e20) == 1000 * 365 * 86400.0
    assert quantise_age(1234.5) == quantise_age(1234.6)  # nearby ages share a cached read-out


# ----------------------------------------------------------------------------------- bad input
NAN = float("nan")


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"inputs": [[1.0, 2.0]]}, 422, "inputs.x"),  # wrong shape
        ({"inputs": [[[[1.0] * 7] * 8]]}, 422, "inputs.x"),  # wrong inner dimension
        ({"inputs": [[[["a"] * 8] * 8]]}, 422, "inputs.x"),  # wrong dtype
        ({"inputs": {"z": [[1.0]]}}, 422, "inputs"),  # unknown input name
        ({"inputs": []}, 422, "inputs.x"),  # empty
        ({"inputs": [[[[NAN] * 8] * 8]]}, 422, "inputs.x"),
        ({"inputs": [[[[1e999] * 8] * 8]]}, 422, "inputs.x"),  # inf
        ({"inputs": [[[[0.5] * 8] * 8]], "chip_id": "nope"}, 404, "chip_id"),
        ({"inputs": [[[[0.5] * 8] * 8]], "chip_id": "../../etc"}, 422, "chip_id"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": -1}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": "-1h"}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": "5000y"}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": 1e300}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": "1 fortnight"}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": "P1H"}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "age": True}, 422, "age"),
        ({"inputs": [[[[0.5] * 8] * 8]], "gdc": "sometimes"}, 422, "gdc"),
        ({"inputs": [[[[0.5] * 8] * 8]], "seed": -1}, 422, "seed"),
        ({"inputs": [[[[0.5] * 8] * 8]], "read_seed": 2**64}, 422, "read_seed"),
        ({"inputs": [[[[0.5] * 8] * 8]], "labels": [1, 2]}, 422, "labels"),
        ({"inputs": [[[[0.5] * 8] * 8]], "labels": [10]}, 422, "labels.0"),
        ({"inputs": [[[[0.5] * 8] * 8]], "colour": "red"}, 422, "colour"),
        ({"age": "1h"}, 422, "inputs"),
    ],
)
def test_bad_inference_input_is_4xx_naming_the_field(shared, body, status, field):
    body = {"chip_id": "default", **body}
    r = shared.post("/infer", content=json.dumps(body), headers={"content-type": "application/json"})
    assert err(r) == (status, field), r.text


def test_infer_names_its_chip(shared):
    """A request without `chip_id` is refused rather than sent to whichever chip is called "default"."""
    r = shared.post("/infer", json={"inputs": x_batch(1), "labels": [0]})
    assert err(r) == (422, "chip_id") and "field required" in r.json()["error"]["message"]


def test_malformed_json_and_batch_limit(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo, max_batch=4))) as c:
        r = c.post("/infer", content=b'{"inputs": [[1,', headers={"content-type": "application/json"})
        assert err(r) == (422, "body")
        r = c.post("/infer", json={"chip_id": "default", "inputs": x_batch(5)})
        assert err(r) == (422, "inputs.x") and "AGEDCHIP_MAX_BATCH" in r.json()["error"]["message"]
        assert c.post("/infer", json={"chip_id": "default", "inputs": x_batch(4)}).status_code == 200


def test_request_size_limits_413_before_parsing(tmp_path, zoo):
    s = make_settings(tmp_path, zoo, max_request_bytes=4096, max_upload_bytes=8192)
    with TestClient(create_app(s)) as c:
        r = c.post("/infer", json={"chip_id": "default", "inputs": x_batch(8)})
        assert err(r) == (413, "body")
        assert "AGEDCHIP_MAX_REQUEST_BYTES" in r.json()["error"]["message"]  # the setting to raise
        # a chunked body (no Content-Length) is counted as it streams
        big = json.dumps({"inputs": x_batch(8)}).encode()
        r = c.post("/infer", content=iter([big[:3000], big[3000:]]), headers={"content-type": "application/json"})
        assert err(r) == (413, "body")
        small = json.dumps({"chip_id": "default", "inputs": x_batch(1)}).encode()
        r = c.post("/infer", content=iter([small[:100], small[100:]]), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        r = c.post("/program", files={"model": ("m.onnx", tiny_model(hidden=64), "application/octet-stream")})
        assert err(r) == (413, "body")
        assert "AGEDCHIP_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
        text = c.get("/metrics").text
        assert 'agedchip_http_requests_total{method="POST",route="/infer",status="4xx"}' in text
        assert 'agedchip_http_requests_total{method="POST",route="/program",status="4xx"}' in text


def test_unknown_route_and_unexpected_error(tmp_path, zoo, monkeypatch):
    app = create_app(make_settings(tmp_path, zoo))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert err(c.get("/nowhere")) == (404, None)
        assert c.request("BREW", "/infer").status_code in (404, 405)

        def boom(*a, **k):
            raise RuntimeError("secret internals /etc/passwd")

        monkeypatch.setattr(app.state.registry, "get", boom)
        r = c.post("/infer", json={"chip_id": "default", "inputs": x_batch(1)})
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["error"]["message"].startswith("internal server error")
        text = c.get("/metrics").text
        assert 'route="unmatched"' in text and 'method="OTHER"' in text
        assert 'agedchip_http_requests_total{method="POST",route="/infer",status="5xx"} 1.0' in text


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


# ----------------------------------------------------------------------------------- evaluation
def test_evaluate_accuracy_vs_age(shared):
    r = shared.post("/chips/default/evaluate", json={"ages": ["1s", "1y", 3600], "readouts": 3})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["samples"] == 120 and b["readouts"] == 3 and b["gdc_mode"] == "global"
    assert [x["age_s"] for x in b["results"]] == [1.0, 365 * 86400.0, 3600.0]
    for x in b["results"]:
        for key in ("gdc_on", "gdc_off"):
            st = x[key]
            assert len(st["values"]) == 3 and 0 <= st["min"] <= st["mean"] <= st["max"] <= 1 and st["std"] >= 0
    assert b["results"][0]["gdc_on"]["mean"] > 0.8  # labels are the digital model's own predictions
    # reproducible: read seeds seed the per-MVM noise too
    again = shared.post("/chips/default/evaluate", json={"ages": ["1s", "1y", 3600], "readouts": 3}).json()
    assert again["results"] == b["results"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"ages": []}, "ages"),
        ({"ages": ["1h"] * 21}, "ages"),
        ({"ages": ["1h", "later"]}, "ages.1"),
        ({"ages": [-5]}, "ages.0"),
        ({"ages": ["1h"], "readouts": 0}, "readouts"),
        ({"ages": ["1h"], "readouts": 51}, "readouts"),
        ({"ages": ["1h"], "gdc_mode": "off"}, "gdc_mode"),
    ],
)
def test_evaluate_validation(shared, body, field):
    assert err(shared.post("/chips/default/evaluate", json=body)) == (422, field)


# ----------------------------------------------------------------------------------- live accuracy & metrics
CONTRACT = Path(REPO / "docs" / "metrics.md")


def _contract_names() -> list[str]:
    return re.findall(r"^\| `(agedchip_[a-z_]+)` \|", CONTRACT.read_text(), flags=re.M)


def test_metrics_contract_after_refresh(client):
    x = x_batch(4)
    pred = client.post("/infer", json={"chip_id": "default", "inputs": x, "age": "1h", "seed": 1}).json()["argmax"]
    labels = [pred[0], pred[1], (pred[2] + 1) % 10, (pred[3] + 1) % 10]
    r = client.post("/infer", json={"chip_id": "default", "inputs": x, "age": "1h", "seed": 1, "labels": labels}).json()
    assert r["accuracy"] == 0.5
    client.app.state.refresher.refresh_once()
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s for f in families.values() for s in f.samples}
    names = _contract_names()
    assert len(names) == 32
    # series that exist only after an evaluation with an SLO (tests/test_service_energy.py) or of a
    # fleet (tests/test_service_fleets.py)
    later = {
        "agedchip_chip_slo_breach_in_seconds",
        "agedchip_fleet_yield_ratio",
        "agedchip_fleet_slo_breach_age_seconds",
    }
    for name in (n for n in names if n not in later):
        assert name in samples or name.removesuffix("_total") in families, f"{name} missing from /metrics"

    def value(name: str, **labels) -> float:
        for f in families.values():
            for s in f.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError((name, labels))

    assert value("agedchip_inferences_total", chip="default") == 2
    assert value("agedchip_inference_samples_total", chip="default") == 8
    assert value("agedchip_labelled_samples_total", chip="default") == 4
    assert value("agedchip_correct_samples_total", chip="default") == 2  # two of the four labels were wrong
    assert "agedchip_chip_live_accuracy" not in families  # live accuracy is computed in PromQL over a window
    assert value("agedchip_readout_cache_misses_total", chip="default") == 1
    assert value("agedchip_readout_cache_hits_total", chip="default") == 1
    assert value("agedchip_chips", state="ready") == 1 and value("agedchip_chips", state="corrupt") == 0
    assert value("agedchip_chip_info", chip="default", model=ZOO_MODEL, profile="pcm") == 1
    ages = {s.labels["age"] for s in families["agedchip_chip_eval_accuracy"].samples}
    assert ages == {"1s", "1h", "1d", "1w", "30d", "1y", "10y"}
    assert {s.labels["gdc"] for s in families["agedchip_chip_current_accuracy"].samples} == {"on", "off"}
    assert {s.labels["layer"] for s in families["agedchip_chip_gdc_alpha"].samples} == {"fc1", "fc2"}
    assert value("agedchip_chip_weight_error", gdc="on") < value("agedchip_chip_weight_error", gdc="off")
    assert 0 < value("agedchip_chip_conductance_ratio") < 1
    assert value("agedchip_chip_age_seconds", chip="default") > 0
    assert value("agedchip_http_requests_total", route="/infer", method="POST", status="2xx") == 2
    if shutil.which("promtool"):
        res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_refresher_survives_a_failing_chip(client, monkeypatch):
    refresher = client.app.state.refresher
    chip = client.app.state.registry.get("default")

    def broken(*a, **k):
        raise RuntimeError("drift failed")

    monkeypatch.setattr(chip, "drift", broken)
    refresher.refresh_once()
    assert refresher.runs == 1 and "drift failed" in refresher.last_error
    assert client.get("/metrics").status_code == 200


# ----------------------------------------------------------------------------------- corrupt chips & restart
def test_corrupt_chip_listed_not_served_and_deletable(tmp_path, zoo):
    s = make_settings(tmp_path / "state", zoo)
    with TestClient(create_app(s)) as c:
        assert c.post("/program", json={"model": ZOO_MODEL, "chip_id": "victim", "seed": 3}).status_code == 201
        before = c.post("/infer", json={"chip_id": "victim", "inputs": x_batch(2), "age": "1d", "seed": 9}).json()
    victim = tmp_path / "state" / "chips" / "victim"
    npy = sorted(victim.glob("*.npy"))[0]
    npy.write_bytes(npy.read_bytes()[:-7])  # truncated
    with TestClient(create_app(s)) as c:
        chips = {x["chip_id"]: x for x in c.get("/chips").json()["chips"]}
        assert chips["victim"]["state"] == "corrupt" and npy.name in chips["victim"]["error"]
        assert chips["default"]["state"] == "ready"
        r = c.post("/infer", json={"chip_id": "victim", "inputs": x_batch(1)})
        assert err(r) == (409, "chip_id")
        assert 'agedchip_chips{state="corrupt"} 1.0' in c.get("/metrics").text
        assert c.delete("/chips/victim").status_code == 204
        assert 'agedchip_chips{state="corrupt"} 0.0' in c.get("/metrics").text
        # the default chip was reloaded, not re-programmed: same outputs for the same seed
        assert c.post("/program", json={"model": ZOO_MODEL, "chip_id": "victim", "seed": 3}).status_code == 201
        after = c.post("/infer", json={"chip_id": "victim", "inputs": x_batch(2), "age": "1d", "seed": 9}).json()
        assert after["outputs"] == before["outputs"]


def test_restart_reloads_chips_with_identical_outputs(tmp_path, zoo):
    s = make_settings(tmp_path / "state", zoo)
    req = {"chip_id": "default", "inputs": x_batch(2), "age": "30d", "seed": 4}
    with TestClient(create_app(s)) as c:
        first = c.post("/infer", json=req).json()
        programmed_at = c.get("/chips/default").json()["programmed_at"]
    with TestClient(create_app(s)) as c:
        assert c.get("/chips/default").json()["programmed_at"] == programmed_at
        assert c.post("/infer", json=req).json()["outputs"] == first["outputs"]


def test_missing_default_model_is_not_fatal(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo, default_model="absent"))) as c:
        assert c.get("/chips").json()["chips"] == []
        assert c.get("/readyz").status_code == 200


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


def test_serving_path_does_not_import_torch():
    code = (
        "import sys, service.app, service.__main__; from service.app import create_app; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_help_prints_settings_table():
    res = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0 and "AGEDCHIP_STATE_DIR" in res.stdout and "AGEDCHIP_API_KEY" in res.stdout


# ----------------------------------------------------------------------------------- the real zoo
REAL_ZOO = REPO / "models" / "zoo"


@pytest.mark.skipif(not (REAL_ZOO / "cnn-hwa.onnx").is_file(), reason="the trained zoo is not in models/zoo")
def test_embedded_default_with_the_real_zoo(tmp_path):
    """What `make run` starts: the zoo's cnn-hwa as chip `default`, serving at once."""
    with TestClient(create_app(Settings(state_dir=tmp_path, refresh_seconds=0))) as c:
        s = c.get("/chips/default").json()
        assert s["model"]["name"] == "cnn-hwa" and s["profile"]["preset"] == "pcm" and s["eval_samples"] > 0
        assert s["time_scale"] == 86400.0 and s["classifier"]
        with np.load(REAL_ZOO / "cnn-hwa.eval.npz") as npz:
            x, y = npz["x"][:64], npz["y"][:64]
        r = c.post(
            "/infer", json={"chip_id": "default", "inputs": x.tolist(), "labels": y.tolist(), "age": "1y", "seed": 0}
        ).json()
        assert r["accuracy"] >= 0.9 and list(r["outputs"]) == [s["outputs"][0]["name"]]
        names = {m["name"] for m in c.get("/zoo").json()["models"]}
        assert {"cnn-hwa", "mlp-hwa"} <= names
