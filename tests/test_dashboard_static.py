"""Static checks of the Prometheus and Grafana configuration (no Docker engine needed): the scrape
config agrees with docker-compose.yml; Grafana's datasource uid and URL, dashboard provider path,
the dashboard's panels, queries and variables; every metric and label the dashboard and the alert
rules use is in docs/metrics.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from tests.docker_config import compose_doc
from tests.dockerfile import REPO

PROM_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"


ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"


GRAFANA = REPO / "docker" / "grafana"


DASHBOARD = GRAFANA / "dashboards" / "agedchip.json"


METRICS_DOC = REPO / "docs" / "metrics.md"


#: Labels Prometheus itself adds (target labels from prometheus.yml, `le` of histogram buckets).
TARGET_LABELS = {"job", "instance", "service", "le", "__name__"}


#: Metrics the configuration may use besides the contract's.
NON_CONTRACT_METRICS = {"up"}


# ------------------------------------------------------------------------------ metrics contract
def metrics_contract() -> dict[str, set[str]]:
    """metric name → labels, from the table in docs/metrics.md."""
    out: dict[str, set[str]] = {}
    for line in METRICS_DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(agedchip_[a-z0-9_]+)`\s*\|\s*(\w+)[^|]*\|\s*([^|]*)\|", line)
        if m:
            labels = {x.strip() for x in m.group(3).split(",") if x.strip() and x.strip() != "—"}
            out[m.group(1)] = labels
    return out


def _series_names(contract: dict[str, set[str]]) -> dict[str, set[str]]:
    """Exposed series names → labels (histograms add _bucket/_sum/_count)."""
    out = dict(contract)
    for name, labels in contract.items():
        if name.endswith("_seconds") and "duration" in name:
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


PROMQL_KEYWORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "histogram_quantile",
    "vector",
    "scalar",
    "label_values",
    "offset",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "abs",
    "time",
    "delta",
    "deriv",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "count_over_time",
    "absent",
    "sort",
    "sort_desc",
    "inf",
    "nan",
    "humanize",
    "stddev",
    "quantile",
    "label_replace",
}


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) for every ``name{...}`` or bare metric name in a PromQL expr."""
    out = []
    # blank out string contents (same length, so offsets agree) so they never look like names
    cleaned = re.sub(r'"[^"]*"', lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expr)
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", cleaned):
        name = m.group(1)
        if name in PROMQL_KEYWORDS or not (name.startswith("agedchip_") or name in NON_CONTRACT_METRICS):
            continue
        # labels from the original text at the same place
        orig = expr[m.start() :]
        labels: dict[str, str] = {}
        bm = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*\s*\{([^}]*)\}", orig)
        if bm:
            for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', bm.group(1)):
                labels[lm.group(1)] = lm.group(3)
        out.append((name, labels))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in re.finditer(r"\b(?:by|on|ignoring|without|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


def dashboard_targets(dash: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard (rows' nested panels included)."""
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((p, t))
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _mounts(service: dict) -> dict[str, Path]:
    """container path → repository path of a service's bind mounts."""
    out = {}
    for vol in service.get("volumes", []):
        src, dst, *_ = vol.split(":")
        if src.startswith("."):
            out[dst] = (REPO / src).resolve()
    return out


def _container_to_repo(mounts: dict[str, Path], container_path: str) -> Path | None:
    for dst, src in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if container_path == dst or container_path.startswith(dst.rstrip("/") + "/"):
            return src / os.path.relpath(container_path, dst)
    return None


def test_prometheus_config_agrees_with_compose():
    doc = compose_doc()
    prom = doc["services"]["prometheus"]
    mounts = _mounts(prom)
    cmd = prom["command"]
    cfg_path = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.file="))
    assert _container_to_repo(mounts, cfg_path) == PROM_CONFIG.resolve()
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    for rule_file in cfg["rule_files"]:
        in_container = rule_file if rule_file.startswith("/") else str(Path(cfg_path).parent / rule_file)
        repo_path = _container_to_repo(mounts, in_container)
        assert repo_path is not None and repo_path.is_file(), f"rule file {rule_file} is not mounted from the repo"
    assert (PROM_CONFIG.parent / cfg["rule_files"][0]).resolve() == ALERTS.resolve()
    data = next(a.split("=", 1)[1] for a in cmd if a.startswith("--storage.tsdb.path="))
    assert f"prometheus-data:{data}" in prom["volumes"]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "agedchip")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = str(doc["services"]["agedchip"]["environment"]["AGEDCHIP_PORT"])
    assert targets == [f"agedchip:{port}"], "Prometheus scrapes the compose service by name"
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisioning_agrees_with_compose_and_dashboard():
    doc = compose_doc()
    graf = doc["services"]["grafana"]
    mounts = _mounts(graf)
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == (GRAFANA / "provisioning" / kind).resolve()
    assert "grafana-data:/var/lib/grafana" in graf["volumes"]
    env = graf["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" in env
    home = _container_to_repo(mounts, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == DASHBOARD.resolve()

    ds_files = sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))
    assert ds_files
    datasources = [d for f in ds_files for d in yaml.safe_load(f.read_text())["datasources"]]
    prom_ds = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prom_ds) == 1 and prom_ds[0].get("isDefault")
    prom_port = next(int(p.rsplit(":", 1)[1]) for p in doc["services"]["prometheus"]["ports"])
    assert prom_ds[0]["url"] == f"http://prometheus:{prom_port}"

    providers = [
        p
        for f in sorted((GRAFANA / "provisioning" / "dashboards").glob("*.yml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers
    for p in providers:
        repo_dir = _container_to_repo(mounts, p["options"]["path"])
        assert repo_dir is not None and repo_dir.is_dir(), f"provider path {p['options']['path']} is not mounted"
        assert (repo_dir / DASHBOARD.name).is_file()

    dash = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for _, t in dashboard_targets(dash)} | {
        p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p
    }
    uids |= {v["datasource"]["uid"] for v in dash["templating"]["list"] if "datasource" in v}
    assert uids == {prom_ds[0]["uid"]}, "every query uses the provisioned datasource (by uid)"


# ================================================================================ dashboard
REQUIRED_PANEL_METRICS = {
    "accuracy vs chip age per chip": "agedchip_chip_eval_accuracy",
    "live accuracy": "agedchip_correct_samples_total",
    "GDC alpha per layer": "agedchip_chip_gdc_alpha",
    "weight error with and without GDC": "agedchip_chip_weight_error",
    "stuck devices": "agedchip_chip_stuck_devices",
    "requests/s": "agedchip_http_requests_total",
    "latency": "agedchip_http_request_duration_seconds_bucket",
    "fleet yield vs age": "agedchip_fleet_yield_ratio",
    "fleet time to SLO breach": "agedchip_fleet_slo_breach_age_seconds",
}


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "agedchip" and dash["title"]
    assert isinstance(dash.get("schemaVersion"), int)
    ids = [p["id"] for panel in dash["panels"] for p in [panel, *panel.get("panels", [])]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    # the grid: 24 columns, no two panels overlap
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{p['title']}: gridPos {g}"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {p['title']!r} overlap"
                cells[(x, y)] = p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"chip", "fleet"} <= variables
    for panel, target in dashboard_targets(dash):
        assert target.get("expr"), f"{panel['title']}: empty query"
        for var in re.findall(r"\$\{?([a-zA-Z_]\w*)", target["expr"]):
            assert var in variables or var.startswith("__"), f"{panel['title']}: undefined variable ${var}"
    for p in dash["panels"]:
        if p["type"] != "row":
            refs = [t["refId"] for t in p["targets"]]
            assert p["targets"] and len(refs) == len(set(refs)), f"{p['title']}: targets and unique refIds"
            assert p.get("description"), f"{p['title']}: describe the panel"
    used = {name for _, t in dashboard_targets(dash) for name, _ in selectors(t["expr"])}
    for what, metric in REQUIRED_PANEL_METRICS.items():
        assert metric in used, f"the dashboard needs a panel for {what} ({metric})"
    exprs = " ".join(t["expr"] for _, t in dashboard_targets(dash))
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs, "p50 and p99 latency"
    assert 'status="5xx"' in exprs, "error rate panel"
    # accuracy vs age covers the whole evaluation schedule, in order
    ages = [
        lbl.get("age")
        for _, t in dashboard_targets(dash)
        for n, lbl in selectors(t["expr"])
        if n == "agedchip_chip_eval_accuracy"
    ]
    assert ages == ["1s", "1h", "1d", "1w", "30d", "1y", "10y"]


def test_dashboard_fleet_panels():
    """Every fleet series is filtered by the Fleet selector; yield shows GDC on and off, breach ages are
    seconds; the selector lists the fleets a metric of the contract carries."""
    dash = json.loads(DASHBOARD.read_text())
    fleet_sels = [
        (p, name, labels)
        for p, t in dashboard_targets(dash)
        for name, labels in selectors(t["expr"])
        if name.startswith("agedchip_fleet_")
    ]
    assert len(fleet_sels) >= 3
    for panel, name, labels in fleet_sels:
        assert labels.get("fleet") == "$fleet", f"{panel['title']}: {name} not filtered by $fleet"
    gdc = {labels.get("gdc") for _, name, labels in fleet_sels if name == "agedchip_fleet_yield_ratio"}
    assert {"on", "off"} <= gdc
    units = {"agedchip_fleet_yield_ratio": "percentunit", "agedchip_fleet_slo_breach_age_seconds": "s"}
    for panel, name, _ in fleet_sels:
        if name in units:  # agedchip_fleet_eval_age_seconds only orders the yield bars
            assert panel["fieldConfig"]["defaults"]["unit"] == units[name], f"{panel['title']}: unit of {name}"
    var = next(v for v in dash["templating"]["list"] if v["name"] == "fleet")
    assert re.fullmatch(r"label_values\((agedchip_fleet_\w+),\s*fleet\)", var["definition"]), var["definition"]
    assert "fleet" in metrics_contract()[re.search(r"agedchip_fleet_\w+", var["definition"]).group(0)]


#: A yield query: the seconds-valued age gauge, sorted, on the left of a join on (fleet, age).
YIELD_ORDERED = re.compile(
    r"sort\(agedchip_fleet_eval_age_seconds\{([^}]*)\}\) \* 0 \+ on\(fleet, age\) agedchip_fleet_yield_ratio\{([^}]*)\}"
)


def test_fleet_yield_bars_are_ordered_by_age_in_seconds():
    """Prometheus returns a plain selector's series sorted by their label values as text, so the
    bars of ``agedchip_fleet_yield_ratio{…}`` alone would read 10y, 1d, 1h, 1y, 30d, 90s. The
    panel's order must come from ``sort()`` of the age in seconds: an instant query keeps the
    order of sort(), and a join the order of its left side (tests/test_prometheus.py checks it
    on a real Prometheus)."""
    dash = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dash["panels"] if p["title"] == "Fleet yield vs age")
    assert panel["type"] == "bargauge" and len(panel["targets"]) == 2
    for t in panel["targets"]:
        m = YIELD_ORDERED.fullmatch(t["expr"])
        assert m, f"yield query not ordered by age in seconds: {t['expr']}"
        assert t.get("instant") is True and t.get("range") is False, "sort() orders instant queries only"
        assert 'fleet=~"$fleet"' in m.group(1) and 'fleet=~"$fleet"' in m.group(2)


def test_dashboard_and_alerts_use_only_contract_metrics_and_labels():
    contract = metrics_contract()
    assert len(contract) >= 17, f"docs/metrics.md table not parsed: {sorted(contract)}"
    series = _series_names(contract)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [(f"panel {p['title']!r}", t["expr"]) for p, t in dashboard_targets(dash)]
    exprs += [(f"variable {v['name']}", v["definition"]) for v in dash["templating"]["list"] if v.get("definition")]
    exprs += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    schedule = {"1s", "1h", "1d", "1w", "30d", "1y", "10y"}
    for where, expr in exprs:
        sels = selectors(expr)
        assert sels, f"{where}: no metric in {expr!r}"
        for name, labels in sels:
            if name in NON_CONTRACT_METRICS:
                continue
            assert name in series, f"{where}: {name} is not in docs/metrics.md"
            allowed = series[name] | TARGET_LABELS
            for label, value in labels.items():
                assert label in allowed, f"{where}: {name} has no label {label!r} (contract: {sorted(series[name])})"
                if label == "age":
                    assert value in schedule, f"{where}: age {value!r} is not on the evaluation schedule"
                if label == "gdc":
                    assert value in ("on", "off")
                if label == "status":
                    assert re.fullmatch(r"[1-5]xx(\|[1-5]xx)*", value), f"{where}: status is a code class"
        all_labels = set().union(*(series.get(n, set()) for n, _ in sels)) | TARGET_LABELS
        for label in grouping_labels(expr):
            assert label in all_labels, f"{where}: grouping label {label!r} is on none of its metrics"


def test_alert_rules_shape():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"].get("summary") and r["annotations"].get("description"), r["alert"]
    exprs = " ".join(r["expr"] for r in rules)
    for needed in ("agedchip_chip_current_accuracy", 'status="5xx"', "histogram_quantile(0.99"):
        assert needed in exprs, f"an alert on {needed}"
