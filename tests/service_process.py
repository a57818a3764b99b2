"""The service as a subprocess, for the system tests: start ``python -m service`` on a free
loopback port, wait for it, talk to it over plain HTTP, stop it. Test support code, not a test
module (shared by test_prometheus and test_serving_env)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: object | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"} if data is not None else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(
    check,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.25,
):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}\n{_tail(log) if log else ''}")
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as err:
            last = err
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n{_tail(log) if log else ''}"
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def run_service(
    python: str,
    cwd: Path,
    state_dir: Path,
    log: Path,
    env_extra: dict[str, str] | None = None,
    startup_timeout: float = 180.0,
):
    """``python -m service`` on a free loopback port; yields its base URL once /readyz answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGEDCHIP_") or k == "AGEDCHIP_ZOO_DIR"}
    env.update(
        {
            "AGEDCHIP_HOST": "127.0.0.1",
            "AGEDCHIP_PORT": str(port),
            "AGEDCHIP_STATE_DIR": str(state_dir),
            "AGEDCHIP_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_extra or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "-m", "service"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: http("GET", base + "/readyz", timeout=5)[0] == 200,
            startup_timeout,
            "the service's /readyz",
            proc,
            log,
        )
        yield base, proc
    finally:
        stop(proc)


def zoo_dir() -> Path:
    return Path(os.environ.get("AGEDCHIP_ZOO_DIR") or REPO / "models" / "zoo")


def sample_batch(base: str, chip: str, n: int, zoo: Path) -> tuple[object, list[int] | None]:
    """Inputs (nested list, or {name: list}) and labels for ``n`` samples of a chip's model:
    the zoo's eval set when it has one, else zeros of the declared shape."""
    status, body = http("GET", f"{base}/chips/{chip}")
    assert status == 200, body
    summary = json.loads(body)
    inputs = summary["inputs"]
    npz_path = zoo / f"{summary['model']['name']}.eval.npz"
    if npz_path.is_file():
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        labels = arrays["y"][:n].astype(int).tolist() if summary.get("classifier") and "y" in arrays else None
        if len(inputs) == 1:
            x = arrays.get(inputs[0]["name"], arrays.get("x"))
            return x[:n].tolist(), labels
        return {i["name"]: arrays[i["name"]][:n].tolist() for i in inputs}, labels
    feeds = {i["name"]: np.zeros([n] + [d or 1 for d in i["shape"][1:]], dtype=np.float32).tolist() for i in inputs}
    labels = [0] * n if summary.get("classifier") else None
    return (next(iter(feeds.values())) if len(feeds) == 1 else feeds), labels
