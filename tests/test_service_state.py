"""In-process tests of the HTTP service (FastAPI TestClient): the metrics contract, the refresher,
corrupt chips, restarts that reload chips, and a missing default model."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from tests.service_helpers import REPO, ZOO_MODEL, err, make_settings, x_batch

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
    assert len(names) == 33
    # series that exist only after an evaluation with an SLO (tests/test_service_energy.py) or of a
    # fleet (tests/test_service_fleets.py)
    later = {
        "agedchip_chip_slo_breach_in_seconds",
        "agedchip_fleet_yield_ratio",
        "agedchip_fleet_slo_breach_age_seconds",
        "agedchip_fleet_eval_age_seconds",
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
