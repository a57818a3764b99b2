"""The serving environment, built exactly as the Dockerfile builds it, runs the service.

- A fresh virtual environment from requirements/serve.txt, made by the script the Dockerfile's
  build stage runs (docker/ci/make-serve-venv.sh: wheels only, no cache). It is cached in
  .venv-serve/ (git-ignored) and rebuilt when the requirements, the script or the Python
  version change; the first build takes a minute or two, later runs reuse it.
- torch is not importable there, and `pip check` is clean.
- The image's /app is assembled from the Dockerfile's own COPY instructions (filtered through
  .dockerignore), its ENV applied (paths mapped to a temporary folder, the host to 127.0.0.1),
  and `python -m service` started from it, from the venv, in the image's WORKDIR. It answers
  /healthz, /readyz, an inference on the embedded default chip and /metrics.

Set AGEDCHIP_ZOO_DIR to use another zoo than models/zoo (development only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dockerfile import DOCKERFILE, REPO, copy_sources, dockerignored, env_of, parse_dockerfile, runtime_stage
from tests.service_process import http, run_service, sample_batch

pytestmark = pytest.mark.slow

SERVE_REQ = REPO / "requirements" / "serve.txt"
SCRIPT = REPO / "docker" / "ci" / "make-serve-venv.sh"
VENV = Path(os.environ.get("AGEDCHIP_SERVE_VENV") or REPO / ".venv-serve")
STAMP = VENV / ".agedchip-serve-stamp"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for path in (SERVE_REQ, SCRIPT):
        h.update(path.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def serve_venv() -> Path:
    """.venv-serve/, built by docker/ci/make-serve-venv.sh from requirements/serve.txt."""
    py = VENV / "bin" / "python"
    want = _fingerprint()
    if STAMP.is_file() and STAMP.read_text().strip() == want and py.exists():
        print(f"\nreusing {VENV} (requirements unchanged)")
        return VENV
    shutil.rmtree(VENV, ignore_errors=True)
    print(f"\nbuilding {VENV} with {SCRIPT.relative_to(REPO)} (as the Dockerfile does)")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    res = subprocess.run(
        ["sh", str(SCRIPT), str(VENV), str(SERVE_REQ)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"building the serving environment failed:\n{res.stdout[-4000:]}{res.stderr[-4000:]}"
    STAMP.write_text(want + "\n")
    return VENV


def _vpy(venv: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")},
    )


def test_no_torch_in_the_serving_env(serve_venv: Path) -> None:
    res = _vpy(serve_venv, "import torch")
    assert res.returncode != 0 and "No module named 'torch'" in res.stderr, "torch must not be installed"
    res = _vpy(
        serve_venv,
        "import numpy, onnx, onnxruntime, fastapi, uvicorn, pydantic, pydantic_settings, "
        "prometheus_client, multipart; print('ok')",
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(serve_venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(
        [str(serve_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    )
    installed = {p["name"].lower() for p in json.loads(res.stdout)}
    for heavy in ("torch", "scikit-learn", "matplotlib", "pytest", "tqdm"):
        assert heavy not in installed, f"{heavy} is not a serving dependency"
    # nothing beyond serve.txt and its dependencies: every top-level requirement is there
    wanted = {
        re.split(r"[<>=!~\[; ]", line.strip())[0].lower().replace("_", "-")
        for line in SERVE_REQ.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert wanted <= {n.replace("_", "-") for n in installed}, wanted - installed


#: Shared libraries of the runtime image's base (debian:bookworm-slim under python:3.11-slim):
#: glibc, libgcc/libstdc++ (apt needs them) and zlib (essential). Anything else a wheel links
#: against must come inside the wheel.
BASE_IMAGE_LIBS = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libz.so.1",
    "libcrypt.so.1",
    "libresolv.so.2",
}


def elf_needed(path: Path) -> list[str] | None:
    """DT_NEEDED entries of a 64-bit little-endian ELF file (None if it is not one)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for sh in sections:
        if sh[1] != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                start = strtab[4] + val
                out.append(data[start : data.index(b"\0", start)].decode())
    return out


def test_shared_libraries_come_with_the_wheels_or_the_base_image(serve_venv: Path) -> None:
    """The slim runtime image has no extra system packages: every native library the serving
    wheels load is bundled in the venv or part of the Debian slim base."""
    site = next((serve_venv / "lib").glob("python3*/site-packages"))
    objects = [p for p in site.rglob("*.so*") if p.is_file()]
    assert objects, "no native extensions found"
    bundled = {p.name for p in objects}
    missing: dict[str, set[str]] = {}
    for p in objects:
        for lib in elf_needed(p) or []:
            if lib not in bundled and lib not in BASE_IMAGE_LIBS and not lib.startswith("libpython3"):
                missing.setdefault(lib, set()).add(str(p.relative_to(site)))
    assert not missing, f"native libraries neither bundled nor in python:3.11-slim: {missing}"


def _assemble_image_app(dest_root: Path) -> tuple[Path, dict[str, str], list[str]]:
    """The runtime stage's files under ``dest_root`` (container paths mapped below it), its ENV
    and its CMD: what `docker build` would put in the image, without Docker."""
    stage = runtime_stage()
    workdir = [i.args for i in stage.all("WORKDIR")][-1]
    zoo_override = os.environ.get("AGEDCHIP_ZOO_DIR")

    def host(container_path: str) -> Path:
        return dest_root / container_path.lstrip("/")

    for ins in stage.all("COPY"):
        srcs, dst, flags = copy_sources(ins)
        if "from" in flags:
            continue  # the venv: .venv-serve stands in for /opt/venv
        for src in srcs:
            src_path = REPO / src
            if zoo_override and src.rstrip("/") == "models/zoo":
                src_path = Path(zoo_override)
            target = host(dst if dst.startswith("/") else f"{workdir}/{dst}")
            if src_path.is_dir():
                for f in src_path.rglob("*"):
                    rel_repo = (Path(src.rstrip("/")) / f.relative_to(src_path)).as_posix()
                    if f.is_file() and not dockerignored(rel_repo):
                        out = target / f.relative_to(src_path)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, out)
            else:
                out = target / src_path.name if dst.endswith("/") else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src_path, out)
    env = env_of(stage)
    cmd = json.loads(stage.all("CMD")[-1].args)
    return host(workdir), env, cmd


def test_service_runs_from_the_serving_env(serve_venv: Path, tmp_path: Path) -> None:
    root = tmp_path / "image"
    workdir, image_env, cmd = _assemble_image_app(root)
    assert cmd[0] == "python" and cmd[1:] == ["-m", "service"]
    assert not (workdir / "models" / "__init__.py").exists(), "training code stays out of the image"
    assert not list(workdir.rglob("*.pyc"))

    def mapped(value: str) -> str:
        value = value.replace("/opt/venv/bin", str(serve_venv / "bin")).replace("$PATH", os.environ.get("PATH", ""))
        return re.sub(r"(?<![\w.])(/app|/var/lib/agedchip)\b", lambda m: str(root / m.group(1).lstrip("/")), value)

    env = {k: mapped(v) for k, v in image_env.items()}
    state = Path(env["AGEDCHIP_STATE_DIR"])
    state.mkdir(parents=True)
    assert Path(env["AGEDCHIP_ZOO_DIR"]).is_dir() and Path(env["PYTHONPATH"]) == workdir
    env["AGEDCHIP_HOST"] = "127.0.0.1"  # loopback only on a test machine (0.0.0.0 in the image)
    env["VIRTUAL_ENV"] = str(serve_venv)
    env.pop("AGEDCHIP_PORT", None)  # run_service picks a free port
    python = str(serve_venv / "bin" / "python")
    before = sorted(p.relative_to(root) for p in root.rglob("*") if not p.is_relative_to(state))
    with run_service(python, workdir, state, tmp_path / "service.log", env) as (base, proc):
        status, body = http("GET", base + "/healthz")
        assert status == 200, body
        status, body = http("GET", base + "/chips/default")
        assert status == 200, f"the embedded default chip is not there: {body[:500]!r}"
        x, labels = sample_batch(base, "default", 4, Path(env["AGEDCHIP_ZOO_DIR"]))
        req = {"chip_id": "default", "inputs": x, "age": "1y", "seed": 1}
        if labels is not None:
            req["labels"] = labels
        status, body = http("POST", base + "/infer", req)
        assert status == 200, body
        resp = json.loads(body)
        assert resp["batch"] == 4 and resp["outputs"] and resp["age_s"] == 365 * 86400
        status, body = http("POST", base + "/infer", req)
        assert status == 200 and json.loads(body)["outputs"] == resp["outputs"], "same seed, same outputs"
        status, body = http("GET", base + "/metrics")
        assert status == 200 and b'agedchip_inferences_total{chip="default"} 2.0' in body
        # the process really runs from the assembled image folder and the serving venv
        res = subprocess.run(["cat", f"/proc/{proc.pid}/cmdline"], capture_output=True)
        assert res.stdout.split(b"\0")[0].decode() == python
        assert Path(os.readlink(f"/proc/{proc.pid}/cwd")) == workdir
    assert list(state.iterdir()), "the chip store is written to AGEDCHIP_STATE_DIR"
    after = sorted(p.relative_to(root) for p in root.rglob("*") if not p.is_relative_to(state))
    assert after == before, (
        "the service writes only to its state volume (/app belongs to root in the image): "
        f"new {sorted(set(after) - set(before))}"
    )


def test_dockerfile_and_test_use_one_install_script() -> None:
    """The Dockerfile's build stage runs the same script with the same requirements file."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    build = stages[0]
    copied = {Path(s).name: s for ins in build.all("COPY") for s in copy_sources(ins)[0]}
    assert copied.get("make-serve-venv.sh") == str(SCRIPT.relative_to(REPO))
    assert copied.get("serve.txt") == str(SERVE_REQ.relative_to(REPO))
    run = " ".join(i.args for i in build.all("RUN"))
    assert re.search(r"\bsh make-serve-venv\.sh /opt/venv serve\.txt\b", run), run
