"""End to end against a real server: ``python -m service`` (uvicorn) on 127.0.0.1 with a free
port and its state in a temporary folder. Program → infer at several ages → /metrics →
SIGKILL and restart → identical outputs for the same seed; programming does not block
inference; SIGKILL while a chip is being published leaves no half chip."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.onnx_models import single_layer
from tests.service_helpers import ZOO_MODEL, eval_npz, tiny_model, x_batch
from tests.service_process import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # real servers in subprocesses, SIGKILL and restarts


class Server:
    """``python -m service`` in a subprocess."""

    def __init__(self, state: Path, zoo: Path, **env: str):
        self.state, self.zoo, self.extra = state, zoo, env
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "AGEDCHIP_HOST": "127.0.0.1",
            "AGEDCHIP_PORT": str(self.port),
            "AGEDCHIP_STATE_DIR": str(self.state),
            "AGEDCHIP_ZOO_DIR": str(self.zoo),
            "AGEDCHIP_DEFAULT_MODEL": ZOO_MODEL,
            "AGEDCHIP_REFRESH_SECONDS": "1",
            "AGEDCHIP_SCHEDULE_READOUTS": "1",
            "AGEDCHIP_LOG_LEVEL": "warning",
            **self.extra,
        }
        self.log = open(self.state.parent / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become ready: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return (self.state.parent / f"server-{self.port}.log").read_text(errors="replace")[-3000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.log.close()


def test_program_infer_metrics_restart_same_outputs(tmp_path, zoo):
    state = tmp_path / "state"
    server = Server(state, zoo).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        assert [x["chip_id"] for x in c.get("/chips").json()["chips"]] == ["default"]
        model = tiny_model(seed=3)
        r = c.post(
            "/program",
            files={"model": ("mlp.onnx", model), "eval": ("e.npz", eval_npz(model, 64))},
            data={"chip_id": "e2e", "seed": "11", "profile": "pcm"},
        )
        assert r.status_code == 201, r.text
        x = x_batch(4)
        ages = ["1s", "1h", "30d", "10y"]
        outs = {}
        for age in ages:
            r = c.post("/infer", json={"chip_id": "e2e", "inputs": x, "age": age, "seed": 123})
            assert r.status_code == 200, r.text
            outs[age] = r.json()["outputs"]["y"]
        assert len({str(v) for v in outs.values()}) == len(ages)  # ageing changes the outputs
        # OIP binary on the same chip
        header = (
            b'{"inputs":[{"name":"x","shape":[4,1,8,8],"datatype":"FP32","parameters":{"binary_data_size":1024}}],'
            b'"parameters":{"age":"1h","seed":123,"binary_data_output":true}}'
        )
        r = c.post(
            "/v2/models/e2e/infer",
            content=header + np.asarray(x, "<f4").tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        n = int(r.headers["inference-header-content-length"])
        assert np.array_equal(np.frombuffer(r.content[n:], "<f4").reshape(4, 10), np.asarray(outs["1h"], np.float32))
        # the refresher runs every second: the chip's gauges appear
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            if 'agedchip_chip_eval_accuracy{age="10y",chip="e2e",gdc="off"}' in text:
                break
            time.sleep(0.2)
        assert 'agedchip_inferences_total{chip="e2e"} 5.0' in text
        assert 'agedchip_inference_samples_total{chip="e2e"} 20.0' in text
        assert 'agedchip_chip_eval_accuracy{age="10y",chip="e2e",gdc="off"}' in text, server.logs()
        assert 'agedchip_chip_gdc_alpha{chip="default",layer="fc1"}' in text
        assert 'agedchip_http_requests_total{method="POST",route="/infer",status="2xx"} 4.0' in text
        default_at = c.get("/chips/default").json()["programmed_at"]
    finally:
        server.kill(signal.SIGKILL)
    assert not any((state / "tmp").iterdir())
    server = Server(state, zoo).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=30)
        chips = {x["chip_id"]: x for x in c.get("/chips").json()["chips"]}
        assert set(chips) == {"default", "e2e"} and all(x["state"] == "ready" for x in chips.values())
        assert chips["default"]["programmed_at"] == default_at  # reloaded, not re-programmed
        for age in ages:
            r = c.post("/infer", json={"chip_id": "e2e", "inputs": x, "age": age, "seed": 123})
            assert r.json()["outputs"]["y"] == outs[age]
    finally:
        server.kill(signal.SIGTERM)


def test_programming_does_not_block_inference_and_publishes_whole_chips(tmp_path, zoo):
    big, _, _ = single_layer("matmul", 1024, 2048)
    server = Server(tmp_path / "state", zoo).start()
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        result: dict = {}

        def program() -> None:
            t0 = time.perf_counter()
            result["resp"] = httpx.post(
                server.url + "/program", files={"model": ("big.onnx", big)}, data={"chip_id": "big"}, timeout=120
            )
            result["seconds"] = time.perf_counter() - t0

        t = threading.Thread(target=program)
        t.start()
        latencies, seen = [], []
        req = {"chip_id": "default", "inputs": x_batch(1), "age": "1d"}
        while t.is_alive():
            t0 = time.perf_counter()
            r = c.post("/infer", json=req)
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            g = c.get("/chips/big")
            seen.append(g.status_code)
            if g.status_code == 200:  # visible only when complete
                assert g.json()["devices"] == 2 * 1024 * 2048
        t.join()
        assert result["resp"].status_code == 201, result["resp"].text
        assert set(seen) <= {200, 404} and (404 in seen)
        print(
            f"{len(latencies)} inferences while programming ({result['seconds']:.2f} s), "
            f"max latency {max(latencies) * 1e3:.0f} ms"
        )
        # a blocked event loop would hold a request for about the whole programming time
        assert len(latencies) >= 3 and max(latencies) < min(1.0, result["seconds"] / 2), latencies
        r = c.post("/infer", json={"chip_id": "big", "inputs": np.ones((2, 1024)).tolist(), "age": "1h"})
        assert r.status_code == 200 and np.asarray(r.json()["outputs"]["y"]).shape == (2, 2048)
    finally:
        server.kill(signal.SIGTERM)


def test_sigkill_during_program_leaves_no_half_chip(tmp_path, zoo):
    state = tmp_path / "state"
    big, _, _ = single_layer("matmul", 1024, 2048, seed=5)
    server = Server(state, zoo).start()
    tmp_dir = state / "tmp"
    caught = False
    try:

        def program() -> None:
            try:
                httpx.post(
                    server.url + "/program", files={"model": ("big.onnx", big)}, data={"chip_id": "half"}, timeout=60
                )
            except httpx.HTTPError:  # the server dies under the request: expected
                pass

        t = threading.Thread(target=program, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and t.is_alive():
            if any(p.is_dir() for p in tmp_dir.iterdir()):  # the chip is being written: kill now
                server.kill(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.0005)
    finally:
        server.kill(signal.SIGKILL)
    assert caught, "the publishing window was not observed"
    server = Server(state, zoo).start()
    try:
        chips = {x["chip_id"]: x for x in httpx.get(server.url + "/chips").json()["chips"]}
        assert all(x["state"] == "ready" for x in chips.values()), chips
        assert "half" not in chips or httpx.get(server.url + "/chips/half").status_code == 200
        assert not any(tmp_dir.iterdir())  # the dead writer's leftovers are gone
        assert 'agedchip_chips{state="corrupt"} 0.0' in httpx.get(server.url + "/metrics").text
    finally:
        server.kill(signal.SIGTERM)


def test_triton_http_client_unchanged(tmp_path, zoo):
    """Triton's own HTTP client (when installed) talks to the server: metadata, JSON and binary
    tensors, age in the request parameters, errors."""
    httpclient = pytest.importorskip("tritonclient.http")
    server = Server(tmp_path / "state", zoo).start()
    try:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("default")
        assert c.get_model_metadata("default")["inputs"][0]["shape"] == [-1, 1, 8, 8]
        x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
        outs = []
        for binary in (False, True):
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            r = c.infer(
                "default",
                [inp],
                outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
                parameters={"age": "1y", "seed": 1},
            )
            assert r.get_response()["parameters"]["age_s"] == 365 * 86400.0
            outs.append(r.as_numpy("y"))
        assert np.array_equal(outs[0], outs[1])
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="parameters.age"):
            c.infer("default", [inp], parameters={"age": "bogus"})
        assert not c.is_model_ready("nope")
    finally:
        server.kill(signal.SIGTERM)
