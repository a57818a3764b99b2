"""The server under a load test: the model it serves, starting and stopping ``python -m service``,
and the CPU it and everything else use (``/proc``)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS

REPO = Path(__file__).resolve().parent.parent
TMP = RESULTS / "tmp"
ZOO = REPO / "models" / "zoo"
MODEL = "cnn-hwa"


# ----------------------------------------------------------------------------------- the model
def standin_zoo(root: Path) -> Path:
    """A zoo with an untrained model of the cnn-hwa architecture (same shapes, same cost)."""
    import io
    import warnings

    import torch

    from models.zoo_models import build

    root.mkdir(parents=True, exist_ok=True)
    if (root / f"{MODEL}.onnx").exists():
        return root
    net = build("cnn", seed=0).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 8, 8),),
            buf,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    (root / f"{MODEL}.onnx").write_bytes(buf.getvalue())
    x = np.random.default_rng(0).random((450, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(root / f"{MODEL}.eval.npz", x=x, y=y.astype(np.int64))
    return root


# ----------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(zoo: Path, state: Path, extra_env: dict[str, str], repo: Path = REPO) -> tuple[subprocess.Popen, str]:
    """``python -m service`` from the source tree ``repo`` (default: this one), and its URL once ready."""
    import httpx

    port = free_port()
    pythonpath = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "AGEDCHIP_PORT": str(port),
        "AGEDCHIP_HOST": "127.0.0.1",
        "AGEDCHIP_STATE_DIR": str(state),
        "AGEDCHIP_ZOO_DIR": str(zoo),
        "AGEDCHIP_DEFAULT_MODEL": MODEL,
        "AGEDCHIP_LOG_LEVEL": "warning",
        **extra_env,
    }
    log = open(state.parent / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {(state.parent / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become ready in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_refreshed(url: str, timeout_s: float = 120) -> None:
    """Wait for the background refresher's one-off work (the accuracy schedule) to finish."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "agedchip_chip_eval_accuracy{" in httpx.get(url + "/metrics", timeout=10).text:
            return
        time.sleep(0.5)


def batch_counts(url: str) -> tuple[float, float]:
    """(dynamic batches run, requests merged into them) so far, from the server's /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    found = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^agedchip_batch_requests_(count|sum) (\S+)$", text, re.M)
    }
    return found.get("count", 0.0), found.get("sum", 0.0)


# ----------------------------------------------------------------------------------- CPU
class CpuMeter:
    """CPU seconds used by everything, by the server process and by this process's children
    (the load generator) between ``start`` and ``stop``: the rest is other tenants' load."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def _total_busy(self) -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / self.tick

    def _server(self) -> float:
        if self.server_pid is None:
            return 0.0
        with open(f"/proc/{self.server_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def _own(self) -> float:
        import resource

        ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime

    def snapshot(self) -> tuple[float, float, float, float]:
        try:
            return time.perf_counter(), self._total_busy(), self._server(), self._own()
        except OSError:
            return time.perf_counter(), 0.0, 0.0, 0.0

    def usage(self, a: tuple, b: tuple) -> dict:
        """Cores used on average: server, generator (+ this script), other processes."""
        dt = max(b[0] - a[0], 1e-9)
        server, own, total = (b[2] - a[2]) / dt, (b[3] - a[3]) / dt, (b[1] - a[1]) / dt
        return {"server_cores": server, "generator_cores": own, "other_cores": max(0.0, total - server - own)}


def cpu_busy(seconds: float = 2.0) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat): other tenants' load when idle."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except OSError:
        return None
    return 1 - (i1 - i0) / max(t1 - t0, 1)
