"""The exact rewrites a session's graph gets (chipsim.compiler.session_graph): constants of
lower rank get leading 1s, per rank they are used at, and the outputs do not change a bit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipsim.compiler.session_graph import full_rank_constants, session_graph
from chipsim.ort_session import cpu_session


def _graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["x", "c"], ["a"]),  # [N, C, 1, 1] + scalar: the slow broadcast
        helper.make_node("Mul", ["a", "v"], ["b"]),  # + a rank-1 constant
        helper.make_node("Sub", ["z", "c"], ["d"]),  # the same scalar at rank 2, last dimension 1
        helper.make_node("Add", ["u", "c"], ["f"]),  # last dimension 3: fast, left alone
        helper.make_node("Relu", ["b"], ["e"]),  # not a broadcasting op
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 1, 1]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4, 1, 1]),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 3]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(0.25, np.float32), "c"),
            numpy_helper.from_array(np.array([2.0], np.float32), "v"),
        ],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_constants_get_the_rank_of_what_they_broadcast_against():
    model = _graph()
    assert full_rank_constants(model) == 3
    consts = {t.name: tuple(t.dims) for t in model.graph.initializer}
    read = {n.output[0]: n.input[1] for n in model.graph.node if n.op_type != "Relu"}
    assert consts[read["a"]] == (1, 1, 1, 1) and consts[read["b"]] == (1, 1, 1, 1)
    assert consts[read["d"]] == (1, 1)  # one copy per rank, the original untouched
    assert read["f"] == "c"
    assert consts["c"] == () and consts["v"] == (1,)


def test_the_session_graph_computes_the_same_outputs():
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in (("x", (5, 4, 1, 1)), ("z", (5, 1)), ("u", (5, 3)))
    }
    model = _graph()
    want = cpu_session(model.SerializeToString(), 1).run(None, feeds)
    new = session_graph(model.SerializeToString(), inputs_binding=True)
    assert new.weight_taps == {}  # no Conv
    assert sum(t.name.endswith("/rank4") for t in new.model.graph.initializer) == 2
    got = cpu_session(new.model.SerializeToString(), 1).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert len(model.graph.initializer) == 2  # the caller's graph is not changed
