"""A real Prometheus (the `prometheus` binary, Debian's 2.42 here) against a real service.

The service (`python -m service`) runs on a free loopback port with a temporary chip store and
a 1 s gauge refresh; it gets labelled and unlabelled inferences, a bad request and a few reads.
Prometheus runs on 127.0.0.1 with docker/prometheus/prometheus.yml, only its targets rewritten
to the test ports and its intervals shortened to 1 s. After it has scraped, every PromQL query
of the Grafana dashboard and every alert rule is evaluated through Prometheus' HTTP API: no
errors, and data for every dashboard query. `promtool` checks the configuration, the rules and
the service's /metrics output (test_prometheus_rules unit-tests the alert thresholds).

Install the binaries with `bash docker/ci/install-prometheus.sh` (what `make test` runs); if
they are still missing, these tests skip with the reason printed (the ``binaries`` fixture in
tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from tests.prometheus_helpers import ALERTS, alert_rules, boolify
from tests.service_process import REPO, free_port, http, run_service, sample_batch, stop, wait_until, zoo_dir

pytestmark = pytest.mark.slow


PROM_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"


DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "agedchip.json"


#: What Grafana puts in place of its variables here: All chips, and the rate window it would
#: pick for a 1 s scrape interval (4 × scrape interval, at least 1m with the 15s timeInterval).
GRAFANA_VARS = {"chip": ".*", "fleet": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


# ------------------------------------------------------------------------------ PromQL helpers
def substitute(expr: str, values: dict[str, str] = GRAFANA_VARS) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"no test value for Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


class PromAPI:
    def __init__(self, base: str):
        self.base = base

    def get(self, path: str, **params) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}" if params else f"{self.base}{path}"
        status, body = http("GET", url)
        doc = json.loads(body)
        assert status == 200 and doc.get("status") == "success", f"{path} {params}: HTTP {status} {doc}"
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def query_range(self, expr: str, seconds: float = 30, step: str = "1s") -> list[dict]:
        end = time.time()
        data = self.get("/api/v1/query_range", query=expr, start=f"{end - seconds:.3f}", end=f"{end:.3f}", step=step)
        assert data["resultType"] == "matrix", data
        return data["result"]


def finite_values(result: list[dict]) -> list[float]:
    vals = []
    for r in result:
        for _, v in [r["value"]] if "value" in r else r["values"]:
            f = float(v)
            if math.isfinite(f):
                vals.append(f)
    return vals


def dashboard_queries() -> list[tuple[str, str, dict]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((p["title"], t["refId"], t))
    return out


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    zoo = zoo_dir()
    env = {
        "AGEDCHIP_ZOO_DIR": str(zoo),
        "AGEDCHIP_REFRESH_SECONDS": "1",
        "AGEDCHIP_REFRESH_EVAL_SAMPLES": "128",
        "AGEDCHIP_SCHEDULE_READOUTS": "1",
    }
    with run_service(sys.executable, REPO, tmp / "state", tmp / "service.log", env) as (base, proc):
        yield {"base": base, "port": int(base.rsplit(":", 1)[1]), "proc": proc, "log": tmp / "service.log", "zoo": zoo}


def traffic(base: str, zoo: Path) -> None:
    """Labelled and unlabelled inferences, a bad request, reads: something for every panel."""
    x, labels = sample_batch(base, "default", 16, zoo)
    for age in ("1d", "1d", "1y"):  # the repeated age hits the read-out cache
        body: dict = {"chip_id": "default", "inputs": x, "age": age}
        if labels is not None:
            body["labels"] = labels
        status, resp = http("POST", f"{base}/infer", body)
        assert status == 200, resp
    status, resp = http("POST", f"{base}/infer", {"chip_id": "default", "inputs": x})  # wall-clock age
    assert status == 200, resp
    status, _ = http("POST", f"{base}/infer", {"chip_id": "default", "inputs": [[1.0, 2.0]], "age": "-1"})
    assert 400 <= status < 500, f"a bad request must be a 4xx, got {status}"
    for path in ("/chips", "/chips/default", "/chips/default/drift?age=1h", "/healthz"):
        assert http("GET", base + path)[0] == 200, path
    # an evaluation with an SLO no chip meets (twice the FP model's accuracy): a breach is predicted (at
    # the first age), so the breach gauge, its panel and its alert have an input series
    status, resp = http(
        "POST",
        f"{base}/chips/default/evaluate",
        {
            "ages": ["1h", "1d"],
            "readouts": 1,
            "samples": 64,
            "slo": {"metric": "normalised_accuracy", "threshold": 2.0},
        },
    )
    assert status == 200, resp


def _job(base: str, status: int, body: bytes) -> dict:
    """Wait for the job a 202 started; its final view."""
    assert status == 202, body
    job_id = json.loads(body)["job_id"]

    def done():
        view = json.loads(http("GET", f"{base}/jobs/{job_id}")[1])
        return view if view["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, 300, f"job {job_id}", interval=0.5)


def fleet_traffic(base: str) -> None:
    """A fleet of 2 chips evaluated against an SLO no chip meets (twice the FP accuracy), so the yield
    gauges exist and every breach-age percentile is set (breached at the first age): data for the fleet panels."""
    status, body = http("POST", f"{base}/fleets", {"fleet_id": "fl", "model": "mlp-hwa", "n_chips": 2, "seed": 1})
    assert _job(base, status, body)["status"] == "succeeded"
    slo = {"metric": "normalised_accuracy", "threshold": 2.0}
    status, body = http(
        "POST", f"{base}/fleets/fl/evaluate", {"ages": ["1h", "1d"], "readouts": 1, "samples": 64, "slo": slo}
    )
    job = _job(base, status, body)
    assert job["status"] == "succeeded", job


@pytest.fixture(scope="module")
def metrics_text(service) -> str:
    """/metrics once the background refresh has filled the chip gauges, and a fleet was evaluated."""
    base = service["base"]
    traffic(base, service["zoo"])
    fleet_traffic(base)
    needed = [
        "agedchip_fleet_yield_ratio{",
        "agedchip_fleet_slo_breach_age_seconds{",
        "agedchip_chip_eval_accuracy{",
        "agedchip_chip_current_accuracy{",
        "agedchip_chip_gdc_alpha{",
        "agedchip_chip_weight_error{",
        "agedchip_correct_samples_total{",
        "agedchip_chip_slo_breach_in_seconds{",
    ]

    def ready():
        status, body = http("GET", base + "/metrics")
        text = body.decode()
        return text if status == 200 and all(n in text for n in needed) else None

    return wait_until(
        ready, 180, "the chip gauges on /metrics (background refresh)", service["proc"], service["log"], interval=0.5
    )


def test_config_from_the_repo(binaries, tmp_path) -> None:
    """What the Prometheus container gets: its config with the rule file beside it."""
    res = subprocess.run([binaries["promtool"], "check", "config", str(PROM_CONFIG)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout + res.stderr
    res = subprocess.run([binaries["promtool"], "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(alert_rules())} rules found" in res.stdout + res.stderr


def test_promtool_check_metrics(binaries, metrics_text) -> None:
    res = subprocess.run([binaries["promtool"], "check", "metrics"], input=metrics_text, capture_output=True, text=True)
    assert res.returncode == 0, f"promtool check metrics:\n{res.stdout}{res.stderr}"


def _test_config(service_port: int, prom_port: int) -> dict:
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str((PROM_CONFIG.parent / f).resolve()) for f in cfg["rule_files"]]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"agedchip", "prometheus"}, "update this test's target rewrite for new jobs"
    for name, port in (("agedchip", service_port), ("prometheus", prom_port)):
        for sc in jobs[name]["static_configs"]:
            sc["targets"] = [f"127.0.0.1:{port}"]
    return cfg


@pytest.fixture(scope="module")
def prometheus(binaries, service, metrics_text, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom")
    port = free_port()
    cfg_path = tmp / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(_test_config(service["port"], port), sort_keys=False))
    res = subprocess.run([binaries["promtool"], "check", "config", str(cfg_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binaries["prometheus"],
                f"--config.file={cfg_path}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    api = PromAPI(base)
    try:
        wait_until(lambda: http("GET", base + "/-/ready", timeout=5)[0] == 200, 60, "Prometheus /-/ready", proc, log)

        def scraped():
            res = api.query('up{job="agedchip"}')
            return res and res[0]["value"][1] == "1"

        wait_until(scraped, 60, "a successful scrape of the service", proc, log)
        # more traffic after the first scrape, so every rate() in the window sees an increase
        traffic(service["base"], service["zoo"])
        status, body = http("GET", service["base"] + "/metrics")
        want = float(re.search(r'^agedchip_inferences_total\{chip="default"\} (\S+)$', body.decode(), re.M).group(1))

        def caught_up():
            res = api.query('agedchip_inferences_total{chip="default"}')
            return res and float(res[0]["value"][1]) >= want

        wait_until(caught_up, 60, "Prometheus to scrape the second round of traffic", proc, log)
        time.sleep(2.5)  # a couple more scrapes and rule evaluations
        yield {"api": api, "base": base, "proc": proc, "log": log}
    finally:
        stop(proc)


# ------------------------------------------------------------------------------ the tests
def test_targets_up(prometheus) -> None:
    targets = prometheus["api"].get("/api/v1/targets")["activeTargets"]
    health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
    assert health == {"agedchip": ("up", ""), "prometheus": ("up", "")}, health


@pytest.mark.parametrize("title,ref,target", dashboard_queries(), ids=lambda v: v if isinstance(v, str) else "")
def test_dashboard_query(prometheus, title: str, ref: str, target: dict) -> None:
    """Every dashboard query evaluates without error and has data (a finite value) here."""
    api: PromAPI = prometheus["api"]
    expr = substitute(target["expr"])
    result = api.query(expr)
    assert result, f"panel {title!r} query {ref} returned no series: {expr}"
    assert finite_values(result), f"panel {title!r} query {ref} has no finite value: {expr} -> {result}"
    if target.get("range", True) and not target.get("instant"):
        series = api.query_range(expr)
        assert series and finite_values(series), f"panel {title!r} query {ref}: empty range query {expr}"
    # a single chip (and fleet) selected instead of All
    one = {**GRAFANA_VARS, "chip": "default", "fleet": "fl"}
    assert api.query(substitute(target["expr"], one)), f"{title} with chip=default, fleet=fl"


def test_fleet_yield_bars_in_age_order(prometheus) -> None:
    """The yield panel's queries return the fleet's ages youngest first (fleet_traffic evaluates
    1h and 1d), not in the text order of their labels (1d before 1h), which a plain selector gets."""
    api: PromAPI = prometheus["api"]
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == "Fleet yield vs age")
    for t in panel["targets"]:
        assert [r["metric"]["age"] for r in api.query(substitute(t["expr"]))] == ["1h", "1d"], t["expr"]
    plain = api.query('agedchip_fleet_yield_ratio{gdc="on"}')
    assert [r["metric"]["age"] for r in plain] == ["1d", "1h"], "the text order this panel must not show"


@pytest.mark.parametrize("name,value", [("chip", "default"), ("fleet", "fl")])
def test_dashboard_variable(prometheus, name: str, value: str) -> None:
    dash = json.loads(DASHBOARD.read_text())
    var = next(v for v in dash["templating"]["list"] if v["name"] == name)
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
    assert m, var["definition"]
    data = prometheus["api"].get("/api/v1/series", **{"match[]": m.group(1)})
    assert value in {s[m.group(2)] for s in data}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_rule_evaluates(prometheus, rule: dict) -> None:
    """Each alert expression evaluates without error, and its inputs exist (the `bool` form of
    every comparison returns series even though nothing is firing)."""
    api: PromAPI = prometheus["api"]
    api.query(rule["expr"])
    as_bool = boolify(rule["expr"])
    result = api.query(as_bool)
    assert result, f"alert {rule['alert']}: no input series for {as_bool}"


def test_alert_rules_loaded_and_healthy(prometheus) -> None:
    api: PromAPI = prometheus["api"]

    def evaluated():
        groups = api.get("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(
            r.get("lastEvaluation", "").startswith("2") and not r["lastEvaluation"].startswith("0001") for r in rules
        )
        return rules if done else None

    rules = wait_until(evaluated, 30, "every rule to be evaluated once", prometheus["proc"], prometheus["log"])
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), f"{r['name']}: {r['health']} {r.get('lastError')}"
        # every rule has a `for` of at least a minute: nothing can fire within this test
        assert r["state"] in ("inactive", "pending"), f"{r['name']} is {r['state']}"
        if r["name"] in ("AgedchipDown", "AgedchipHighErrorRate", "AgedchipCorruptChips"):
            assert r["state"] == "inactive", f"{r['name']} is {r['state']} against a healthy test service"
