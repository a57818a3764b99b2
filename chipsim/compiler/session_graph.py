"""The graph a chip's onnxruntime session runs: the compiled graph (stored with the chip) with
exact rewrites that only change how fast onnxruntime runs it, applied when a session is built.
They change no stored byte, so every stored chip gets them.

- :func:`full_rank_constants` (every session): a one-element constant broadcast against a
  tensor whose last dimension is 1 gets that tensor's rank. onnxruntime 1.32's CPU broadcasting
  of a rank-0 or rank-1 scalar against such a tensor (a Conv's output on 1x1 pixels,
  ``[N, C, 1, 1]``) walks it element by element: ``Add([64, 512, 1, 1], scalar)`` 0.32 ms
  against 0.008 ms for ``[64, 512]`` or for a ``[1, 1, 1, 1]`` constant (200 calls, one thread,
  a one-off microbenchmark); the lowering's IR-drop and noise arithmetic is such ops.
- :func:`chipsim.compiler.conv_matmul.conv_inputs_as_matmul` (``inputs`` binding): Conv tiles
  on few output pixels as one batched MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from chipsim.compiler.conv_matmul import conv_inputs_as_matmul

__all__ = ["SessionGraph", "full_rank_constants", "session_graph"]

#: Elementwise ops whose inputs broadcast numpy-style (prepending 1s to one changes nothing).
BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"})


def full_rank_constants(model: onnx.ModelProto) -> int:
    """Give, in place, every one-element constant (initializer) input of a :data:`BROADCAST_OPS`
    node that is broadcast against a tensor whose last dimension is 1 (statically) that tensor's
    rank, with leading 1s (a shared constant gets one copy per rank); returns how many inputs were
    rewired. Only that case is slow, and only it is touched: onnxruntime's fusions (LayerNorm,
    Gelu, ...) look for scalar constants elsewhere. Shapes from ONNX shape inference (with data
    propagation: the per-MVM noise is reshaped to the shape of the tile's output)."""
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 — e.g. a graph over protobuf's 2 GiB: no rewrite, same outputs
        return 0
    shapes = {
        vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        if vi.type.tensor_type.HasField("shape")
    }
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
    #: weight inputs fed in part: the kernel rows and columns of the taps the graph reads
    #: (:func:`~chipsim.compiler.conv_matmul.conv_inputs_as_matmul`)
    weight_taps: dict[str, tuple[slice, slice]] = field(default_factory=dict)

    def feed(self, name: str, weights: np.ndarray) -> np.ndarray:
        """What the session takes for weight input ``name`` of the compiled graph: ``weights``,
        or a contiguous copy of its live taps."""
        taps = self.weight_taps.get(name)
        if taps is None or (taps[0].start is None and taps[1].start is None):
            return weights
        return np.ascontiguousarray(weights[:, :, taps[0], taps[1]])


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
    full_rank_constants(model)
    return SessionGraph(model, taps)
