"""The worked scale-out examples of docs/scale-out.md, checked without a cluster: the KServe
manifests against the fields KServe and Kubernetes require, and the Ray Serve application
built (``.bind()``) and dry-run with ``serve build``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
KSERVE = EXAMPLES / "kserve-inferenceservice.yaml"
#: Settings the examples may name although the service does not have them yet (intended interface).
INTENDED_SETTINGS: set[str] = set()

DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "pattern": DNS1035, "maxLength": 63},
        "image": {"type": "string", "minLength": 1},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {"containerPort": {"type": "integer", "minimum": 1, "maximum": 65535}},
            },
        },
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}},
    },
}
#: What the InferenceService CRD (serving.kserve.io/v1beta1) requires of a custom predictor:
#: a DNS-1035 name (KServe rejects others: it becomes a Service host name), a predictor with an
#: inline pod spec whose containers have name and image, replica bounds ≥ 0.
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS1035, "maxLength": 63}},
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["containers"],
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                        "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                    },
                }
            },
        },
    },
}
DEPLOYMENT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "apps/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "template"],
            "properties": {
                "template": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["containers"],
                            "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER}},
                        }
                    },
                }
            },
        },
    },
}


def docs_by_kind():
    docs = [d for d in yaml.safe_load_all(KSERVE.read_text()) if d]
    out = {}
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), d
        out.setdefault(d["kind"], []).append(d)
    return out


def service_source() -> str:
    return "\n".join(p.read_text() for p in (REPO / "service").rglob("*.py"))


def env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_kserve_manifests_have_what_kserve_and_kubernetes_require():
    kinds = docs_by_kind()
    isvc = kinds["InferenceService"][0]
    jsonschema.validate(isvc, INFERENCE_SERVICE)
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    (server,) = predictor["containers"]
    assert server["name"] == "kserve-container"  # KServe's name for a custom predictor's server
    writer = kinds["Deployment"][0]
    jsonschema.validate(writer, DEPLOYMENT)
    assert writer["spec"]["selector"]["matchLabels"].items() <= writer["spec"]["template"]["metadata"]["labels"].items()


def test_kserve_example_wires_one_writer_and_read_only_replicas():
    kinds = docs_by_kind()
    isvc, writer = kinds["InferenceService"][0], kinds["Deployment"][0]
    (pvc,) = kinds["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every pod mounts the one store
    # one writer, never two at once (rolling updates would overlap the old and the new pod)
    assert writer["spec"]["replicas"] == 1 and writer["spec"]["strategy"]["type"] == "Recreate"
    wpod = writer["spec"]["template"]["spec"]
    rpod = isvc["spec"]["predictor"]
    claim = pvc["metadata"]["name"]
    for pod, read_only in ((wpod, False), (rpod, True)):
        (vol,) = [v for v in pod["volumes"] if v["persistentVolumeClaim"]["claimName"] == claim]
        (c,) = pod["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
        assert bool(mount.get("readOnly")) is read_only
        assert bool(vol["persistentVolumeClaim"].get("readOnly")) is read_only
        e = env(c)
        assert e["AGEDCHIP_STATE_DIR"] == mount["mountPath"]
        # the port the server listens on is the one declared and probed
        port = int(e["AGEDCHIP_PORT"])
        assert [p["containerPort"] for p in c["ports"]] == [port]
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] == port
    assert env(rpod["containers"][0]).get("AGEDCHIP_READ_ONLY") == "true"
    service = kinds["Service"][0]
    assert service["spec"]["selector"] == writer["spec"]["template"]["metadata"]["labels"]


def test_kserve_example_names_real_routes_and_settings(tmp_path):
    from service.app import create_app
    from service.settings import Settings

    routes = {getattr(r, "path", None) for r in create_app(Settings(state_dir=tmp_path / "s")).routes}
    src = service_source()
    kinds = docs_by_kind()
    containers = (
        kinds["InferenceService"][0]["spec"]["predictor"]["containers"]
        + kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    )
    for c in containers:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in routes, c[probe]
        for name in env(c):
            if name in INTENDED_SETTINGS:
                continue
            field = name.removeprefix("AGEDCHIP_").lower()
            assert re.search(rf"^\s+{field}\s*:", src, re.M), f"{name} is not a service setting"


# ----------------------------------------------------------------------------- Ray Serve
@pytest.mark.slow  # runs `serve build` in a subprocess
def test_ray_serve_app_builds(tmp_path):
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is optional (requirements/ray.txt)")
    from docs.examples import ray_serve_app as mod

    assert isinstance(mod.app, serve.Application)
    assert mod.ChipServer.num_replicas == 2
    exe = shutil.which("serve", path=str(Path(sys.executable).parent))
    assert exe, "the serve command comes with ray[serve]"
    out = tmp_path / "serve.yaml"
    proc = subprocess.run(
        [exe, "build", "--app-dir", str(REPO), "docs.examples.ray_serve_app:app", "-o", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (application,) = yaml.safe_load(out.read_text())["applications"]
    assert application["import_path"] == "docs.examples.ray_serve_app:app"
    (dep,) = application["deployments"]
    assert dep["name"] == "ChipServer" and dep["num_replicas"] == 2 and dep["ray_actor_options"]["num_cpus"] == 1


def test_ray_serve_app_serves_a_chip_of_a_read_only_store(tmp_path):
    pytest.importorskip("ray.serve", reason="Ray Serve is optional (requirements/ray.txt)")
    from chipsim import ChipStore, get_profile
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime
    from docs.examples import ray_serve_app as mod

    store = ChipStore(tmp_path / "state")
    chip = program_onnx((REPO / "models/zoo/mlp-hwa.onnx").read_bytes(), get_profile("pcm"), 3, chip_id="c1")
    store.save(chip)
    runtime = mod.load_runtime(mod.open_chip_store(store.root, read_only=True), "c1")
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    res = mod.infer(runtime, "c1", {"inputs": x.tolist(), "age_s": 86400, "seed": 4})
    want = ChipRuntime(chip, threads=1).run(x, 86400.0, read_seed=0, gdc=True, seed=4)[0]
    assert res["chip_id"] == "c1" and np.array_equal(np.asarray(res["outputs"][0], np.float32), want)
