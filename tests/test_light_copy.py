"""The compiler's light copies (chipsim.compiler.light_copy) leave out large weights and nothing
else: shape inference on them gives the full model's shapes, the runnable check sees the nodes
and the weights they read."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipsim.compiler import light_copy
from chipsim.compiler.loader import static_shapes


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")  # large: 2048
    v = numpy_helper.from_array(rng.standard_normal((32, 40)).astype(np.float32), "v")  # large: 1280
    shape = numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "shape")  # data propagation reads it
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 40])],
        initializer=[w, v, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="k", value="v")
    return model


def test_as_inputs_declares_large_weights_and_infers_the_same_shapes():
    model = _model()
    light = light_copy.as_inputs(model)
    assert [t.name for t in light.graph.initializer] == ["shape"]
    assert {i.name for i in light.graph.input} == {"x", "w", "v"}
    assert light.metadata_props[0].key == "k" and light.opset_import[0].version == 17
    full = onnx.shape_inference.infer_shapes(model, data_prop=True)
    want = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in full.graph.value_info}
    got = static_shapes(model)
    assert got["r"] == [1, 4, 8] and got["f"] == [1, 32]
    for name in want:  # the full model's inferred intermediates, batch set to 1
        assert got[name][1:] == want[name][1:]
    assert "w" not in got and len(model.graph.initializer) == 3  # the model itself is untouched


def test_keep_drops_only_the_large_weights_no_kept_node_reads():
    model = _model()
    kept = light_copy.keep(model, list(model.graph.node[1:3]))  # without both MatMuls
    assert [t.name for t in kept.graph.initializer] == ["shape"]
    kept = light_copy.keep(model, list(model.graph.node[:3]))
    assert sorted(t.name for t in kept.graph.initializer) == ["shape", "w"]
    body = helper.make_graph(
        [helper.make_node("Identity", ["v"], ["o"])],
        "b",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    cond = helper.make_node("If", ["c"], ["z"], then_branch=body, else_branch=body)
    kept = light_copy.keep(model, [cond])  # read in a subgraph only
    assert sorted(t.name for t in kept.graph.initializer) == ["shape", "v"]
