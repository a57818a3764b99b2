"""Unit tests of the alert rules with `promtool test rules` (thresholds and `for` durations on
synthetic series, healthy and unhealthy), and of the PromQL rewriting the Prometheus tests use.

Install the binaries with `bash docker/ci/install-prometheus.sh` (what `make test` runs); if
they are still missing, these tests skip with the reason printed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.prometheus_helpers import ALERTS, alert_rules, boolify

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------ alert unit tests
def _ts(name: str, labels: str, values: str) -> dict:
    """A promtool input time series: ``values`` in promtool's expanding notation, one per minute."""
    return {"series": f"{name}{{{labels}}}", "values": values}


def _unhealthy_series() -> list[dict]:
    """Inputs on which every alert fires."""
    return [
        _ts("up", 'job="agedchip", instance="svc"', "1 1 0x30"),
        _ts("agedchip_http_requests_total", 'route="/infer", method="POST", status="5xx"', "0+10x30"),
        _ts("agedchip_http_requests_total", 'route="/infer", method="POST", status="2xx"', "0+10x30"),
        _ts("agedchip_http_request_duration_seconds_bucket", 'route="/infer", method="POST", le="0.5"', "0x30"),
        _ts("agedchip_http_request_duration_seconds_bucket", 'route="/infer", method="POST", le="1.0"', "0x30"),
        _ts("agedchip_http_request_duration_seconds_bucket", 'route="/infer", method="POST", le="2.5"', "0+20x30"),
        _ts("agedchip_http_request_duration_seconds_bucket", 'route="/infer", method="POST", le="+Inf"', "0+20x30"),
        _ts("agedchip_chips", 'state="corrupt"', "0 0 1x30"),
        _ts("agedchip_chip_current_accuracy", 'chip="c1", gdc="on"', "0.95 0.95 0.6x30"),
        _ts("agedchip_chip_eval_accuracy", 'chip="c1", age="1s", gdc="on"', "0.95x32"),
        _ts("agedchip_labelled_samples_total", 'chip="c1"', "0+100x32"),  # 100 labelled samples a minute,
        _ts("agedchip_correct_samples_total", 'chip="c1"', "0+50x32"),  # half of them right
        _ts("agedchip_chip_weight_error", 'chip="c1", gdc="on"', "0.7x32"),
        _ts("agedchip_chip_slo_breach_in_seconds", 'chip="c1"', "500000-60x32"),  # 5.8 days, counting down
    ]


def _expected_alerts() -> dict[str, list[dict]]:
    """What each alert fires with on :func:`_unhealthy_series`."""
    return {
        "AgedchipDown": [{"exp_labels": {"severity": "critical", "job": "agedchip", "instance": "svc"}}],
        "AgedchipHighErrorRate": [{"exp_labels": {"severity": "critical"}}],
        "AgedchipHighInferenceLatencyP99": [{"exp_labels": {"severity": "warning", "route": "/infer"}}],
        "AgedchipCorruptChips": [{"exp_labels": {"severity": "warning", "state": "corrupt"}}],
        "AgedchipChipAccuracyLow": [{"exp_labels": {"severity": "warning", "chip": "c1", "gdc": "on"}}],
        "AgedchipChipAccuracyDropped": [{"exp_labels": {"severity": "warning", "chip": "c1", "gdc": "on"}}],
        "AgedchipLiveAccuracyLow": [{"exp_labels": {"severity": "warning", "chip": "c1"}}],
        "AgedchipWeightErrorHigh": [{"exp_labels": {"severity": "info", "chip": "c1", "gdc": "on"}}],
        "AgedchipSloBreachSoon": [{"exp_labels": {"severity": "warning", "chip": "c1"}}],
    }


def _healthy_series() -> list[dict]:
    """Inputs on which every alert stays quiet."""
    return [
        _ts("up", 'job="agedchip", instance="svc"', "1x30"),
        _ts("agedchip_http_requests_total", 'route="/infer", method="POST", status="5xx"', "0x30"),
        _ts("agedchip_http_requests_total", 'route="/infer", method="POST", status="2xx"', "0+100x30"),
        _ts("agedchip_http_request_duration_seconds_bucket", 'route="/infer", method="POST", le="0.5"', "0+100x30"),
        _ts("agedchip_http_request_duration_seconds_bucket", 'route="/infer", method="POST", le="+Inf"', "0+100x30"),
        _ts("agedchip_chips", 'state="corrupt"', "0x30"),
        _ts("agedchip_chip_current_accuracy", 'chip="c1", gdc="on"', "0.94x30"),
        _ts("agedchip_chip_eval_accuracy", 'chip="c1", age="1s", gdc="on"', "0.95x30"),
        _ts("agedchip_labelled_samples_total", 'chip="c1"', "0+100x30"),
        _ts("agedchip_correct_samples_total", 'chip="c1"', "0+93x30"),
        _ts("agedchip_chip_weight_error", 'chip="c1", gdc="on"', "0.1x30"),
        _ts("agedchip_chip_slo_breach_in_seconds", 'chip="c1"', "2592000-60x30"),  # 30 days away
    ]


def _rule_unit_tests(rules_file: Path) -> dict:
    """promtool unit tests: each alert fires on bad input and stays quiet on healthy input."""
    bad, fires, healthy = _unhealthy_series(), _expected_alerts(), _healthy_series()
    names = [r["alert"] for r in alert_rules()]
    assert set(fires) == set(names), "add a promtool unit test for each alert"
    return {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "alerts fire",
                "interval": "1m",
                "input_series": bad,
                "alert_rule_test": [{"eval_time": "25m", "alertname": n, "exp_alerts": fires[n]} for n in names],
            },
            {
                "name": "healthy: quiet",
                "interval": "1m",
                "input_series": healthy,
                "alert_rule_test": [{"eval_time": "25m", "alertname": n, "exp_alerts": []} for n in names],
            },
            {
                "name": "not before `for`",
                "interval": "1m",
                "input_series": bad,
                "alert_rule_test": [{"eval_time": "2m", "alertname": n, "exp_alerts": []} for n in names],
            },
            {
                "name": "live accuracy: a trickle of labels is not enough",
                "interval": "1m",
                "input_series": [
                    _ts("agedchip_labelled_samples_total", 'chip="c1"', "0+10x30"),  # 50 in 5 min, fewer than 100
                    _ts("agedchip_correct_samples_total", 'chip="c1"', "0+1x30"),
                ],
                "alert_rule_test": [{"eval_time": "25m", "alertname": "AgedchipLiveAccuracyLow", "exp_alerts": []}],
            },
            {
                "name": "live accuracy: a drop after a long healthy run fires within 10 minutes",
                "interval": "1m",
                "input_series": [  # 10 h at 95 %, then 50 %: a ratio since start would still read 94 %
                    _ts("agedchip_labelled_samples_total", 'chip="c1"', "0+100x610"),
                    _ts("agedchip_correct_samples_total", 'chip="c1"', "0+95x600 57050+50x9"),
                ],
                "alert_rule_test": [
                    {"eval_time": "600m", "alertname": "AgedchipLiveAccuracyLow", "exp_alerts": []},
                    {
                        "eval_time": "610m",
                        "alertname": "AgedchipLiveAccuracyLow",
                        "exp_alerts": [{"exp_labels": {"severity": "warning", "chip": "c1"}}],
                    },
                ],
            },
        ],
    }


def test_promtool_rule_unit_tests(binaries, tmp_path) -> None:
    """Thresholds and `for` durations (annotations are checked by `promtool check rules`; they are
    left out here because promtool compares rendered annotations literally)."""
    doc = yaml.safe_load(ALERTS.read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(yaml.safe_dump(_rule_unit_tests(rules), sort_keys=False))
    res = subprocess.run([binaries["promtool"], "test", "rules", str(tests)], capture_output=True, text=True)
    assert res.returncode == 0, f"promtool test rules:\n{res.stdout}{res.stderr}"


def test_boolify() -> None:
    assert boolify('a{x!="1"} > 0.5') == 'a{x!="1"} > bool 0.5'
    assert boolify("a < on (c) 0.9 * b") == "a < bool on (c) 0.9 * b"
    assert boolify("a < 1 and on (c) b >= 100") == "a < bool 1 and on (c) b >= bool 100"
    assert boolify("a == bool 0") == "a == bool 0"
