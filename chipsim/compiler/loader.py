"""Loading an ONNX model held in memory, its checks, and what the rewriters read from it.

Never reads a path a model names (external data is refused here; :mod:`.archive` resolves it
inside an uploaded archive's private folder), so an upload cannot make the chip read a file. New
loader features (symbolic dims, other float types, other op domains)
belong here: everything after this module sees a checked ``onnx.ModelProto``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chipsim.compiler.light_copy import as_inputs
from chipsim.compiler.plan import CompileError

if TYPE_CHECKING:
    from chipsim.compiler.model_session import ModelSession

MIN_OPSET = 13
#: protobuf's limit on one serialised message (2 GiB − 1 bytes), which every ONNX model the chip
#: parses, stores and recompiles is: ~536M float32 weights. 500M float32 weights (2.0e9 bytes)
#: parse, check and serialise on this host's onnx 1.23 / protobuf 7.36 (upb).
MAX_MODEL_BYTES = (1 << 31) - 1
#: The default ONNX operator domain, by either of its names: only its nodes are candidates for the
#: chip's rewriters. Nodes of other domains pass through digitally when onnxruntime runs them
#: (checked by :mod:`chipsim.compiler.runnable`).
ONNX_DOMAINS = ("", "ai.onnx")


def load_model(model_bytes: bytes) -> onnx.ModelProto:
    """Parse and validate an ONNX model held in memory. Never reads paths named by the model."""
    if not isinstance(model_bytes, (bytes, bytearray)) or not model_bytes:
        raise CompileError("model: empty upload; expected an ONNX file")
    if len(model_bytes) > MAX_MODEL_BYTES:
        raise CompileError(
            f"model: {len(model_bytes)} bytes, more than protobuf's limit of {MAX_MODEL_BYTES} bytes on one ONNX model"
        )
    try:
        model = onnx.load_from_string(bytes(model_bytes))
    except Exception as err:  # protobuf raises several types
        raise CompileError(f"model: not a valid ONNX protobuf ({type(err).__name__})") from None
    for tensor in all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            raise CompileError(
                f"model: tensor {tensor.name!r} is stored in an external data file; the chip never reads files "
                "named by a model. Upload a .zip or .tar holding the model and its data files, or save the model "
                "with its weights inside (onnx.save(model, path, save_as_external_data=False))."
            )
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise CompileError(f"model: malformed ONNX ({str(err).splitlines()[0][:300]})") from None
    opset = next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), 0)
    if opset < MIN_OPSET:
        raise CompileError(f"model: opset {opset} is too old; export with opset ≥ {MIN_OPSET} (e.g. opset_version=17)")
    alias_constant_identities(model)
    return model


def alias_constant_identities(model: onnx.ModelProto) -> None:
    """Read initializers directly where the model reads them through ``Identity`` nodes (torch's
    exporter writes one per duplicate of an identical initializer, e.g. the cloned layers of an
    ``nn.TransformerEncoder``), so those weights are constants, not run-time values. In place;
    an Identity whose output is a graph output stays."""
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.domain in ONNX_DOMAINS and node.output[0] not in outputs:
            src = alias.get(node.input[0], node.input[0])
            if src in inits:
                alias[node.output[0]] = src
    if not alias:
        return
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def model_inputs(model_bytes: bytes) -> list[dict[str, Any]]:
    """The inputs (name, dtype, shape) a chip programmed from this model takes, as in its
    meta, read without compiling: data can be checked against them before programming."""
    model = load_model(model_bytes)
    return io_specs(model.graph.input, {t.name for t in model.graph.initializer})


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the model: initializers, tensor attributes, subgraph initializers."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
    for sub in subgraphs(model.graph):
        yield from sub.initializer


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The bodies of control-flow nodes (If, Loop, Scan), recursively."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
                yield from subgraphs(attr.g)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and outputs of ``Constant`` nodes (torch sometimes exports weights so)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return consts


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes of every tensor with symbolic input dims set to 1 (per-sample shapes)."""
    # the large weights as inputs of their shape: inference reads no more of them, and its
    # serialisation of the model no longer copies them
    declared = {i.name for i in model.graph.input}
    init_names = {t.name for t in model.graph.initializer}
    m = as_inputs(model)
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = 1
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as err:
        raise CompileError(f"model: shape inference failed ({str(err).splitlines()[0][:200]})") from None
    shapes: dict[str, list[int | None]] = {}
    for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]:
        if vi.name in init_names and vi.name not in declared:
            continue  # a weight made an input here: not listed, as before
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def probe_shapes(model: onnx.ModelProto, names: list[str], session: ModelSession | None = None) -> dict[str, list[int]]:
    """Shapes of ``names`` from one onnxruntime run on zeros, symbolic input dims set to 1 (as
    :func:`static_shapes` sets them). For tensors ONNX shape inference leaves without a rank
    (after an op it has no inference for, e.g. ``ai.onnx.ml.Scaler``); empty if the model has an
    input of unknown rank or the run fails on zeros. ``session``: the compiler's shared session of
    ``model`` exposing ``names`` (one is built when None)."""
    from chipsim.compiler.model_session import ModelSession  # onnxruntime only on this fallback path

    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for spec in io_specs(model.graph.input, init_names):
        vi = next(v for v in model.graph.input if v.name == spec["name"])
        if not vi.type.tensor_type.HasField("shape"):
            return {}
        feeds[spec["name"]] = np.zeros(
            [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]], np.dtype(spec["dtype"])
        )
    try:
        values = (session or ModelSession(model, names)).run(names, feeds)
    except Exception:  # a model that cannot run on zeros keeps its unknown ranks
        return {}
    return {n: list(v.shape) for n, v in values.items()}


def io_specs(values, init_names: set[str]) -> list[dict[str, Any]]:
    """Name, numpy dtype name and shape (symbolic dims by name) of graph inputs or outputs,
    leaving out initializers listed as inputs. bf16 values are float32 (see float_types)."""
    out = []
    for vi in values:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        # bf16 graph inputs/outputs are float32 holding bf16 values on the chip (float_types.py)
        as_float = not tt.elem_type or tt.elem_type == TensorProto.BFLOAT16
        out.append(
            {
                "name": vi.name,
                "dtype": "float32" if as_float else helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim],
            }
        )
    return out
