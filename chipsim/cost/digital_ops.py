"""Digital operations of one ONNX node (the work outside the crossbars), from its inferred shapes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx
from onnx import helper

#: Ops without arithmetic (layout, indexing, copies): 0 operations. Data movement is not priced.
ZERO_OPS = frozenset(
    {
        "Cast",
        "CastLike",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "DepthToSpace",
        "Dropout",
        "Expand",
        "Flatten",
        "Gather",
        "GatherElements",
        "GatherND",
        "Identity",
        "NonZero",
        "Pad",
        "Range",
        "Reshape",
        "Shape",
        "Size",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)
#: Reductions: one operation per *input* element.
REDUCTIONS = frozenset(
    {
        "ArgMax",
        "ArgMin",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
    }
)
#: Windowed pooling: one operation per output element and window element.
POOLS = frozenset({"AveragePool", "LpPool", "MaxPool"})
#: Operations per input element of composite ops: softmax = max, exp-and-sum, divide; layer /
#: instance / group norm = mean, centre, square-and-sum, normalise, scale, shift; batch norm at
#: inference = scale, shift. Everything else (elementwise, including transcendental functions,
#: which HERMES evaluates by look-up tables) counts one operation per output element.
OPS_PER_ELEMENT: dict[str, int] = {
    "Softmax": 3,
    "LogSoftmax": 3,
    "LayerNormalization": 6,
    "InstanceNormalization": 6,
    "GroupNormalization": 6,
    "BatchNormalization": 2,
}


def _size(shape: Sequence[int] | None) -> int | None:
    return None if shape is None else math.prod(shape)


def node_ops(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    """Digital operations of one node (None when a shape it needs is unknown). A multiply–
    accumulate counts two operations; see ZERO_OPS, REDUCTIONS, POOLS, OPS_PER_ELEMENT."""
    op = node.op_type
    if op in ZERO_OPS:
        return 0
    out = shapes.get(node.output[0]) if node.output else None
    first = shapes.get(node.input[0]) if node.input and node.input[0] else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "MatMul":
        if out is None or first is None or not first:
            return None
        return 2 * math.prod(out) * first[-1]
    if op == "Gemm":
        if out is None or first is None or len(first) != 2:
            return None
        k = first[0] if attrs.get("transA", 0) else first[1]
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] else 0
        return 2 * math.prod(out) * k + bias
    if op == "Conv":
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if out is None or w is None:
            return None
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] else 0
        return 2 * math.prod(out) * math.prod(w[1:]) + bias
    if op in REDUCTIONS:
        return _size(first)
    if op in POOLS:
        kernel = attrs.get("kernel_shape")
        return None if out is None or not kernel else math.prod(out) * math.prod(kernel)
    if op in OPS_PER_ELEMENT:
        n = _size(first)
        return None if n is None else OPS_PER_ELEMENT[op] * n
    return _size(out)
