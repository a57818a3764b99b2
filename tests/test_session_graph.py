"""The exact rewrites a session's graph gets (chipsim.compiler.session_graph): constants of
lower rank get leading 1s, per rank they are used at, and the outputs do not change a bit."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipsim.compiler.session_graph import expand_short_spans, full_rank_constants, session_graph
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


def _span_graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mul", ["y", "s"], ["a"]),  # per-channel input scales over 2x2 pixels
        helper.make_node("Add", ["a", "b"], ["o"]),  # per-channel constant
        helper.make_node("Mul", ["big", "s"], ["p"]),  # 8x8 pixels: a span of 64, left alone
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2, 2]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 1, 1]),
            helper.make_tensor_value_info("big", TensorProto.FLOAT, ["N", 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", 3, 2, 2]),
            helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3, 8, 8]),
        ],
        initializer=[numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1), "b")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_per_channel_inputs_are_expanded_over_short_spans():
    model = _span_graph()
    assert expand_short_spans(model) == 2
    consts = {t.name: tuple(t.dims) for t in model.graph.initializer}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert consts[add.input[1]] == (1, 3, 2, 2)  # the constant, expanded here
    expand = [n for n in model.graph.node if n.op_type == "Expand"]
    assert len(expand) == 1 and expand[0].input[0] == "s"  # the graph input, expanded per run
    assert [n.input[1] for n in model.graph.node if n.output[0] == "p"] == ["s"]
    rng = np.random.default_rng(1)
    feeds = {
        "y": rng.standard_normal((5, 3, 2, 2)).astype(np.float32),
        "s": rng.standard_normal((3, 1, 1)).astype(np.float32),
        "big": rng.standard_normal((5, 3, 8, 8)).astype(np.float32),
    }
    want = cpu_session(_span_graph().SerializeToString(), 1).run(None, feeds)
    got = cpu_session(model.SerializeToString(), 1).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_graph_input_read_once_is_declared_expanded_and_fed_so():
    model = _span_graph()
    del model.graph.node[2]  # "s" now has one reader
    del model.graph.output[1]
    del model.graph.input[2]
    fed: dict = {}
    assert expand_short_spans(model, fed) == 2
    assert fed == {"s": (3, 2, 2)} and not any(n.op_type == "Expand" for n in model.graph.node)
    declared = next(vi for vi in model.graph.input if vi.name == "s")
    assert [d.dim_value for d in declared.type.tensor_type.shape.dim] == [3, 2, 2]
    graph = session_graph(_span_graph().SerializeToString(), inputs_binding=False)
    assert graph.expanded == {}  # "s" has two readers there: an Expand node instead
    rng = np.random.default_rng(2)
    y, s = rng.standard_normal((4, 3, 2, 2)).astype(np.float32), rng.standard_normal((3, 1, 1)).astype(np.float32)
    want = cpu_session(_span_graph().SerializeToString(), 1).run(
        ["o"], {"y": y, "s": s, "big": np.zeros((4, 3, 8, 8), np.float32)}
    )
    fed_s = np.broadcast_to(s, fed["s"]).copy()
    got = cpu_session(model.SerializeToString(), 1).run(["o"], {"y": y, "s": fed_s})
    np.testing.assert_array_equal(got[0], want[0])
