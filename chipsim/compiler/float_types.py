"""Models stored in fp16 or bf16: the chip path computes in fp32, outputs keep the model's type.

Runs before the rewriters, as a model-to-model pass, so every rewriter sees float32 nodes:

- a node a rewriter maps (its weight is a constant) and whose type is fp16/bf16 is *wrapped*:
  its float inputs are cast up (``Cast`` for activations; constants converted in place, keeping
  their names, which calibration metadata and the chip's layers refer to), it computes in fp32,
  and each output is cast back to its type under its original name. A converted constant also
  read by a node that is not wrapped reaches that node through a ``Cast`` back;
- bf16: onnxruntime's CPU provider has no bf16 kernel for almost any op (MatMul, Relu, Tanh,
  Softmax… measured with onnxruntime 1.32), so every node that reads or writes bf16 is wrapped
  the same way: it computes in fp32 between casts, which keeps bf16's rounding between ops.
  fp16 digital nodes stay as they are (onnxruntime runs fp16);
- ``Cast(constant → float)`` (weights stored in fp16 and widened at run time) is folded into a
  float32 constant, so the chip sees a constant weight.

Graph inputs and outputs keep their declared types, except bf16 ones: onnxruntime's Python API
binds no bf16 array, so they are float32 holding bf16 values (inputs are rounded to bf16 first
thing in the graph).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipsim.compiler.loader import constants

#: Float types the chip path widens to float32.
LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
#: Ops that move no float arithmetic or are defined for every type: never wrapped.
_TYPE_AGNOSTIC = ("Cast", "Constant", "Shape", "Size")
_CONTROL_FLOW = ("If", "Loop", "Scan")


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (TensorProto enum) of every tensor whose type is known."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a malformed model is refused by the loader; types are best effort
        inferred = model
    types: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def uses_low_precision(model: onnx.ModelProto) -> bool:
    """True if any initializer, Constant or declared value is fp16 or bf16."""
    if any(t.data_type in LOW_PRECISION for t in model.graph.initializer):
        return True
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if any(v.type.tensor_type.elem_type in LOW_PRECISION for v in values):
        return True
    return any(
        n.op_type in ("Constant", "Cast")
        and any(
            (a.type == onnx.AttributeProto.TENSOR and a.t.data_type in LOW_PRECISION)
            or (a.name == "to" and a.i in LOW_PRECISION)
            for a in n.attribute
        )
        for n in model.graph.node
    )


def _fold_constant_casts(model: onnx.ModelProto) -> None:
    """Replace ``Cast(initializer → float)`` by a float32 initializer named like its output."""
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (
            node.op_type == "Cast"
            and to == TensorProto.FLOAT
            and node.input[0] in inits
            and inits[node.input[0]].data_type in LOW_PRECISION
        ):
            arr = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def compute_in_fp32(
    model: onnx.ModelProto, is_mapped: Callable[[onnx.NodeProto, dict[str, np.ndarray]], bool]
) -> onnx.ModelProto:
    """The model with every mapped fp16/bf16 node (``is_mapped(node, consts)``), and every bf16
    node, computing in float32 between casts (see the module docstring). Returns ``model``
    itself when it has no fp16/bf16 value."""
    if not uses_low_precision(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _fold_constant_casts(out)
    consts = constants(out)
    types = tensor_types(out)

    def low_type(node: onnx.NodeProto) -> int | None:
        for name in [*node.input, *node.output]:
            if name and types.get(name) in LOW_PRECISION:
                return types[name]
        return None

    def wrapped(node: onnx.NodeProto) -> bool:
        t = low_type(node)
        if t is None or node.op_type in _TYPE_AGNOSTIC or node.op_type in _CONTROL_FLOW:
            return False
        return t == TensorProto.BFLOAT16 or is_mapped(node, consts)

    to_wrap = [wrapped(n) for n in out.graph.node]
    if not any(to_wrap):
        return out
    widened = _widen_constants(out, to_wrap, types)

    new_nodes: list[onnx.NodeProto] = []
    up: dict[str, str] = {}  # low-precision activation → its float32 cast
    back: dict[str, str] = {}  # widened constant → its cast back to the original type
    original_type = {n: types[n] for n in widened}
    for node, wrap in zip(out.graph.node, to_wrap):
        node_type = low_type(node)
        for i, name in enumerate(node.input):
            if not name:
                continue
            if wrap and name not in widened and types.get(name) in LOW_PRECISION:
                if name not in up:
                    up[name] = f"{name}/as_fp32"
                    new_nodes.append(
                        helper.make_node("Cast", [name], [up[name]], name=f"{name}/cast_fp32", to=TensorProto.FLOAT)
                    )
                node.input[i] = up[name]
            elif not wrap and name in widened:
                if name not in back:
                    back[name] = f"{name}/{helper.tensor_dtype_to_np_dtype(original_type[name]).name}"
                    new_nodes.append(
                        helper.make_node(
                            "Cast", [name], [back[name]], name=f"{back[name]}/cast", to=original_type[name]
                        )
                    )
                node.input[i] = back[name]
        new_nodes.append(node)
        if not wrap:
            continue
        for i, name in enumerate(node.output):
            t = types.get(name, node_type)
            if name and t in LOW_PRECISION:
                node.output[i] = f"{name}/fp32"
                new_nodes.append(helper.make_node("Cast", [node.output[i]], [name], name=f"{name}/cast_back", to=t))
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    _declare_widened(out, widened)
    _bf16_interface_as_fp32(out)
    return out


def _widen_constants(out: onnx.ModelProto, to_wrap: list[bool], types: dict[str, int]) -> set[str]:
    """Convert, in place, the low-precision initializers and Constant values read by wrapped nodes
    (``to_wrap`` is parallel to ``out.graph.node``) to float32; returns their names."""
    inits = {t.name: t for t in out.graph.initializer}
    const_nodes = {
        n.output[0]: n
        for n in out.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    widened: set[str] = set()
    for node, wrap in zip(out.graph.node, to_wrap):
        if not wrap:
            continue
        for name in node.input:
            if name in widened or types.get(name) not in LOW_PRECISION:
                continue
            if name in inits:
                t = inits[name]
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), name))
                widened.add(name)
            elif name in const_nodes:
                attr = const_nodes[name].attribute[0]
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), name))
                widened.add(name)
    return widened


def _declare_widened(out: onnx.ModelProto, widened: set[str]) -> None:
    """Stale declared types of values that are now float32 would fail the checker."""
    keep = [vi for vi in out.graph.value_info if vi.name not in widened]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    for vi in out.graph.input:  # an initializer also listed as an input (IR < 4 style)
        if vi.name in widened:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new


def _bf16_interface_as_fp32(model: onnx.ModelProto) -> None:
    """bf16 graph inputs and outputs become float32 holding bf16 values (onnxruntime's Python
    API binds no bf16 arrays): an input is rounded to bf16 by a ``Cast`` first thing, an output
    widened last. Names stay."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    head, tail = [], []
    for vi in g.input:
        if vi.name not in inits and vi.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            _rename(g, vi.name, f"{vi.name}/bf16")
            head.append(
                helper.make_node(
                    "Cast", [vi.name], [f"{vi.name}/bf16"], name=f"{vi.name}/round_bf16", to=TensorProto.BFLOAT16
                )
            )
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for vi in g.output:
        if vi.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            _rename(g, vi.name, f"{vi.name}/bf16")
            tail.append(
                helper.make_node("Cast", [f"{vi.name}/bf16"], [vi.name], name=f"{vi.name}/widen", to=TensorProto.FLOAT)
            )
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    if head or tail:
        nodes = [*head, *g.node, *tail]
        del g.node[:]
        g.node.extend(nodes)
