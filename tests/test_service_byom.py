"""Bring your own model through the HTTP API (#13, #20): fp16 uploads, calibration of integer
inputs, uncalibrated layers in the program response, calibration from the eval set."""

from __future__ import annotations

import io

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.service_helpers import err, eval_npz, tiny_model


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _model(nodes, inits, inputs, outputs) -> bytes:
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def test_fp16_model_programs_and_answers_in_fp16(client):
    """#20.6: fp16 uploads were an HTTP 500."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((6, 4)) * 0.5).astype(np.float16), "w")
    f16 = TensorProto.FLOAT16
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [w],
                   [helper.make_tensor_value_info("x", f16, ["N", 6])], [helper.make_tensor_value_info("y", f16, ["N", 4])])
    r = client.post("/program", files={"model": ("half.onnx", model, "x")}, data={"chip_id": "half", "profile": "pcm"})
    assert r.status_code == 201, r.text
    assert r.json()["inputs"][0]["dtype"] == "float16" and r.json()["outputs"][0]["dtype"] == "float16"
    r = client.post("/infer", json={"chip_id": "half", "inputs": rng.standard_normal((2, 6)).tolist(), "age": "1d"})
    assert r.status_code == 200, r.text
    assert np.asarray(r.json()["outputs"]["y"]).shape == (2, 4)


def _token_model(rng) -> bytes:
    table = numpy_helper.from_array(rng.standard_normal((30, 8)).astype(np.float32) * 3, "table")
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"], name="head")]
    return _model(nodes, [table, w], [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])


def test_calibration_of_a_model_with_token_ids(client):
    """#20.3: integer calibration inputs were cast to float32 → a confusing 422."""
    rng = np.random.default_rng(1)
    model = _token_model(rng)
    ids = rng.integers(0, 30, (64, 5))
    r = client.post("/program", files={"model": ("tok.onnx", model, "x"), "calibration": ("c.npz", _npz(x=ids), "x")},
                    data={"chip_id": "tok"})
    assert r.status_code == 201, r.text
    layer = r.json()["layers"][0]
    assert layer["input_range_source"] == "calibration" and layer["input_range"] != 1.0
    assert r.json()["uncalibrated_layers"] == []
    bad = client.post("/program", files={"model": ("tok.onnx", model, "x"),
                                         "calibration": ("c.npz", _npz(x=ids + 0.5), "x")})
    assert err(bad) == (422, "calibration.ids")


def test_program_response_lists_uncalibrated_layers_and_the_eval_set_calibrates(client):
    model = tiny_model(ranges=False)
    r = client.post("/program", files={"model": ("plain.onnx", model, "x")}, data={"chip_id": "plain"})
    assert r.status_code == 201, r.text
    assert r.json()["uncalibrated_layers"] == ["fc1", "fc2"]
    assert {layer["input_range_source"] for layer in r.json()["layers"]} == {"default"}
    r = client.post("/program", files={"model": ("plain.onnx", model, "x"), "eval": ("e.npz", eval_npz(model), "x")},
                    data={"chip_id": "evalcal"})
    assert r.status_code == 201, r.text
    assert r.json()["uncalibrated_layers"] == []
    assert [layer["input_range_source"] for layer in r.json()["layers"]] == ["eval", "eval"]
    assert client.get("/chips/evalcal").json()["uncalibrated_layers"] == []
