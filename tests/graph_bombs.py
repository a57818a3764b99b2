"""ONNX models that allocate far more than their size (issue #15, finding 7): each is a small
valid model whose one analog Gemm is mapped, beside a tensor that a bound must catch. Test
support code, not a test module."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, extra_inits=(), outputs=None, sparse=(), inputs=None) -> bytes:
    """x: (N, 64) → Gemm(64→10) = y, plus ``nodes`` whose output ``bomb`` is a second graph output."""
    w = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32) * 0.3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    outs = outputs or [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
        helper.make_tensor_value_info("bomb", TensorProto.FLOAT, ["a", "b"]),
    ]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1), *nodes],
        "bomb",
        [x, *(inputs or [])],
        outs,
        initializer=[numpy_helper.from_array(w, "w"), *extra_inits],
        sparse_initializer=list(sparse),
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def constant_of_shape(dims=(64000, 64000)) -> bytes:
    """The finding's model: ``ConstantOfShape([64000, 64000])`` (16 GB of float32) from a few KB."""
    shape = numpy_helper.from_array(np.array(dims, np.int64), "shape")
    return _model(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["bomb"],
                name="cos",
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            )
        ],
        [shape],
    )


def batch_outer_product(width: int) -> bytes:
    """Per-sample modest, huge at the maximum batch: x (N, 64) → Tile to (N, 64·width)."""
    reps = numpy_helper.from_array(np.array([1, width], np.int64), "reps")
    return _model([helper.make_node("Tile", ["x", "reps"], ["bomb"], name="tile")], [reps])


def data_dependent_expand() -> bytes:
    """Expand to a shape computed at run time from the input's values (no static bound)."""
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], name="max", keepdims=1),
        helper.make_node("Reshape", ["m", "flat"], ["m1"], name="flatten"),
        helper.make_node("Cast", ["m1"], ["mi"], name="cast", to=TensorProto.INT64),
        helper.make_node("Concat", ["mi", "mi"], ["dims"], name="cat", axis=0),
        helper.make_node("Expand", ["one", "dims"], ["bomb"], name="expand"),
    ]
    return _model(
        nodes,
        [
            numpy_helper.from_array(np.ones(1, np.float32), "one"),
            numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        ],
    )


def sparse_initializer() -> bytes:
    """A 64000×64000 sparse initializer with one value (densified: 16 GB)."""
    values = numpy_helper.from_array(np.array([1.0], np.float32), "big")
    indices = numpy_helper.from_array(np.array([0], np.int64), "big_indices")
    sparse = helper.make_sparse_tensor(values, indices, [64000, 64000])
    return _model([helper.make_node("Identity", ["big"], ["bomb"], name="id")], sparse=[sparse])


def reshape_by_computed_shape() -> bytes:
    """A Reshape whose target shape passes through ReduceSum, which shape inference does not
    propagate: the output's size is unknown statically (a trial run measures it: N·64)."""
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Cast", ["s"], ["si"], name="cast", to=TensorProto.INT64),
        helper.make_node("Mul", ["si", "zero"], ["z"], name="mul"),
        helper.make_node("Add", ["z", "target"], ["dims"], name="add"),
        helper.make_node("Reshape", ["x", "dims"], ["bomb"], name="reshape"),
    ]
    return _model(
        nodes,
        [
            numpy_helper.from_array(np.array([0, 0], np.int64), "zero"),
            numpy_helper.from_array(np.array([-1, 64], np.int64), "target"),
        ],
    )
