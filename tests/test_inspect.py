"""The dry run (#13): which nodes go analog, which stay digital and why, what would be refused;
the domain report, its CLI and nothing programmed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import compile_model
from chipsim.compiler.inspection import inspect_model
from chipsim.inspect import main


def _model(nodes, inits, inputs, outputs, opsets=(("", 17),)) -> bytes:
    m = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
    )
    m.ir_version = 8
    return m.SerializeToString()


def _attention_like(rng) -> bytes:
    """fc (600×8: two tiles of ≤ 512 rows) → Softmax; q·kᵀ between activations; a Scaler."""
    w = numpy_helper.from_array(rng.standard_normal((600, 8)).astype(np.float32), "w")
    nodes = [
        helper.make_node(
            "Scaler", ["x"], ["xs"], domain="ai.onnx.ml", name="scale", scale=[0.5] * 600, offset=[0.0] * 600
        ),
        helper.make_node("MatMul", ["xs", "w"], ["h"], name="fc"),
        helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["h", "ht"], ["y"], name="qk"),
    ]
    return _model(
        nodes,
        [w],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 600])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        opsets=(("", 17), ("ai.onnx.ml", 3)),
    )


def test_report_lists_analog_and_digital_nodes_with_reasons():
    model = _attention_like(np.random.default_rng(0))
    report = inspect_model(model, get_profile("pcm"), "pcm")
    assert report.programmable and report.refused == []
    [fc] = report.analog
    compiled = compile_model(model, get_profile("pcm"))  # the report agrees with a real compilation
    assert (fc.node, fc.layers, fc.tiles, fc.weights) == ("fc", 1, len(compiled.specs[0].tiles), 600 * 8)
    assert fc.tiles == 2 and fc.devices == 2 * 600 * 8 and fc.input_range_source == "default"
    reasons = {d.node: d.reason for d in report.digital}
    assert set(reasons) == {"scale", "t", "qk"}
    assert "ai.onnx.ml" in reasons["scale"] and "activations" in reasons["qk"] and "no weight" in reasons["t"]
    assert report.uncalibrated_layers == ["fc"]
    body = report.to_json()
    assert json.loads(json.dumps(body)) == body and body["totals"]["devices"] == 9600


def test_a_node_reading_a_shared_weight_reads_that_layer():
    """Two MatMuls on one initializer: one layer, held by the first node, read by the second (no
    devices of its own); an LSTM: its W and R layers."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    lstm_w = numpy_helper.from_array(rng.standard_normal((1, 12, 8)).astype(np.float32), "W")
    lstm_r = numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "R")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="second"),
        helper.make_node("LSTM", ["b", "W", "R"], ["y"], name="rnn", hidden_size=3),
    ]
    model = _model(
        nodes,
        [w, lstm_w, lstm_r],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, "N", 3])],
    )
    report = inspect_model(model, get_profile("pcm"), "pcm")
    assert report.programmable
    first, second, rnn = report.analog
    assert (first.layers, first.devices, first.reads, first.shared_from) == (1, 2 * 64, ["first"], [])
    assert (second.layers, second.tiles, second.devices) == (0, 0, 0)
    assert second.reads == ["first"] and second.shared_from == ["first"]
    assert second.input_range_source == first.input_range_source == "default"
    assert (rnn.layers, rnn.reads, rnn.devices) == (2, ["rnn/W", "rnn/R"], 2 * (12 * 8 + 12 * 3))
    compiled = compile_model(model, get_profile("pcm"))  # the totals agree with a real compilation
    assert report.totals()["analog_layers"] == len(compiled.specs) == 3
    assert report.totals()["devices"] == compiled.summary()["devices"]
    assert "reads the layer(s) of 'first'" in report.format_text()


def test_report_collects_every_refusal():
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    lstm_w = numpy_helper.from_array(np.zeros((1, 8, 4), np.float32), "W")
    lstm_r = numpy_helper.from_array(np.zeros((1, 8, 2), np.float32), "R")
    wt = numpy_helper.from_array(np.ones((4, 4), np.float32), "wt")
    nodes = [
        helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wtt"], ["a"], name="folded"),
        helper.make_node("MatMul", ["a", "w"], ["b"], name="ok"),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b3"]),
        helper.make_node("LSTM", ["b3", "W", "R"], ["y"], name="rnn", hidden_size=2),
    ]
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    model = _model(
        nodes,
        [w, lstm_w, lstm_r, wt, ax],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "N", 2])],
    )
    report = inspect_model(model, get_profile("ideal"))
    assert not report.programmable
    refused = {r.node: r.reason for r in report.refused}
    assert set(refused) >= {"folded"} and "computed at run time" in refused["folded"]
    assert "rnn" not in refused  # LSTM is mapped
    assert "ok" in [a.node for a in report.analog]  # listed as analog, though not compiled


def test_malformed_model_is_one_refusal():
    report = inspect_model(b"not onnx", get_profile("pcm"))
    assert not report.programmable and report.refused[0].node is None and "not a valid ONNX" in report.refused[0].reason


def test_cli_prints_the_report_and_exits_by_verdict(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    path.write_bytes(_attention_like(np.random.default_rng(0)))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("programmable on profile 'pcm'") and "fc  MatMul" in out and "qk  MatMul" in out
    assert main([str(path), "--json", "--profile", "ideal"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "ideal"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    assert main([str(bad)]) == 1 and "REFUSED" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.onnx")]) == 2
    assert main([str(path), "--profile", "nope"]) == 2
    # as a module, without importing the service or torch
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runpy; sys.argv = ['x', sys.argv[1]]; "
            "runpy.run_module('chipsim.inspect', run_name='__main__')",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "analog:" in run.stdout


def test_dry_run_bounds_allocations_before_calibration_runs_the_model():
    """A graph bomb is a refusal in the report, found before calibration data would run it; a
    sparse initializer is named as such."""
    from chipsim.compiler.bounds import AllocationLimits
    from tests import graph_bombs as gb

    limits = AllocationLimits(batch=64, max_tensor_elements=10**7, max_total_elements=10**8)
    # Calibration data of a wrong shape: were calibration to run first, the report would name it
    # (and never allocate the bomb's 16 GB, as well-shaped data would).
    report = inspect_model(
        gb.constant_of_shape(), get_profile("pcm"), limits=limits, calibration=np.zeros((2, 4), np.float32)
    )
    assert not report.programmable and "ConstantOfShape" in report.refused[0].reason
    report = inspect_model(gb.sparse_initializer(), get_profile("pcm"))
    assert not report.programmable and "sparse_initializer 'big'" in report.refused[0].reason
