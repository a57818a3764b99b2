"""In-process tests of the HTTP service (FastAPI TestClient): inference, evaluation, input
validation, request limits, settings and the serving path's imports. Programming and chip
management are in test_service_program, state and metrics in test_service_state, OIP v2 in
test_service_oip. The tiny zoo and the clients come from tests/conftest.py and
tests/service_helpers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.durations import quantise_age
from service.settings import Settings
from tests.service_helpers import REPO, ZOO_MODEL, err, make_settings, tiny_model, x_batch


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
