"""#20.7: ``/program`` built onnxruntime sessions of the uploaded model twice (the runnable check,
then calibration). One session of the model, built once, now serves the runnable check,
calibration (user data or the eval set) and the shape probe; the chip's own graph is built on its
first inference, not by ``/program``. Every ``onnxruntime.InferenceSession`` built is counted."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import CompileError, compile_model
from tests.compiler_op_helpers import recurrent_model
from tests.service_helpers import err, eval_npz, tiny_model


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def builds(monkeypatch) -> list[onnx.ModelProto]:
    """The models of the onnxruntime sessions built from now on, in order."""
    built: list[onnx.ModelProto] = []
    original = ort.InferenceSession

    def counting(model, *args, **kwargs):
        built.append(onnx.load_from_string(model))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return built


def _ops(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph.node if n.name}


@pytest.mark.parametrize(
    ("calibrate", "with_eval", "source"),
    [(True, True, "calibration"), (False, True, "eval"), (True, False, "calibration")],
)
def test_program_builds_one_session_of_the_model(client, builds, calibrate, with_eval, source):
    model = tiny_model(ranges=False)  # no learned ranges: calibration runs the model
    files = {"model": ("plain.onnx", model, "x")}
    if with_eval:
        files["eval"] = ("e.npz", eval_npz(model), "x")
    if calibrate:
        x = np.random.default_rng(3).random((32, 1, 8, 8)).astype(np.float32)
        files["calibration"] = ("c.npz", _npz(x=x), "x")
    builds.clear()  # eval_npz ran the model with onnxruntime to label its eval set
    r = client.post("/program", files=files, data={"chip_id": "once"})
    assert r.status_code == 201, r.text
    assert [layer["input_range_source"] for layer in r.json()["layers"]] == [source, source]
    assert len(builds) == 1, [_ops(m) for m in builds]
    # …and it is the uploaded model (its Gemm layers as exported), not the chip's compiled graph.
    assert _ops(builds[0]) == {"flat": "Flatten", "fc1": "Gemm", "relu": "Relu", "fc2": "Gemm"}


def test_program_without_calibration_builds_one_light_check(client, builds):
    """Without calibration data nothing runs the model: the runnable check's one session, of the
    digital nodes only."""
    r = client.post("/program", files={"model": ("plain.onnx", tiny_model(ranges=False), "x")})
    assert r.status_code == 201, r.text
    assert r.json()["uncalibrated_layers"] == ["fc1", "fc2"]
    assert len(builds) == 1 and set(_ops(builds[0])) == {"flat", "relu"}


def test_an_op_onnxruntime_refuses_is_named_with_calibration_data(client):
    """The shared session's build is the runnable check: a node onnxruntime cannot run is still
    refused by name when calibration data is given (not as a failed calibration run)."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    m = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
                helper.make_node("Frob", ["h"], ["y"], domain="example.custom", name="mystery"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
            initializer=[w],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)],
    )
    m.ir_version = 8
    calib = _npz(x=np.ones((8, 4), np.float32))
    r = client.post(
        "/program", files={"model": ("bad.onnx", m.SerializeToString(), "x"), "calibration": ("c.npz", calib, "x")}
    )
    assert err(r) == (422, "model")
    assert "'mystery' (example.custom.Frob) cannot run in onnxruntime" in r.json()["error"]["message"]


def test_a_model_onnxruntime_runs_only_on_the_chip_path_is_a_calibration_error():
    """An LSTM with ``layout = 1``: the chip maps it, onnxruntime refuses to build it as exported,
    so calibration cannot run the model: a CompileError naming the field (a 422), not
    onnxruntime's own exception (a 500)."""
    model, feeds = recurrent_model("LSTM", T=5, N=3, layout=1)
    with pytest.raises(CompileError, match="could not run the model on the calibration data") as caught:
        compile_model(model, get_profile("pcm"), calibration=feeds)
    assert caught.value.field == "calibration"
    assert compile_model(model, get_profile("pcm")).uncalibrated_layers()  # programs without calibration


def test_calibration_and_the_shape_probe_share_the_session(builds):
    """A tensor ONNX shape inference leaves without a rank (after an ``ai.onnx.ml`` Scaler) is
    measured by running the model: on the session calibration built, not a second one."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", scale=[2.0] * 6, offset=[0.0] * 6),
        helper.make_node("MatMul", ["xs", "w"], ["h"], name="linear"),  # h: no declared shape
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    m = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
            initializer=[numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
    )
    m.ir_version = 8
    x = rng.standard_normal((64, 6)).astype(np.float32)
    compiled = compile_model(m.SerializeToString(), get_profile("ideal"), calibration=x)
    assert len(builds) == 1
    # the range is the calibration quantile of |2x| (the Scaler doubles x), not the default 1.0
    want = float(np.quantile(np.abs(2.0 * x.astype(np.float64)), 0.9999))
    assert compiled.specs[0].input_range == pytest.approx(want, rel=1e-6)
    assert compiled.specs[0].meta["input_range_source"] == "calibration"
