"""Helpers of the service tests: a tiny zoo built with onnx.helper (no torch, so the tests do
not depend on the trained zoo), settings for a test app, inputs, and the error-body check."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.settings import Settings

#: The repository root (test data and docs are read from it).
REPO = Path(__file__).resolve().parent.parent
ZOO_MODEL = "tiny"


def tiny_model(seed: int = 0, hidden: int = 32, ranges: bool = True) -> bytes:
    """Flatten → Gemm(64→hidden) → Relu → Gemm(hidden→10) on (N, 1, 8, 8) inputs, like the zoo's."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, 64)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = rng.standard_normal((10, hidden)).astype(np.float32) * 0.3
    b2 = np.zeros(10, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    m = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y], initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    if ranges:
        m.metadata_props.add(key="agedchip.input_ranges", value=json.dumps({"w1": 1.0, "w2": 3.0}))
    return m.SerializeToString()


def eval_npz(model: bytes, n: int = 120, seed: int = 1) -> bytes:
    x = np.random.default_rng(seed).random((n, 1, 8, 8)).astype(np.float32)
    y = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y.astype(np.int64))
    return buf.getvalue()


def make_zoo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    (root / f"{ZOO_MODEL}.onnx").write_bytes(model)
    (root / f"{ZOO_MODEL}.eval.npz").write_bytes(eval_npz(model))
    (root / "index.json").write_text(json.dumps({"models": [{"name": ZOO_MODEL, "description": "test MLP"}]}))
    return root


def make_settings(state: Path, zoo: Path, **kw) -> Settings:
    base = dict(
        state_dir=state,
        zoo_dir=zoo,
        default_model=ZOO_MODEL,
        refresh_seconds=0,
        schedule_readouts=1,
        refresh_eval_samples=64,
        default_time_scale=86400.0,
    )
    base.update(kw)
    return Settings(**base)


def x_batch(n: int = 2, seed: int = 0) -> list:
    return np.random.default_rng(seed).random((n, 1, 8, 8)).astype(np.float32).tolist()


def err(resp) -> tuple[int, str | None]:
    """(status, field) of an error response; checks its shape (OIP routes: the protocol's)."""
    body = resp.json()
    assert "Traceback" not in resp.text
    if resp.request.url.path.startswith("/v2"):
        assert set(body) == {"error", "status", "field"} and isinstance(body["error"], str), body
        assert body["status"] == resp.status_code
        return resp.status_code, body["field"]
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == resp.status_code and body["error"]["message"]
    return resp.status_code, body["error"]["field"]


def metric_value(client, name: str, **labels) -> float | None:
    """The value of one sample of the client's /metrics (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


#: The input value that :func:`poison_infer` refuses.
POISON = 7.0


def poison_infer(chip, monkeypatch) -> list[int]:
    """Make ``chip.infer`` refuse any batch holding a sample equal to :data:`POISON` (a 4xx on
    ``inputs.x``) and run the others; returns the list of batch sizes it is called with."""
    from service.problems import InvalidField

    real, calls = chip.infer, []

    def infer(inputs, *a, **k):
        calls.append(len(next(iter(inputs.values()))))
        if np.any(next(iter(inputs.values())) == POISON):
            raise InvalidField("inputs.x", "inputs.x: the poisoned sample")
        return real(inputs, *a, **k)

    monkeypatch.setattr(chip, "infer", infer)
    return calls
