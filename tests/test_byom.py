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


def _scaler_model(rng) -> bytes:
    """skl2onnx's shape of a pipeline: an ``ai.onnx.ml`` Scaler, then a Linear layer."""
    w = rng.standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", name="scaler",
                              offset=rng.standard_normal(6).astype(np.float32).tolist(),
                              scale=rng.uniform(0.5, 2.0, 6).astype(np.float32).tolist()),
             helper.make_node("MatMul", ["xs", "w"], ["y"], name="linear")]
    return _model(nodes, [numpy_helper.from_array(w, "w")], [_vi("x", ["N", 6])], [_vi("y", ["N", 3])],
                  opsets=(("", 17), ("ai.onnx.ml", 3)))


def test_ops_of_other_domains_onnxruntime_runs_stay_digital():
    """#13: an ``ai.onnx.ml`` Scaler (skl2onnx) and a ``com.microsoft`` op pass through digitally."""
    rng = np.random.default_rng(2)
    model = _scaler_model(rng)
    compiled = compile_model(model, IDEAL)
    assert [p.node for p in compiled.plans] == ["linear"] and compiled.digital_nodes == 1
    x = rng.standard_normal((5, 6)).astype(np.float32)
    got = ChipRuntime(program_onnx(model, IDEAL, seed=0)).run(x, age_s=0.0)[0]
    assert _rel_err(got, _original(model, {"x": x})[0]) <= 1e-5

    w1, w2 = (rng.standard_normal((4, 4)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft", name="gelu"),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2")]
    model = _model(nodes, [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
                   [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], opsets=(("", 17), ("com.microsoft", 1)))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    got = ChipRuntime(program_onnx(model, IDEAL, seed=0)).run(x, age_s=0.0)[0]
    assert _rel_err(got, _original(model, {"x": x})[0]) <= 1e-5


def test_an_op_onnxruntime_cannot_run_is_refused_by_name():
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Frobnicate", ["h"], ["y"], domain="example.custom", name="mystery")]
    model = _model(nodes, [w], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], opsets=(("", 17), ("example.custom", 1)))
    with pytest.raises(CompileError, match=r"node 'mystery'.*example\.custom.*Frobnicate.*onnxruntime"):
        compile_model(model, IDEAL)
    # A node of another domain named like an ONNX op is not taken for one.
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], domain="example.custom", name="lookalike")]
    model = _model(nodes, [w], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], opsets=(("", 17), ("example.custom", 1)))
    with pytest.raises(CompileError, match="lookalike"):
        compile_model(model, IDEAL)
