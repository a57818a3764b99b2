"""Energy and latency estimates on the serving path: /infer, OIP, GET /chips/{id}, the counter, and
the time to SLO breach of POST /chips/{id}/evaluate with its gauge."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chipsim.cost import CostEstimator
from chipsim.fleet import time_to_breach
from tests.service_helpers import err, x_batch


def _metric(client, name: str, **labels) -> float | None:
    for f in text_string_to_metric_families(client.get("/metrics").text):
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_infer_energy_is_the_per_sample_figure_times_the_batch(client):
    cost = client.get("/chips/default").json()["cost"]
    assert cost["estimate"] is True and cost["batch"] == 1 and cost["cost_model"]
    per_sample = cost["per_sample"]["energy_j"]
    assert per_sample > 0 and [la["name"] for la in cost["layers"]] == ["fc1", "fc2"]
    # the layers and the digital nodes add up to the per-sample total
    assert math.isclose(
        sum(la["energy_j"] for la in cost["layers"]) + cost["digital"]["energy_j"], per_sample, rel_tol=1e-9
    )
    total = 0.0
    for batch in (1, 3, 7):
        r = client.post("/infer", json={"chip_id": "default", "inputs": x_batch(batch), "age": "1d"}).json()
        assert r["cost_model"] == cost["cost_model"]
        assert r["energy_j"] == pytest.approx(per_sample * batch, rel=1e-12)
        assert r["latency_s"] == pytest.approx(cost["per_sample"]["latency_s"] * batch, rel=1e-12)
        total += r["energy_j"]
    oip = client.post(
        "/v2/models/default/infer",
        json={"inputs": [{"name": "x", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 128}]},
    ).json()
    assert oip["parameters"]["energy_j"] == pytest.approx(per_sample * 2, rel=1e-12)
    assert oip["parameters"]["cost_model"] == cost["cost_model"]
    total += oip["parameters"]["energy_j"]
    assert _metric(client, "agedchip_estimated_energy_joules_total", chip="default") == pytest.approx(total)


def test_chip_cost_is_chipsims_estimate(client):
    """The summary shows chipsim.cost's figure for the stored chip, not a service-side recomputation."""
    chip = client.app.state.registry.get("default").chip
    want = CostEstimator(chip).estimate(batch=1)
    got = client.get("/chips/default").json()["cost"]
    assert got["per_sample"]["energy_j"] == want.per_sample.energy_j
    assert got["per_sample"]["analog_macs"] == 64 * 32 + 32 * 10  # the tiny MLP's two Gemms, by hand


def test_evaluate_with_slo_reports_the_breach_and_the_gauge(client):
    ages = ["1s", "1d", "1y", "10y"]
    plain = client.post("/chips/default/evaluate", json={"ages": ages, "readouts": 2}).json()
    assert "breach" not in plain and _metric(client, "agedchip_chip_slo_breach_in_seconds") is None
    on = [r["gdc_on"]["mean"] for r in plain["results"]]
    # a threshold between the first and the last value, so the curve crosses it
    theta = (max(on) + min(on)) / 2 if max(on) > min(on) else on[0] + 0.01
    r = client.post(
        "/chips/default/evaluate", json={"ages": ages, "readouts": 2, "slo": {"metric": "accuracy", "threshold": theta}}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["gdc_on"]["mean"] for x in body["results"]] == on  # seeded: the same numbers
    want = time_to_breach([x["age_s"] for x in plain["results"]], on, theta)  # independent call on the means
    got = body["breach"]["gdc_on"]
    assert got["status"] == str(want.status) and got["age_s"] == want.age_s
    gauge = _metric(client, "agedchip_chip_slo_breach_in_seconds", chip="default")
    at = want.age_s if want.age_s is not None else want.bracket_s[1]
    if at is None:
        assert gauge is None
    else:
        expect = max(0.0, at - body["chip_age_s"]) / 86400.0  # the test chip ages a day per second
        assert gauge == pytest.approx(expect, abs=5.0)  # seconds passed between the evaluation and the scrape
        assert got["seconds_until"] == pytest.approx(expect, rel=1e-9)


def test_evaluate_normalised_slo_uses_the_fp_accuracy(client):
    r = client.post(
        "/chips/default/evaluate",
        json={"ages": ["1h"], "readouts": 1, "slo": {"metric": "normalised_accuracy", "threshold": 0.5}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # the tiny zoo's labels are the FP model's own predictions (tests.service_helpers.eval_npz)
    assert body["fp_accuracy"] == 1.0
    assert body["breach"]["gdc_on"]["status"] in ("not_breached", "breached_at_first")


@pytest.mark.parametrize(
    "slo,field",
    [
        ({"metric": "accuracy", "threshold": 1.5}, "slo"),
        ({"metric": "latency", "threshold": 0.5}, "slo.metric"),
        ({"threshold": 0}, "slo.threshold"),
    ],
)
def test_evaluate_slo_validation(shared, slo, field):
    assert err(shared.post("/chips/default/evaluate", json={"ages": ["1h"], "slo": slo})) == (422, field)


def test_evaluate_slo_needs_an_age_above_zero(shared):
    r = shared.post(
        "/chips/default/evaluate", json={"ages": [0], "readouts": 1, "slo": {"metric": "accuracy", "threshold": 0.5}}
    )
    assert err(r) == (422, "ages")
