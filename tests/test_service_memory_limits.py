"""Service limits for large models (#20.7): upload size, the binding of large chips, and the
background refresher's bounded CPU."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.background import Refresher, pause_s
from service.memory import BYTES_PER_WEIGHT, FIXED_BYTES, readout_cost
from service.settings import Settings
from tests.service_helpers import err, make_settings, tiny_model, x_batch

#: resnet18 (float32) with its calibration and eval sets, as uploaded in issue #20's study, bytes.
RESNET18_UPLOAD = 75_600_000
#: One cached read-out of resnet18 on 'pcm' (issue #20's study, before the binding by size), bytes.
RESNET18_READOUT = 420_000_000


def test_the_default_upload_limit_takes_resnet18_with_calibration_and_eval(tmp_path):
    s = Settings(state_dir=tmp_path)
    assert s.max_upload_bytes >= RESNET18_UPLOAD
    assert s.max_devices >= 2 * 11_700_000  # resnet18's analog weights, two devices each


def test_the_default_read_out_cache_keeps_two_ages_of_resnet18(tmp_path):
    """#20.7: one resnet18 read-out (420 MB, measured in the issue) exceeded the old 256 MiB
    default, so a client alternating two ages paid a full read-out on every request."""
    assert Settings(state_dir=tmp_path).cache_bytes >= 2 * RESNET18_READOUT


def test_a_streamed_upload_over_the_limit_gets_413_naming_the_setting(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo, max_upload_bytes=4096))) as c:
        body = tiny_model(hidden=64)
        boundary = "xyz"
        part = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        r = c.post(
            "/program",
            content=iter([part[:2000], part[2000:]]),  # chunked: no Content-Length, counted as it streams
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert err(r) == (413, "body")
        assert "AGEDCHIP_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]


def test_a_chip_over_initializers_max_bytes_is_served_with_weights_as_inputs(tmp_path, zoo):
    with TestClient(create_app(make_settings(tmp_path, zoo, initializers_max_bytes=0))) as c:
        r = c.post("/infer", json={"chip_id": "default", "inputs": x_batch(2), "age": "1d", "seed": 1})
        assert r.status_code == 200, r.text
        rt = c.app.state.registry.get("default").runtime
        assert rt.requested_binding == "initializers" and rt.binding == "inputs"
        n = c.app.state.registry.get("default").chip.n_weights
        # the memory guard's estimate
        assert readout_cost(n, rt.binding) == FIXED_BYTES["inputs"] + n * BYTES_PER_WEIGHT["inputs"]
    with TestClient(create_app(make_settings(tmp_path / "b", zoo))) as c:
        again = c.post("/infer", json={"chip_id": "default", "inputs": x_batch(2), "age": "1d", "seed": 1})
        assert c.app.state.registry.get("default").runtime.binding == "initializers"
    # the same chip (same zoo model and seed) answers alike either way (MatMul: bit-identical)
    assert again.json()["outputs"] == r.json()["outputs"]


@pytest.mark.parametrize(
    "period, elapsed, busy, share, want",
    [
        (15.0, 2.0, 2.0, 0.1, 18.0),  # 2 s of work at a 10 % share: 18 s of rest
        (15.0, 1.0, 0.5, 0.1, 14.0),  # a cheap pass: the rest of the period
        (15.0, 20.0, 20.0, 1.0, 0.5),  # no bound: the minimal pause
        (0.2, 0.1, 0.1, 0.25, 0.5),
    ],
)
def test_pause_keeps_the_share_of_one_core(period, elapsed, busy, share, want):
    got = pause_s(period, elapsed, busy, share)
    assert got == pytest.approx(want)
    assert busy / (elapsed + got) <= share + 1e-12 or share == 1.0


def test_the_refresh_loop_waits_by_its_cpu_share(tmp_path, zoo, monkeypatch):
    s = make_settings(tmp_path, zoo, refresh_seconds=1.0, refresh_cpu_share=0.25)
    refresher = Refresher(registry=None, settings=s)  # type: ignore[arg-type]
    waits: list[float] = []

    async def busy_pass() -> None:
        refresher.last_busy_s = 3.0  # as if the pass had computed for 3 s

    async def record(seconds: float) -> None:
        waits.append(seconds)
        refresher.stop()

    monkeypatch.setattr(refresher, "run_pass", busy_pass)
    monkeypatch.setattr("service.background.asyncio.sleep", record)
    asyncio.run(refresher.run())
    assert waits == [pytest.approx(9.0)]  # 3 s busy at a quarter of a core: 9 s of rest, not 1 s
