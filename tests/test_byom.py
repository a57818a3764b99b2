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
    m = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
    )
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
    inits = [
        numpy_helper.from_array(pos, "pos"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_ax"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([1], np.int64), "one1"),
    ]
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
    nodes = [
        helper.make_node(
            "Scaler",
            ["x"],
            ["xs"],
            domain="ai.onnx.ml",
            name="scaler",
            offset=rng.standard_normal(6).astype(np.float32).tolist(),
            scale=rng.uniform(0.5, 2.0, 6).astype(np.float32).tolist(),
        ),
        helper.make_node("MatMul", ["xs", "w"], ["y"], name="linear"),
    ]
    return _model(
        nodes,
        [numpy_helper.from_array(w, "w")],
        [_vi("x", ["N", 6])],
        [_vi("y", ["N", 3])],
        opsets=(("", 17), ("ai.onnx.ml", 3)),
    )


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
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft", name="gelu"),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    model = _model(
        nodes,
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
        [_vi("x", ["N", 4])],
        [_vi("y", ["N", 4])],
        opsets=(("", 17), ("com.microsoft", 1)),
    )
    x = rng.standard_normal((3, 4)).astype(np.float32)
    got = ChipRuntime(program_onnx(model, IDEAL, seed=0)).run(x, age_s=0.0)[0]
    assert _rel_err(got, _original(model, {"x": x})[0]) <= 1e-5


def test_an_op_onnxruntime_cannot_run_is_refused_by_name():
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Frobnicate", ["h"], ["y"], domain="example.custom", name="mystery"),
    ]
    model = _model(nodes, [w], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], opsets=(("", 17), ("example.custom", 1)))
    with pytest.raises(CompileError, match=r"node 'mystery'.*example\.custom.*Frobnicate.*onnxruntime"):
        compile_model(model, IDEAL)
    # A node of another domain named like an ONNX op is not taken for one.
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], domain="example.custom", name="lookalike")]
    model = _model(nodes, [w], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], opsets=(("", 17), ("example.custom", 1)))
    with pytest.raises(CompileError, match="lookalike"):
        compile_model(model, IDEAL)


def _fp16_mlp(rng, variant: str) -> bytes:
    """Three ways fp16 models are exported: ``half`` (``model.half()``: fp16 inputs, weights and
    outputs), ``keep_io`` (fp32 inputs and outputs cast to and from an fp16 body, as
    onnxconverter-common's ``keep_io_types`` writes), ``weights`` (fp16-stored weights widened by
    a ``Cast`` and used in fp32). Layers: MatMul + bias, Relu, Gemm(transB), Conv-free."""
    w1 = (rng.standard_normal((6, 8)) * 0.5).astype(np.float16)
    b1 = rng.standard_normal(8).astype(np.float16)
    w2 = (rng.standard_normal((3, 8)) * 0.5).astype(np.float16)
    b2 = rng.standard_normal(3).astype(np.float16)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    body = [
        helper.make_node("MatMul", ["x16", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y16"], name="fc2", transB=1),
    ]
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    if variant == "half":
        body[0].input[0], body[-1].output[0] = "x", "y"
        return _model(body, inits, [_vi("x", ["N", 6], f16)], [_vi("y", ["N", 3], f16)])
    if variant == "keep_io":
        nodes = [
            helper.make_node("Cast", ["x"], ["x16"], to=f16),
            *body,
            helper.make_node("Cast", ["y16"], ["y"], to=f32),
        ]
        return _model(nodes, inits, [_vi("x", ["N", 6], f32)], [_vi("y", ["N", 3], f32)])
    nodes = [helper.make_node("Cast", [n], [f"{n}_f32"], to=f32) for n in ("w1", "b1", "w2", "b2")]
    nodes += [
        helper.make_node("MatMul", ["x", "w1_f32"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1_f32"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "w2_f32", "b2_f32"], ["y"], name="fc2", transB=1),
    ]
    return _model(nodes, inits, [_vi("x", ["N", 6], f32)], [_vi("y", ["N", 3], f32)])


@pytest.mark.parametrize("variant, out_dtype", [("half", np.float16), ("keep_io", np.float32), ("weights", np.float32)])
def test_fp16_models_compute_in_fp32_on_the_chip_and_keep_their_types(variant, out_dtype):
    """#20.6: fp16 exports program (they gave HTTP 500) and run; the outputs keep the model's type."""
    rng = np.random.default_rng(4)
    model = _fp16_mlp(rng, variant)
    in_dtype = np.float16 if variant == "half" else np.float32
    x = rng.standard_normal((9, 6)).astype(in_dtype)
    want = _original(model, {"x": x})[0]
    chip = program_onnx(model, IDEAL, seed=0)
    assert [layer.name for layer in chip.layers] == ["fc1", "fc2"]
    got = ChipRuntime(chip).run(x, age_s=3600.0)[0]
    assert got.dtype == out_dtype and want.dtype == out_dtype
    # The chip computes the layers in fp32 where onnxruntime's fp16 kernels round (to fp16's
    # 11-bit significand): they agree within two fp16 steps of the largest output, 2^-10.
    tol = 2.0**-10 if variant != "weights" else 1e-5
    assert _rel_err(got, want) <= tol
    calibrated = compile_model(model, get_profile("pcm"), calibration=x).specs  # fed in the input's own type
    assert [s.meta["input_range_source"] for s in calibrated] == ["calibration", "calibration"]
    assert calibrated[0].input_range == pytest.approx(
        float(np.quantile(np.abs(x.astype(np.float64)), 0.9999)), rel=1e-3
    )
    pcm = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    for age in (1.0, 86400.0, 365 * 86400.0):
        out = pcm.run(x, age_s=age, seed=0)[0]
        assert out.dtype == out_dtype and np.all(np.isfinite(out))


def test_fp16_conv_and_a_weight_also_read_by_a_digital_node():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float16)
    f16 = TensorProto.FLOAT16
    # "w" is the Conv's weight and also an operand of a digital ReduceSum: it reaches that node
    # in fp16 through a Cast back.
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
        helper.make_node("Add", ["c", "s"], ["y"]),
    ]
    model = _model(
        nodes, [numpy_helper.from_array(w, "w")], [_vi("x", ["N", 3, 5, 5], f16)], [_vi("y", ["N", 4, 5, 5], f16)]
    )
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float16)
    got = ChipRuntime(program_onnx(model, IDEAL, seed=0)).run(x, age_s=0.0)[0]
    assert got.dtype == np.float16
    assert _rel_err(got, _original(model, {"x": x})[0]) <= 2.0**-10  # two fp16 steps, as above


def _bf16(a: np.ndarray) -> np.ndarray:
    import ml_dtypes  # onnx's own dependency

    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16)


def test_bf16_model_runs_in_fp32_between_casts():
    """onnxruntime's CPU provider runs almost no op in bf16 (not even Relu), so every bf16 node
    computes in fp32 between casts; the reference is numpy with the same bf16 rounding per op."""
    rng = np.random.default_rng(6)
    w1, w2 = _bf16(rng.standard_normal((6, 8)) * 0.5), _bf16(rng.standard_normal((8, 3)) * 0.5)
    bf = TensorProto.BFLOAT16
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    model = _model(nodes, inits, [_vi("x", ["N", 6], bf)], [_vi("y", ["N", 3], bf)])
    with pytest.raises(Exception, match="(?i)implementation"):  # the premise: the original cannot run
        _original(model, {"x": _bf16(np.zeros((1, 6)))})
    x = _bf16(rng.standard_normal((7, 6)))
    f32 = np.float32
    want = _bf16(np.maximum(_bf16(x.astype(f32) @ w1.astype(f32)).astype(f32), 0) @ w2.astype(f32)).astype(f32)
    chip = program_onnx(model, IDEAL, seed=0)
    # onnxruntime's Python API binds no bf16 array: the chip takes and returns float32 holding bf16 values.
    assert [(i["dtype"], o["dtype"]) for i, o in zip(chip.meta["inputs"], chip.meta["outputs"])] == [
        ("float32", "float32")
    ]
    got = ChipRuntime(chip).run(x.astype(f32) + f32(1e-4), age_s=0.0)[0]  # rounded to bf16 at the input
    assert np.array_equal(_bf16(got).astype(f32), got)
    # bf16 keeps 8 significand bits: an fp32 difference of ~1e-7 can round to the neighbouring
    # bf16 value, one step of 2^-7 relative at most.
    assert _rel_err(got, want) <= 2.0**-7


def _token_model(rng) -> bytes:
    """Token ids (int64) → embedding Gather → Linear: a model whose input is not a float."""
    table = rng.standard_normal((50, 8)).astype(np.float32) * 3
    w = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
        helper.make_node("MatMul", ["e", "w"], ["y"], name="head"),
    ]
    return _model(
        nodes,
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
        [_vi("ids", ["N", "T"], TensorProto.INT64)],
        [_vi("y", ["N", "T", 4])],
    )


def test_calibration_with_integer_inputs_feeds_them_as_integers():
    """#20.3: token ids were cast to float32 and the calibration run failed."""
    rng = np.random.default_rng(7)
    model = _token_model(rng)
    ids = rng.integers(0, 50, (40, 6))
    table = numpy_helper.to_array(onnx.load_from_string(model).graph.initializer[0])
    want = float(np.quantile(np.abs(table[ids]).astype(np.float64), 0.9999))  # the head's input is table[ids]
    for data in (ids, ids.astype(np.int32), {"ids": ids}, ids.astype(np.float32)):  # whole floats are ids too
        spec = compile_model(model, get_profile("pcm"), calibration=data).specs[0]
        assert spec.input_range == pytest.approx(want, rel=1e-6) and spec.meta["input_range_source"] == "calibration"
    with pytest.raises(CompileError, match=r"calibration\.ids: .*int64.*not whole numbers") as err:
        compile_model(model, IDEAL, calibration=ids + 0.5)
    assert err.value.field == "calibration.ids"
    with pytest.raises(CompileError, match=r"calibration\.tokens: not an input") as err:
        compile_model(model, IDEAL, calibration={"tokens": ids})
    assert err.value.field == "calibration.tokens"


def test_layers_say_where_their_range_came_from_and_eval_data_calibrates():
    """#20.3: uncalibrated layers are listed; without calibration data the eval set calibrates."""
    rng = np.random.default_rng(8)
    w1, w2 = (rng.standard_normal((5, 5)).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
    ]
    m = onnx.load_from_string(
        _model(
            nodes,
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
            [_vi("x", ["N", 5])],
            [_vi("y", ["N", 5])],
        )
    )
    m.metadata_props.add(key="agedchip.input_ranges", value='{"w2": 2.5}')
    model = m.SerializeToString()
    pcm = get_profile("pcm")

    def sources(**kw):
        c = compile_model(model, pcm, **kw)
        return {s.name: (s.meta["input_range_source"], s.input_range) for s in c.specs}, c.uncalibrated_layers()

    assert sources() == ({"fc1": ("default", 1.0), "fc2": ("metadata", 2.5)}, ["fc1"])
    x_eval = rng.uniform(-4, 4, (300, 5)).astype(np.float32)
    got, uncal = sources(eval_inputs=x_eval)
    # The eval set's first 128 samples: the 0.9999 quantile of 640 values of |U(-4, 4)| lies
    # within their largest two, all above 3.9 with probability 1 − (3.9/4)^640 > 0.99999.
    assert got["fc1"][0] == "eval" and 3.9 < got["fc1"][1] <= float(np.abs(x_eval[:128]).max()) and uncal == []
    x_cal = rng.uniform(-0.5, 0.5, (300, 5)).astype(np.float32)
    got, _ = sources(calibration=x_cal, eval_inputs=x_eval)  # calibration data wins over the eval set
    assert got["fc1"][0] == "calibration" and got["fc1"][1] <= 0.5 and got["fc2"] == ("metadata", 2.5)
    got, _ = sources(ranges={"w1": 0.7, "w2": 0.8})
    assert got == {"fc1": ("given", 0.7), "fc2": ("given", 0.8)}
    chip = program_onnx(model, pcm, seed=0)
    assert chip.meta["uncalibrated_layers"] == ["fc1"]
    assert [layer.meta["input_range_source"] for layer in chip.layers] == ["default", "metadata"]


def test_weights_read_through_identity_nodes_are_constants():
    """torch writes ``Identity(initializer)`` for duplicate initializers (cloned layers): the
    weight behind it is a constant, not a weight "computed at run time"."""
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Identity", ["w"], ["w_dup"]),
        helper.make_node("Identity", ["w_dup"], ["w_dup2"]),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
        helper.make_node("MatMul", ["h", "w_dup2"], ["y"], name="fc2"),
    ]
    model = _model(nodes, [w], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])])
    compiled = compile_model(model, IDEAL)
    # Both MatMuls are analog and read the initializer "w" itself (whether as one layer read twice
    # or two layers is the shared-weights rule's business, not this test's).
    assert {p.weight_name for p in compiled.plans} == {"w"} and compiled.digital_nodes == 0
    x = rng.standard_normal((3, 4)).astype(np.float32)
    got = ChipRuntime(program_onnx(model, IDEAL, seed=0)).run(x, age_s=0.0)[0]
    assert _rel_err(got, _original(model, {"x": x})[0]) <= 1e-5
