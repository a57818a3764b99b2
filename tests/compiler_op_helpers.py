"""Helpers shared by the compiler op coverage tests: onnxruntime runs, error measures, small ONNX
graph builders and the ADC-level agreement check against the numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

AGES = (1.0, 86400.0, 365 * 86400.0)


def _ort(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def _rel_err(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Max |Δ| relative to max(1, max|want|): absolute on small outputs, relative on large ones."""
    assert [g.shape for g in got] == [w.shape for w in want]
    return max(float(np.abs(g - w).max() / max(1.0, float(np.abs(w).max()))) for g, w in zip(got, want))


def _model(nodes, inputs, outputs, inits) -> bytes:
    m = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


# ----------------------------------------------------------------------------- recurrent ops
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(
    op,
    T=5,
    N=3,
    I=4,  # noqa: E741  (ONNX's name for the input size)
    H=6,
    direction="forward",
    layout=0,
    bias=True,
    seq=False,
    h0=False,
    c0=False,
    peep=False,
    dynamic_length=False,
    **attrs,
):
    """One recurrent node with batch-first graph inputs (x [N, T, I], h0/c0 [N, D, H]); layout 0
    transposes them for the node as torch's exports do; ``dynamic_length``: T symbolic in the
    graph (the feeds have T steps). Returns (model, feeds)."""
    rng = np.random.default_rng(1)
    D, g = (2 if direction == "bidirectional" else 1), GATES[op]
    inits = [
        numpy_helper.from_array(rng.standard_normal((D, g * H, I)).astype(np.float32) * 0.5, "W"),
        numpy_helper.from_array(rng.standard_normal((D, g * H, H)).astype(np.float32) * 0.5, "R"),
    ]
    nodes = []

    def batch_first(name):
        if layout:
            return name
        nodes.append(helper.make_node("Transpose", [name], [name + "_t"], perm=[1, 0, 2]))
        return name + "_t"

    ins = [batch_first("x"), "W", "R", "B" if bias else "", "lens" if seq else "", batch_first("h0") if h0 else ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((D, 2 * g * H)).astype(np.float32) * 0.3, "B"))
    if op == "LSTM":
        ins += [batch_first("c0") if c0 else "", "P" if peep else ""]
        if peep:
            inits.append(numpy_helper.from_array(rng.standard_normal((D, 3 * H)).astype(np.float32) * 0.3, "P"))
    while ins[-1] == "":
        ins.pop()
    t_dim = "T" if dynamic_length else T
    graph_inputs = [_vi("x", ["N", t_dim, I])] + ([_vi("lens", ["N"], TensorProto.INT32)] if seq else [])
    graph_inputs += [_vi(n, ["N", D, H]) for n, on in (("h0", h0), ("c0", c0)) if on]
    names = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    outs = [n if layout else n + "_raw" for n in names]
    nodes.append(
        helper.make_node(op, ins, outs, name="rec", hidden_size=H, direction=direction, layout=layout, **attrs)
    )
    if not layout:
        nodes.append(helper.make_node("Transpose", ["y_raw"], ["y"], perm=[2, 0, 1, 3]))
        nodes += [helper.make_node("Transpose", [n + "_raw"], [n], perm=[1, 0, 2]) for n in names[1:]]
    shapes = {"y": ["N", t_dim, D, H], "yh": ["N", D, H], "yc": ["N", D, H]}
    model = _model(nodes, graph_inputs, [_vi(n, shapes[n]) for n in names], inits)
    feeds = {"x": rng.standard_normal((N, T, I)).astype(np.float32)}
    if seq:
        feeds["lens"] = np.array([T, 2, 1][:N], np.int32)
    feeds.update(
        {n: rng.standard_normal((N, D, H)).astype(np.float32) * 0.5 for n, on in (("h0", h0), ("c0", c0)) if on}
    )
    return model, feeds
