"""Bring your own model (issues #13, #20): the ONNX files people export — symbolic dimensions,
other op domains, fp16/bf16, integer inputs, external data — compile, run, or are refused by
name. Hand-built graphs, so each finding is reproduced in milliseconds; the exported corpus is
in tests/foreign/."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import CompileError, compile_model, program_onnx
from chipsim.runtime import ChipRuntime

IDEAL = get_profile("ideal")


def _model(nodes, inits, inputs, outputs, opsets=(("", 17),)) -> bytes:
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                          opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    return m.SerializeToString()


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _original(model: bytes, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _position_embedding_model(rng) -> bytes:
    """The pattern of Hugging Face BERT's embeddings: a position table sliced to the run's
    sequence length (``Slice`` with an end computed from ``Shape``), added to the tokens, then a
    Linear. ONNX shape inference cannot resolve the sliced length, so every later tensor has an
    unknown sequence dimension (the issue's "cannot infer the output shape")."""
    pos = rng.standard_normal((1, 16, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "one"], ["t"], axis=0),
        helper.make_node("Unsqueeze", ["t", "zero_ax"], ["t1"]),
        helper.make_node("Slice", ["pos", "zero1", "t1", "one1"], ["p"]),
        helper.make_node("Add", ["x", "p"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="dense"),
    ]
    inits = [numpy_helper.from_array(pos, "pos"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_ax"),
             numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             numpy_helper.from_array(np.array([1], np.int64), "one1")]
    return _model(nodes, inits, [_vi("x", ["batch", "seq", 8])], [_vi("y", ["batch", "seq", 5])])


def test_dynamic_sequence_length_compiles_and_runs_at_any_length():
    """#13: a MatMul needs only its weight's K and N; the sequence length may stay unknown."""
    rng = np.random.default_rng(0)
    model = _position_embedding_model(rng)
    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    dense_out = [v for v in m.graph.value_info if v.name == "h"]
    assert not dense_out or not dense_out[0].type.tensor_type.shape.dim[1].HasField("dim_value")  # the premise
    rt = ChipRuntime(program_onnx(model, IDEAL, seed=0))
    for batch, seq in ((1, 3), (4, 11), (2, 16)):
        x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
        got = rt.run(x, age_s=3600.0, seed=0)[0]
        assert got.shape == (batch, seq, 5)
        assert _rel_err(got, _original(model, {"x": x})[0]) <= 1e-5  # float32 rounding of the scale folds
    pcm = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    out = pcm.run(rng.standard_normal((2, 7, 8)).astype(np.float32), age_s=86400.0, seed=1)[0]
    assert out.shape == (2, 7, 5) and np.all(np.isfinite(out))
