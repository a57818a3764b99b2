"""Copies of a model without its large weights, for the compiler's checks that do not read them.

Shape inference and the onnxruntime check of the digital nodes serialise the model they are given
(and onnxruntime parses it): with the weights inside, each copy costs ~40 ns per weight (an 8M-weight
MLP: 0.1-0.3 s per copy). The copies here share nothing with the model and never hold its large
float initializers: ``as_inputs`` declares them as graph inputs of the same type and shape (all that
shape inference reads of a float weight), ``keep`` leaves out those no remaining node reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx
from onnx import TensorProto, helper

#: Float initializers with at least this many elements are left out of the light copies; below it
#: a tensor may be a shape-like constant that data propagation reads.
MIN_ELEMENTS = 1024
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def is_large(t: onnx.TensorProto) -> bool:
    n = 1
    for d in t.dims:
        n *= d
    return t.data_type in _FLOATS and n >= MIN_ELEMENTS


def _copy(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto], drop: Callable[[onnx.TensorProto], bool]):
    """``model`` with ``nodes`` and without the initializers ``drop`` selects (never copied)."""
    g = model.graph
    graph = onnx.GraphProto(name=g.name, doc_string=g.doc_string)
    graph.node.extend(nodes)
    graph.input.extend(g.input)
    graph.output.extend(g.output)
    graph.value_info.extend(g.value_info)
    graph.sparse_initializer.extend(g.sparse_initializer)
    graph.quantization_annotation.extend(g.quantization_annotation)
    dropped = []
    for t in g.initializer:
        if drop(t):
            dropped.append(t)
        else:
            graph.initializer.add().CopyFrom(t)
    out = onnx.ModelProto()
    for field, value in model.ListFields():  # every field but the graph, copied as is
        if field.name == "graph":
            continue
        if getattr(field, "is_repeated", False) or getattr(field, "label", 0) == field.LABEL_REPEATED:
            getattr(out, field.name).extend(value)
        elif field.message_type is not None:
            getattr(out, field.name).CopyFrom(value)
        else:
            setattr(out, field.name, value)
    out.graph.CopyFrom(graph)
    return out, dropped


def as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large float initializers are graph inputs of their type and shape."""
    out, dropped = _copy(model, model.graph.node, is_large)
    declared = {i.name for i in out.graph.input}
    out.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in dropped if t.name not in declared
    )
    return out


def _reads(nodes: Iterable[onnx.NodeProto]) -> Iterable[str]:
    """Every tensor name the nodes read, in their subgraphs too."""
    for node in nodes:
        yield from node.input
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _reads(a.g.node)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _reads(g.node)


def keep(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """A copy with only ``nodes`` and without the large float initializers none of them (nor a
    subgraph of theirs, nor a graph output) reads."""
    read = {o.name for o in model.graph.output} | set(_reads(nodes))
    return _copy(model, nodes, lambda t: is_large(t) and t.name not in read)[0]
