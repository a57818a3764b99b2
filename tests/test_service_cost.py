"""The service under hostile use (issue 15), the programming cost bound: the estimate agrees with
the programmed chip and an over-budget model is refused before any work."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from service.app import create_app
from tests.hardening_helpers import REPO, matmul_model
from tests.service_helpers import ZOO_MODEL, err, make_settings, tiny_model


def test_programming_cost_is_bounded_before_any_work(tmp_path, zoo):
    s = make_settings(tmp_path, zoo, max_tiles=32, max_devices=1_000_000)
    with TestClient(create_app(s)) as c:
        model = matmul_model(64, 16)  # 64 rows; tile_rows=1 → 64 tiles
        t0 = time.monotonic()
        r = c.post(
            "/program",
            files={
                "model": ("m.onnx", model, "application/octet-stream"),
                "overrides": (None, json.dumps({"tile_rows": 1})),
            },
        )
        assert err(r) == (422, "profile.tile_rows"), r.text
        assert "AGEDCHIP_MAX_TILES" in r.json()["error"]["message"] and "64 tiles" in r.json()["error"]["message"]
        assert time.monotonic() - t0 < 2
        ok = c.post("/program", files={"model": ("m.onnx", model, "application/octet-stream")})
        assert ok.status_code == 201 and ok.json()["tiles"] == 1
    s = make_settings(tmp_path / "b", zoo, max_devices=1000)
    with TestClient(create_app(s)) as c:
        r = c.post("/program", json={"model": ZOO_MODEL})  # 2368 weights = 4736 devices
        assert err(r) == (422, "model") and "AGEDCHIP_MAX_DEVICES" in r.json()["error"]["message"]
        assert "4736" in r.json()["error"]["message"]


def conv_model(groups: int) -> bytes:
    """Conv (N, 6, 8, 8) → 8 channels, 3×3 kernel in ``groups`` groups, then Gemm 8·6·6 → 10."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 6 // groups, 3, 3)).astype(np.float32) * 0.2
    g = rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=groups),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1),
    ]
    m = helper.make_model(
        helper.make_graph(
            nodes, "conv", [x], [y], initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")]
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m.SerializeToString()


def _graph_model(nodes, inits: dict[str, np.ndarray], x_shape: list, outputs: dict[str, list]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def op_coverage_models() -> list[bytes]:
    """A grouped ConvTranspose; a bidirectional LSTM and a GRU whose R is two layers; a weight
    read by two MatMuls (one layer) and by MatMul(W, x) (its own, transposed layer)."""
    rng = np.random.default_rng(2)
    f = np.float32
    convt = _graph_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])],
        {"w": rng.standard_normal((40, 3, 3, 3)).astype(f)},
        ["N", 40, 5, 5],
        {"y": ["N", 6, 11, 11]},
    )
    recurrent = []
    for op, gates, dirs, attrs in (("LSTM", 4, 2, {"direction": "bidirectional"}), ("GRU", 3, 1, {})):
        recurrent.append(
            _graph_model(
                [helper.make_node(op, ["x", "W", "R"], ["y"], hidden_size=24, **attrs)],
                {
                    "W": rng.standard_normal((dirs, gates * 24, 30)).astype(f),
                    "R": rng.standard_normal((dirs, gates * 24, 24)).astype(f),
                },
                [7, "N", 30],
                {"y": [7, dirs, "N", 24]},
            )
        )
    shared = _graph_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"]),
            helper.make_node("MatMul", ["x", "w"], ["b"]),
            helper.make_node("Unsqueeze", ["x", "ax"], ["x3"]),
            helper.make_node("MatMul", ["w", "x3"], ["c"]),
        ],
        {"w": rng.standard_normal((30, 30)).astype(f), "ax": np.array([-1], np.int64)},
        ["N", 30],
        {"a": ["N", 30], "b": ["N", 30], "c": ["N", 30, 1]},
    )
    return [convt, *recurrent, shared]


@pytest.mark.parametrize("tile_rows", [512, 64, 9, 20])
def test_cost_estimate_matches_the_programmed_chip(tile_rows):
    """The estimate (weight shapes only) against chipsim's compiler and programming (independent):
    the zoo models, a grouped Conv, a Gemm with transB, and the op-coverage layers (ConvTranspose,
    LSTM, GRU, a shared weight, MatMul(W, x))."""
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from service.program_cost import estimate

    zoo = REPO / "models" / "zoo"
    models = [conv_model(1), conv_model(2), tiny_model(), *op_coverage_models()]
    models += [p.read_bytes() for p in sorted(zoo.glob("*.onnx"))]
    for model in models:
        chip = program_onnx(model, get_profile("pcm", tile_rows=tile_rows), 0)
        cost = estimate(model, tile_rows)
        assert cost is not None
        assert (cost.tiles, cost.devices) == (sum(len(layer.tiles) for layer in chip.layers), chip.n_devices)
    assert estimate(b"not an onnx model", 512) is None


@pytest.mark.slow
def test_quadratic_profile_on_a_bigger_model_is_refused_fast(client):
    """The issue's case with the default limits: tile_rows=1 on a 2048-row layer (2048 tiles; 40 s of
    session build measured on the dev machine) is refused before any programming."""
    t0 = time.monotonic()
    r = client.post(
        "/program",
        files={
            "model": ("m.onnx", matmul_model(2048, 8), "application/octet-stream"),
            "profile": (None, json.dumps({"preset": "pcm", "tile_rows": 1})),
        },
    )
    assert err(r) == (422, "profile.tile_rows")
    assert time.monotonic() - t0 < 3
