"""The graph a chip's onnxruntime session runs: the compiled graph (stored with the chip) with
exact rewrites that only change how fast onnxruntime runs it, applied when a session is built.
They change no stored byte, so every stored chip gets them.

- :func:`full_rank_constants` (every session): a one-element constant broadcast against a
  tensor whose last dimension is 1 gets that tensor's rank. onnxruntime 1.32's CPU broadcasting
  of a rank-0 or rank-1 scalar against such a tensor (a Conv's output on 1x1 pixels,
  ``[N, C, 1, 1]``) walks it element by element: ``Add([64, 512, 1, 1], scalar)`` 0.32 ms
  against 0.008 ms for ``[64, 512]`` or for a ``[1, 1, 1, 1]`` constant (200 calls, one thread,
  a one-off microbenchmark); the lowering's IR-drop and noise arithmetic is such ops.
- :func:`expand_short_spans` (every session): a per-channel input (``[C, 1, 1]``) broadcast
  over 2-16 pixels is expanded to them, the tiles' per-column scales by the runtime once per
  read-out (:meth:`SessionGraph.feed`).
- :func:`chipsim.compiler.conv_matmul.conv_inputs_as_matmul` (``inputs`` binding): Conv tiles
  on few output pixels as one batched MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from chipsim.compiler.conv_matmul import WeightFeed, conv_inputs_as_matmul, tensor_dims

__all__ = ["SessionGraph", "expand_short_spans", "full_rank_constants", "session_graph"]

#: Elementwise ops whose inputs broadcast numpy-style (prepending 1s to one changes nothing).
BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"})


#: Broadcast spans (elements of the trailing dimensions one input lacks) up to which
#: :func:`expand_short_spans` expands that input.
MAX_SPAN = 16


def expand_short_spans(
    model: onnx.ModelProto, fed: dict[str, tuple[int, ...]] | None = None, shapes: dict | None = None
) -> int:
    """Expand, in place, a per-channel input of a two-input :data:`BROADCAST_OPS` node (``[C, 1, 1]``
    against ``[N, C, H, W]``) over the trailing dimensions it lacks when they hold 2 to
    :data:`MAX_SPAN` elements (static): onnxruntime 1.32 broadcasts it in spans of ``H·W``
    elements, 2.5 ns an element at 2x2 pixels and 0.7 at 4x4 against 0.2 when expanded (a
    one-off microbenchmark, ``Mul([64, 512, 2, 2], [512, 1, 1])``). A constant is expanded once
    here; a graph input (a tile's per-column scales) read by this node only is declared in its
    expanded shape and recorded in ``fed`` (name → shape: the caller feeds it expanded, once per
    read-out), any other by an Expand node per run. ``shapes``: :func:`tensor_dims` of ``model``
    (inferred when None). Returns how many inputs were expanded."""
    shapes = shapes or tensor_dims(model)
    if shapes is None:
        return 0
    consts = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    declared = {vi.name: vi for vi in model.graph.input if readers.get(vi.name) == 1} if fed is not None else {}
    nodes: list[onnx.NodeProto] = []
    expanded = 0
    for node in model.graph.node:
        new = _expand_input(node, shapes, consts, model, declared, fed) if node.op_type in BROADCAST_OPS else None
        if new is not None:
            nodes.extend(new)
            expanded += 1
        nodes.append(node)
    if expanded:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return expanded


def _expand_input(
    node: onnx.NodeProto,
    shapes: dict,
    consts: dict[str, onnx.TensorProto],
    model: onnx.ModelProto,
    declared: dict[str, onnx.ValueInfoProto],
    fed: dict[str, tuple[int, ...]] | None,
) -> list[onnx.NodeProto] | None:
    """The node that expands one input of ``node`` (rewired to read it); [] for a constant
    (replaced by its expanded copy) or a graph input declared expanded; None when nothing is
    expanded."""
    if len(node.input) != 2 or any(i not in shapes and i not in consts for i in node.input):
        return None
    dims = [shapes[i] if i in shapes else list(consts[i].dims) for i in node.input]
    rank = max(len(d) for d in dims)
    dims = [[1] * (rank - len(d)) + d for d in dims]
    for k in (0, 1):
        mine, other = dims[k], dims[1 - k]
        ones = 0
        while ones < rank and mine[rank - 1 - ones] == 1:
            ones += 1
        if ones in (0, rank) or mine[rank - ones - 1] in (None, 1):
            continue  # nothing to expand, a scalar (one span: fast), or not a per-channel input
        tail = other[rank - ones :]
        if any(d is None for d in tail):
            continue
        span = int(np.prod(tail))
        if not 1 < span <= MAX_SPAN:
            continue
        name = node.input[k]
        own = len(shapes[name]) if name in shapes else len(consts[name].dims)
        target = [1] * (own - ones) + tail
        new_name = f"{name}/expanded{'x'.join(map(str, tail))}/{node.name or node.output[0]}"
        if name in consts:
            array = numpy_helper.to_array(consts[name])
            full = np.broadcast_to(array, np.broadcast_shapes(array.shape, tuple(target))).copy()
            model.graph.initializer.append(numpy_helper.from_array(full, new_name))
            node.input[k] = new_name
            return []
        if name in declared and fed is not None and None not in shapes[name]:
            full_shape = tuple(int(d) for d in np.broadcast_shapes(tuple(shapes[name]), tuple(target)))
            dims = declared[name].type.tensor_type.shape.dim
            del dims[:]
            for d in full_shape:
                dims.add().dim_value = d
            fed[name] = full_shape
            return []
        shape_name = new_name + "/shape"
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(target, np.int64), shape_name))
        node.input[k] = new_name
        return [onnx.helper.make_node("Expand", [name, shape_name], [new_name], name=new_name + "/n")]
    return None


def full_rank_constants(model: onnx.ModelProto, shapes: dict | None = None) -> int:
    """Give, in place, every one-element constant (initializer) input of a :data:`BROADCAST_OPS`
    node that is broadcast against a tensor whose last dimension is 1 (statically) that tensor's
    rank, with leading 1s (a shared constant gets one copy per rank); returns how many inputs were
    rewired. Only that case is slow, and only it is touched: onnxruntime's fusions (LayerNorm,
    Gelu, ...) look for scalar constants elsewhere. ``shapes``: :func:`tensor_dims` of ``model``
    (inferred when None)."""
    shapes = shapes or tensor_dims(model)
    if shapes is None:
        return 0
    consts = {t.name: t for t in model.graph.initializer}
    made: dict[tuple[str, int], str] = {}
    rewired = 0
    for node in model.graph.node:
        if node.op_type not in BROADCAST_OPS:
            continue
        against = [shapes.get(i) for i in node.input if i and i not in consts]
        if not against or any(d is None or not d or d[-1] != 1 for d in against):
            continue
        rank = max(len(d) for d in against)  # type: ignore[arg-type]
        for k, name in enumerate(node.input):
            t = consts.get(name)
            if t is None or len(t.dims) >= rank or int(np.prod(t.dims)) != 1:
                continue
            key = (name, rank)
            if key not in made:
                made[key] = f"{name}/rank{rank}"
                array = numpy_helper.to_array(t).reshape((1,) * rank)
                model.graph.initializer.append(numpy_helper.from_array(array, made[key]))
            node.input[k] = made[key]
            rewired += 1
    return rewired


@dataclass
class SessionGraph:
    """A session's graph and how to feed its weight inputs."""

    model: onnx.ModelProto
    #: Conv weight inputs the graph reads as a MatMul's or a depthwise sum's, and how each is fed
    #: (:func:`~chipsim.compiler.conv_matmul.conv_inputs_as_matmul`)
    weight_taps: dict[str, WeightFeed] = field(default_factory=dict)
    #: inputs fed expanded over trailing dimensions, to this shape (:func:`expand_short_spans`)
    expanded: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def feed(self, name: str, array: np.ndarray) -> np.ndarray:
        """What the session takes for input ``name`` of the compiled graph (a read-out's weights
        or scales): ``array``, a contiguous copy of its live taps (:class:`WeightFeed`), or a copy
        expanded."""
        shape = self.expanded.get(name)
        if shape is not None:
            return np.broadcast_to(array, shape).copy()
        feed = self.weight_taps.get(name)
        return array if feed is None else feed(array)


def session_graph(graph: bytes | onnx.ModelProto, *, inputs_binding: bool) -> SessionGraph:
    """The graph a session runs for a compiled ``graph`` (a copy when given a ModelProto):
    :func:`full_rank_constants`, and for weights bound as inputs
    :func:`~chipsim.compiler.conv_matmul.conv_inputs_as_matmul`."""
    model = onnx.ModelProto()
    if isinstance(graph, bytes):
        model.ParseFromString(graph)
    else:
        model.CopyFrom(graph)
    taps = conv_inputs_as_matmul(model) if inputs_binding else {}
    shapes = tensor_dims(model)  # one inference for both: neither changes a tensor's shape the other reads
    expanded: dict[str, tuple[int, ...]] = {}
    if shapes is not None:
        full_rank_constants(model, shapes)
        expand_short_spans(model, expanded, shapes)
    return SessionGraph(model, taps, expanded)
