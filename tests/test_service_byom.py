"""Bring your own model through the HTTP API (#13, #20): fp16 uploads, calibration of integer
inputs, uncalibrated layers in the program response, calibration from the eval set."""

from __future__ import annotations

import io

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.service_helpers import err, eval_npz, tiny_model


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _model(nodes, inits, inputs, outputs) -> bytes:
    m = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    return m.SerializeToString()


def test_fp16_model_programs_and_answers_in_fp16(client):
    """#20.6: fp16 uploads were an HTTP 500."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((6, 4)) * 0.5).astype(np.float16), "w")
    f16 = TensorProto.FLOAT16
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        [w],
        [helper.make_tensor_value_info("x", f16, ["N", 6])],
        [helper.make_tensor_value_info("y", f16, ["N", 4])],
    )
    r = client.post("/program", files={"model": ("half.onnx", model, "x")}, data={"chip_id": "half", "profile": "pcm"})
    assert r.status_code == 201, r.text
    assert r.json()["inputs"][0]["dtype"] == "float16" and r.json()["outputs"][0]["dtype"] == "float16"
    r = client.post("/infer", json={"chip_id": "half", "inputs": rng.standard_normal((2, 6)).tolist(), "age": "1d"})
    assert r.status_code == 200, r.text
    assert np.asarray(r.json()["outputs"]["y"]).shape == (2, 4)


def _token_model(rng) -> bytes:
    table = numpy_helper.from_array(rng.standard_normal((30, 8)).astype(np.float32) * 3, "table")
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["y"], name="head"),
    ]
    return _model(
        nodes,
        [table, w],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )


def test_calibration_of_a_model_with_token_ids(client):
    """#20.3: integer calibration inputs were cast to float32 → a confusing 422."""
    rng = np.random.default_rng(1)
    model = _token_model(rng)
    ids = rng.integers(0, 30, (64, 5))
    r = client.post(
        "/program",
        files={"model": ("tok.onnx", model, "x"), "calibration": ("c.npz", _npz(x=ids), "x")},
        data={"chip_id": "tok"},
    )
    assert r.status_code == 201, r.text
    layer = r.json()["layers"][0]
    assert layer["input_range_source"] == "calibration" and layer["input_range"] != 1.0
    assert r.json()["uncalibrated_layers"] == []
    bad = client.post(
        "/program", files={"model": ("tok.onnx", model, "x"), "calibration": ("c.npz", _npz(x=ids + 0.5), "x")}
    )
    assert err(bad) == (422, "calibration.ids")


def test_program_response_lists_uncalibrated_layers_and_the_eval_set_calibrates(client):
    model = tiny_model(ranges=False)
    r = client.post("/program", files={"model": ("plain.onnx", model, "x")}, data={"chip_id": "plain"})
    assert r.status_code == 201, r.text
    assert r.json()["uncalibrated_layers"] == ["fc1", "fc2"]
    assert {layer["input_range_source"] for layer in r.json()["layers"]} == {"default"}
    r = client.post(
        "/program",
        files={"model": ("plain.onnx", model, "x"), "eval": ("e.npz", eval_npz(model), "x")},
        data={"chip_id": "evalcal"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["uncalibrated_layers"] == []
    assert [layer["input_range_source"] for layer in r.json()["layers"]] == ["eval", "eval"]
    assert client.get("/chips/evalcal").json()["uncalibrated_layers"] == []


def test_dry_run_reports_without_programming(client):
    model = tiny_model(ranges=False)
    r = client.post("/program", files={"model": ("plain.onnx", model, "x")}, data={"dry_run": "true", "chip_id": "dry"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["programmable"] is True
    assert [(a["node"], a["layers"], a["devices"]) for a in body["analog"]] == [
        ("fc1", 1, 2 * 64 * 32),
        ("fc2", 1, 2 * 32 * 10),
    ]
    assert {d["node"] for d in body["digital"]} == {"flat", "relu"}
    assert body["uncalibrated_layers"] == ["fc1", "fc2"]
    assert client.get("/chips/dry").status_code == 404  # nothing programmed
    assert "dry" not in [c["chip_id"] for c in client.get("/chips").json()["chips"]]
    r = client.post("/program", json={"model": "tiny", "dry_run": True})  # a zoo model, JSON body
    assert r.status_code == 200 and r.json()["programmable"] is True
    assert r.json()["uncalibrated_layers"] == []  # the zoo model has learned ranges
    # A refused model is a report too, with the node named.
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    bad = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Frob", ["h"], ["y"], domain="example.custom", name="mystery"),
        ],
        [w],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    m = onnx.load_from_string(bad)
    m.opset_import.add(domain="example.custom", version=1)
    r = client.post("/program", files={"model": ("bad.onnx", m.SerializeToString(), "x")}, data={"dry_run": "true"})
    assert r.status_code == 200 and r.json()["programmable"] is False
    assert r.json()["refused"][0]["node"] == "mystery"
    # …and programming it for real is a 422 naming the node.
    r = client.post("/program", files={"model": ("bad.onnx", m.SerializeToString(), "x")})
    assert err(r) == (422, "model") and "mystery" in r.json()["error"]["message"]
    # multipart only (urlencoded forms are 415 since the service hardening)
    assert err(client.post("/program", files={"zoo_model": (None, "tiny"), "dry_run": (None, "maybe")})) == (
        422,
        "dry_run",
    )


def test_archive_upload_with_external_data(client, tmp_path):
    import zipfile

    m = onnx.load_from_string(tiny_model())
    onnx.save(m, tmp_path / "tiny.onnx", save_as_external_data=True, location="tiny.data", size_threshold=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(tmp_path / "tiny.onnx", "tiny/tiny.onnx")
        zf.write(tmp_path / "tiny.data", "tiny/tiny.data")
    r = client.post(
        "/program", files={"model": ("tiny.zip", buf.getvalue(), "application/zip")}, data={"chip_id": "ext"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["weights"] == 64 * 32 + 32 * 10
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32).tolist()
    assert client.post("/infer", json={"chip_id": "ext", "inputs": x, "age": "1h"}).status_code == 200
    hostile = io.BytesIO()
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.write(tmp_path / "tiny.onnx", "tiny.onnx")
        zf.writestr("../../escape.data", b"x")
    r = client.post("/program", files={"model": ("evil.zip", hostile.getvalue(), "application/zip")})
    assert err(r) == (422, "model") and ".." in r.json()["error"]["message"]


def test_program_response_reports_what_stays_digital_and_shares_weights(client):
    """#20.5: ``MatMul(W, x)`` (the constant first) is mapped, transposed; a weight read by two
    nodes is one set of devices; an embedding table stays digital and is reported by node, and
    the parameters left digital (table and bias) are counted."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((6, 16)).astype(np.float32)  # y = W · x + bias, x [N, 16, 5]
    bias = rng.standard_normal((6, 1)).astype(np.float32)
    table = rng.standard_normal((10, 16)).astype(np.float32)
    v = rng.standard_normal((16, 4)).astype(np.float32)  # read by two MatMuls
    nodes = [
        helper.make_node("MatMul", ["w", "x"], ["wx"], name="left"),
        helper.make_node("Add", ["wx", "bias"], ["y"]),
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "v"], ["a"], name="first"),
        helper.make_node("MatMul", ["e", "v"], ["b"], name="second"),
    ]
    f = TensorProto.FLOAT
    model = _model(
        nodes,
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (bias, "bias"), (table, "table"), (v, "v"))],
        [
            helper.make_tensor_value_info("x", f, ["N", 16, 5]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info(n, f, s)
            for n, s in (("y", ["N", 6, 5]), ("a", ["N", 3, 4]), ("b", ["N", 3, 4]))
        ],
    )
    r = client.post("/program", files={"model": ("mixed.onnx", model, "x")}, data={"chip_id": "mixed"})
    assert r.status_code == 201, r.text
    for body in (r.json(), client.get("/chips/mixed").json()):
        assert [(layer["name"], layer["kind"], layer["rows"], layer["cols"]) for layer in body["layers"]] == [
            ("left", "matmul_left", 16, 6),
            ("first", "matmul", 16, 4),
        ]
        assert body["devices"] == 2 * (w.size + v.size)  # v once, though two nodes read it
        assert body["digital_parameters"] == table.size + bias.size
        assert body["digital_weight_nodes"] == [{"node": "embed", "op": "Gather", "parameters": table.size}]
    feeds = {"x": rng.standard_normal((2, 16, 5)).tolist(), "ids": rng.integers(0, 10, (2, 3)).tolist()}
    out = client.post("/infer", json={"chip_id": "mixed", "inputs": feeds, "age": "1d"})
    assert out.status_code == 200, out.text
    assert [np.shape(out.json()["outputs"][n]) for n in "yab"] == [(2, 6, 5), (2, 3, 4), (2, 3, 4)]
