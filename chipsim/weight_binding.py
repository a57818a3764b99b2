"""How a chip runtime binds its read-out weights to the compiled graph: embedded as initializers
(constants onnxruntime prepacks) up to :data:`INITIALIZERS_MAX_BYTES` of weights, else fed as
inputs. Sizes in bytes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from chipsim.compiler import WEIGHT_INPUTS
from chipsim.ort_session import cpu_session

#: Weight inputs (bytes, all tiles) above which an ``initializers`` runtime binds them as inputs:
#: 4M analog weights on 'pcm' (four float32 products per weight), 16M on a linear profile. Above it
#: the embedded copies cost more than the few percent of speed they buy (resnet18, 11.7M weights:
#: 2.96 vs 3.76 samples/s at batch 1, 3.06 vs 2.89 at batch 8, initializers vs inputs, 3
#: interleaved rounds), and the serialised graph nears protobuf's 2 GiB limit.
INITIALIZERS_MAX_BYTES = 64 << 20


def weight_input_bytes(inputs: Iterable[onnx.ValueInfoProto]) -> int:
    """Bytes of the float32 weight inputs among a compiled graph's ``inputs`` (static shapes)."""
    total = 0
    for i in inputs:
        if i.name.startswith("chip/") and i.name.rsplit("/", 1)[-1] in WEIGHT_INPUTS:
            total += 4 * int(np.prod([d.dim_value for d in i.type.tensor_type.shape.dim]))
    return total


def initializer_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The compiled graph without its weight inputs (in place): per age, the read-out weights
    are added to a copy as initializers (constants, so onnxruntime prepacks them and applies
    its layout optimisations)."""
    keep = [
        vi
        for vi in model.graph.input
        if not (vi.name.startswith("chip/") and vi.name.rsplit("/", 1)[-1] in WEIGHT_INPUTS)
    ]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def conv_weights_embedded(graph: onnx.ModelProto, max_bytes: int) -> tuple[onnx.ModelProto, frozenset[str]]:
    """For a session graph with its weights as inputs: a copy without the weight inputs that Conv
    nodes read (to be embedded per read-out by :func:`embedded_session`: onnxruntime runs a Conv
    with fed weights image by image), and their names; no names (and an empty graph) when there
    are none or they exceed ``max_bytes``."""
    inputs = {vi.name: vi for vi in graph.graph.input}
    names = frozenset(n.input[1] for n in graph.graph.node if n.op_type == "Conv" and n.input[1] in inputs)
    model = onnx.ModelProto()
    if not names or weight_input_bytes(inputs[k] for k in names) > max_bytes:
        return model, frozenset()
    model.CopyFrom(graph)
    keep = [vi for vi in model.graph.input if vi.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model, names


def embedded_session(init_graph: onnx.ModelProto, weights: dict[str, np.ndarray], threads: int) -> ort.InferenceSession:
    """A session of ``init_graph`` (:func:`initializer_graph`) with ``weights`` embedded as
    initializers, on ``threads`` threads; empties ``weights``.

    The weights are embedded in a copy of the graph rather than passed with
    SessionOptions.add_initializer: with onnxruntime 1.32, ORT_ENABLE_ALL's Conv layout
    transformation (NCHWc) packed the graph's placeholder values instead of the add_initializer
    ones (wrong Conv outputs), and without that optimisation Conv runs ~10x slower. Each copy
    is dropped once the next exists (arrays, protobuf, serialised bytes), so at most two are
    alive besides onnxruntime's."""
    model = onnx.ModelProto()
    model.CopyFrom(init_graph)
    for name in list(weights):  # in order: the graph bytes are those of earlier versions
        model.graph.initializer.append(numpy_helper.from_array(weights.pop(name), name))
    data = model.SerializeToString()
    del model
    return cpu_session(data, threads)
