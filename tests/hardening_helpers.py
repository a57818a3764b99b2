"""Helpers shared by the service hardening tests (issue 15): metric reads, small ONNX models, and
raw ASGI requests for what TestClient cannot express (client disconnects, task cancellation)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------- helpers
def metric(client: TestClient, name: str, **labels) -> float | None:
    """The value of one sample of /metrics (None when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def matmul_model(rows: int, cols: int) -> bytes:
    """One MatMul (N, rows) @ (rows, cols): the smallest model whose tile count a profile sets."""
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cols])
    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
            "mm",
            [x],
            [y],
            initializer=[numpy_helper.from_array(w, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m.SerializeToString()


async def asgi_request(
    app,
    method: str,
    path: str,
    parts: list[bytes],
    *,
    complete: bool = True,
    content_type: str = "application/json",
    disconnect_after: float | None = None,
    cancel_after: float | None = None,
    before_cancel=None,
) -> tuple[int | None, dict, bytes, float]:
    """One request straight to the ASGI app: (status or None, headers, body, seconds).

    ``parts`` are the body's chunks; ``complete=False`` leaves the body unfinished and the client
    then disconnects; ``disconnect_after`` disconnects that many seconds after the start once the
    body was sent; ``cancel_after`` cancels the request's task (what uvicorn does when its graceful
    shutdown times out), after calling ``before_cancel``."""
    queue = list(parts)
    total = sum(len(p) for p in parts)
    t0 = time.monotonic()
    sent: list[dict] = []

    async def receive() -> dict:
        if queue:
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue) or not complete}
        if not complete:
            return {"type": "http.disconnect"}
        if disconnect_after is not None:
            left = t0 + disconnect_after - time.monotonic()
            if left > 0:  # like uvicorn: wait for the event, but once disconnected answer at once
                await asyncio.sleep(left)
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", b"test"), (b"content-type", content_type.encode())]
    if complete:
        headers.append((b"content-length", str(total).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }
    task = asyncio.ensure_future(app(scope, receive, send))
    if cancel_after is not None:
        await asyncio.sleep(cancel_after)
        if before_cancel is not None:
            before_cancel()
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = {k.decode().lower(): v.decode() for k, v in (start or {}).get("headers", [])}
    return (start["status"] if start else None), head, body, time.monotonic() - t0


def _block_inference(client: TestClient, monkeypatch) -> threading.Event:
    """Inference on the default chip waits for the returned event (at most 20 s)."""
    chip = client.app.state.registry.get("default")
    release = threading.Event()
    real = chip.infer

    def blocked(*a, **k):
        release.wait(20)
        return real(*a, **k)

    monkeypatch.setattr(chip, "infer", blocked)
    return release
