"""Shared by the per-MVM noise tests: tiny ONNX models built with onnx.helper and the recovery of
ξ from a chip's outputs (an independent derivation from DESIGN §3.3, not from the compiled graph)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from chipsim.runtime import ChipRuntime

SIGMA = 0.05  # ADC output noise, normalised units


def _model(x_shape: list, y_shape: list, nodes: list, inits: dict[str, np.ndarray]) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)
    m = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def matmul_classifier(c: int = 8, cols: int = 16) -> tuple[bytes, np.ndarray]:
    """One MatMul on (N, C): a classifier head, so a chip of it can be evaluated."""
    w = np.random.default_rng(4).standard_normal((c, cols)).astype(np.float32)
    return _model(["N", c], ["N", cols], [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w}), w


def _xi(rt: ChipRuntime, model: bytes, matrix: np.ndarray, x: np.ndarray, channel_axis: int, **kw) -> np.ndarray:
    """ξ of one request: (chip − digital)/(σ·r·s_col), s_col = max|W[:, col]| (DESIGN §3.1)."""
    digital = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = rt.run(x, age_s=0.0, gdc=False, **kw)[0]
    assert got.shape == digital.shape
    scale = SIGMA * 1.0 * np.abs(matrix).max(axis=0)
    shape = [1] * got.ndim
    shape[channel_axis] = -1
    return (got - digital) / scale.reshape(shape)
