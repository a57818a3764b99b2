"""Study-only rewrite of an ONNX model: its digital offsets scaled as if they drifted with the
analog layers (issue #12's no-GDC analysis, ``studies.gdc_off_analysis``). No physics changes:
the chip still programs the same weights; only the digital constants of the graph change.

Without GDC, an analog layer ``l`` outputs ``d_l·(W x)`` (``d_l`` its mean conductance decay,
DESIGN §3.2) plus its digital bias ``b``, which does not drift. A network of linear layers, ReLU,
pooling and slicing is positively homogeneous *without* its offsets: scale the input by ``c`` and
every tensor scales by ``c``. So if every offset were multiplied by the scale its tensor carries
on the aged chip — the product of the ``d`` along its path — the aged network would compute the
floating-point network times one positive constant, and its argmax would be unchanged. Tracking
that scale tensor by tensor is what this module does; :class:`OffsetScaling` says how far it goes.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Ops through which a tensor's scale passes unchanged: positively homogeneous of degree 1 in
#: their one non-constant input (a constant second input of Mul multiplies, it does not offset).
PASS_THROUGH = frozenset(
    {
        "Relu",
        "Slice",
        "Concat",
        "Mul",
        "ReduceMean",
        "ReduceSum",
        "Flatten",
        "Reshape",
        "Transpose",
        "Identity",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Squeeze",
        "Unsqueeze",
    }
)
#: Analog layers: the weight (input 1) is on the chip, the bias (input 2) digital.
LINEAR_OPS = frozenset({"Conv", "Gemm", "MatMul"})


class OffsetScaling(StrEnum):
    """How the digital offsets of the rewritten model are scaled (GDC off)."""

    NONE = "none"  # as shipped: offsets do not drift
    OWN = "own"  # each bias times its own layer's decay d_l (a bias held in the analog domain)
    PATH = "path"  # each bias times the product of d along its path; at a residual Add the
    # smaller (branch) scale is kept and the shortcut stays mismatched
    SHORTCUTS = "shortcuts"  # biases as shipped; each residual shortcut multiplied down to its
    # branch's scale (its branch drifted through two more layers)
    HOMOGENEOUS = "homogeneous"  # PATH and SHORTCUTS: the aged network is then the FP network
    # times one constant (its argmax unchanged)


_BIASES = frozenset({OffsetScaling.OWN, OffsetScaling.PATH, OffsetScaling.HOMOGENEOUS})
_PATH_BIASES = frozenset({OffsetScaling.PATH, OffsetScaling.HOMOGENEOUS})
_SHORTCUTS = frozenset({OffsetScaling.SHORTCUTS, OffsetScaling.HOMOGENEOUS})


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    return names | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def _once(seen: set[str], name: str) -> None:
    if name in seen:
        raise ValueError(f"offset {name!r} is shared by several nodes")
    seen.add(name)


def _scale_initializer(inits: dict[str, onnx.TensorProto], name: str, factor: float) -> None:
    if name not in inits:
        raise ValueError(f"offset {name!r} is not an initializer; this rewrite scales initializers only")
    arr = numpy_helper.to_array(inits[name])
    inits[name].CopyFrom(numpy_helper.from_array((arr * factor).astype(arr.dtype), name))


def rescale_offsets(model_bytes: bytes, decay: dict[str, float], scaling: OffsetScaling | str) -> bytes:
    """The model with its digital offsets scaled by ``scaling`` (see :class:`OffsetScaling`).

    ``decay``: the drift factor ``d_l`` (dimensionless, G(t)/G_target averaged over the layer) of
    each analog layer, keyed by its weight initializer's name. Raises ``ValueError`` for an op
    whose output scale cannot be tracked (not homogeneous, e.g. Sigmoid), or a shared bias.
    """
    scaling = OffsetScaling(scaling)
    if scaling is OffsetScaling.NONE:
        return model_bytes
    model = onnx.load_from_string(model_bytes)
    _rewrite(model, decay, scaling)
    return model.SerializeToString()


def tensor_scales(model_bytes: bytes, decay: dict[str, float]) -> dict[str, float]:
    """The scale each tensor carries on the aged chip relative to floating point, offsets aside:
    the product of the layers' ``decay`` along its path (at a residual Add, the branch's)."""
    return _rewrite(onnx.load_from_string(model_bytes), decay, OffsetScaling.PATH)


def _rewrite(model: onnx.ModelProto, decay: dict[str, float], scaling: OffsetScaling) -> dict[str, float]:
    """:func:`rescale_offsets` in place on ``model``; returns every tensor's scale."""
    consts = _constants(model)
    inits = {i.name: i for i in model.graph.initializer}
    scale: dict[str, float] = {i.name: 1.0 for i in model.graph.input if i.name not in inits}
    seen: set[str] = set()  # offsets scaled so far
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        live = [t for t in node.input if t and t not in consts]
        s_in = [scale[t] for t in live]
        if node.op_type == "Constant":
            nodes.append(node)
            continue
        if node.op_type in (*LINEAR_OPS, "Mul") and len(live) > 1:
            raise ValueError(f"{node.op_type} {node.name!r}: a product of two tensors, scale unknown")
        if node.op_type in LINEAR_OPS:
            d = float(decay.get(node.input[1], 1.0))  # 1: a layer left digital does not drift
            s_out = s_in[0] * d
            if len(node.input) > 2 and node.input[2] and scaling in _BIASES:
                _once(seen, node.input[2])
                _scale_initializer(inits, node.input[2], d if scaling is OffsetScaling.OWN else s_out)
        elif node.op_type in ("Add", "Sum") and len(live) == 2:
            s_out = min(s_in)
            if scaling in _SHORTCUTS and not np.isclose(s_in[0], s_in[1], rtol=1e-6):
                node = _match_scales(node, live, s_in, s_out, nodes, model)
        elif node.op_type == "Add" and len(live) == 1:
            s_out = s_in[0]  # a digital offset: scaled like a bias
            if scaling in _PATH_BIASES:
                for t in node.input:
                    if t not in live:
                        _once(seen, t)
                        _scale_initializer(inits, t, s_out)
        elif node.op_type in PASS_THROUGH:
            if s_in and not np.allclose(s_in, s_in[0], rtol=1e-6):
                raise ValueError(f"{node.op_type} {node.name!r}: inputs of different scales")
            s_out = s_in[0] if s_in else 1.0
        else:
            raise ValueError(f"{node.op_type} {node.name!r}: not positively homogeneous, scale unknown")
        nodes.append(node)
        for o in node.output:
            scale[o] = s_out
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return scale


def _match_scales(
    node: onnx.NodeProto,
    live: list[str],
    s_in: list[float],
    s_out: float,
    nodes: list[onnx.NodeProto],
    model: onnx.ModelProto,
) -> onnx.NodeProto:
    """A Mul before ``node`` that brings its larger-scale input down to ``s_out``; the node
    rewired to read it. Appends the Mul to ``nodes`` and its constant to the model."""
    k = int(np.argmax(s_in))
    src = live[k]
    tag = f"gdc_off/{node.name or node.output[0]}"
    model.graph.initializer.append(numpy_helper.from_array(np.array(s_out / s_in[k], np.float32), tag + "/factor"))
    nodes.append(helper.make_node("Mul", [src, tag + "/factor"], [tag + "/matched"], name=tag + "/Mul"))
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[list(node.input).index(src)] = tag + "/matched"
    return new
