"""What a model may allocate: every intermediate tensor bounded before a chip is programmed.

A few kilobytes of ONNX can ask for gigabytes at every inference (``ConstantOfShape([64000,
64000])`` is 16 GB of float32 from a 2.8 KB file; issue #15, finding 7). This pass bounds a
model's tensors at the largest batch it will be served with:

1. shape inference of every intermediate with each graph input's first symbolic dimension set
   to ``limits.batch`` and every other symbolic dimension to 1 (``onnx`` with data propagation,
   so shapes computed from constants, ``Shape`` → ``Gather`` → ``ConstantOfShape`` included, are
   static); each tensor must hold at most ``limits.max_tensor_elements`` and all of them
   together at most ``limits.max_total_elements`` (an upper bound on activation memory:
   onnxruntime reuses buffers, so the peak is lower);
2. a tensor whose shape stays unknown is refused when an op that sizes its output from input
   *values* makes it (``ConstantOfShape``, ``Expand``, ``Tile``, ``Range``, ``Resize``, …, or a
   ``Loop``): its size then depends on the request's data and no bound holds;
3. any other unknown shape (gaps of shape inference) is measured by a trial run of the model
   on zeros at batch 1 with every such tensor exposed, its size scaled linearly to
   ``limits.batch`` (conservative for tensors that do not grow with the batch). The trial costs
   what one single-sample inference costs.

Sparse initializers are refused: the runtime densifies them, so their dense size is what they
cost, and no model the chip maps needs one.

The limits are parameters (the service passes its settings); errors are :class:`CompileError`
naming the model, the node and the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from chipsim.compiler.plan import CompileError

#: Ops whose output shape is read from the values of these inputs (by index), so that a
#: computed input makes the output's size depend on the request's data.
VALUE_SIZED_OPS: dict[str, tuple[int, ...]] = {
    "ConstantOfShape": (0,),
    "Expand": (1,),
    "Tile": (1,),
    "Range": (0, 1, 2),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Pad": (1,),
    "OneHot": (1,),
    "Loop": (0,),
    "CenterCropPad": (1,),
}


class AllocationError(CompileError):
    """A model over :class:`AllocationLimits`; ``limit`` says which: ``"tensor"``
    (``max_tensor_elements``) or ``"total"`` (``max_total_elements``)."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class AllocationLimits:
    """Bounds of a model's intermediate tensors. ``batch``: the first dimension graph inputs
    are evaluated at (the largest batch the model will be served with); elements are counted
    whatever their dtype (a float32 element is 4 bytes)."""

    batch: int
    max_tensor_elements: int
    max_total_elements: int

    def __post_init__(self) -> None:
        for name in ("batch", "max_tensor_elements", "max_total_elements"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class AllocationReport:
    """What the check found: the largest tensor (name, elements), the total, and the tensors
    whose size a trial run measured (names)."""

    largest: tuple[str, int]
    total_elements: int
    measured: tuple[str, ...] = ()


def refuse_sparse(model: onnx.ModelProto) -> None:
    """CompileError naming a sparse initializer or a ``Constant`` with a sparse value."""
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for sparse in g.sparse_initializer:
            dims = "×".join(str(d) for d in sparse.dims)
            raise CompileError(
                f"model: sparse_initializer {sparse.values.name!r} ({dims}) is not supported; store "
                "it as a dense initializer (onnx.numpy_helper.from_array)"
            )
        for node in g.node:
            for attr in node.attribute:
                if attr.name == "sparse_value" and attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    raise CompileError(
                        f"model: node {node.name or node.op_type!r} is a Constant with a sparse_value, "
                        "which is not supported; use a dense 'value'"
                    )
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)


def _at_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init_names = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = batch if i == 0 else 1
    return m


def _inferred(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    try:
        m = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:
        raise CompileError(f"model: shape inference failed ({str(err).splitlines()[0][:200]})") from None
    return {vi.name: vi.type for vi in [*m.graph.value_info, *m.graph.output]}


def _elements(t: onnx.TypeProto | None) -> int | None:
    """Elements of a tensor type with a fully known shape, else None."""
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if any(not d.HasField("dim_value") or d.dim_value < 0 for d in dims):
        return None
    return math.prod(d.dim_value for d in dims)


def _check_one(name: str, node: onnx.NodeProto, elements: int, limits: AllocationLimits, how: str) -> None:
    if elements > limits.max_tensor_elements:
        raise AllocationError(
            f"model: tensor {name!r} (output of {node.op_type} node {node.name or node.op_type!r}) holds "
            f"{elements:,} elements at batch {limits.batch} ({how}), more than the limit of "
            f"{limits.max_tensor_elements:,} per tensor",
            "tensor",
        )


def _trial_elements(
    model: onnx.ModelProto, names: list[str], types: dict[str, onnx.TypeProto], threads: int | None
) -> dict[str, int]:
    """Elements of ``names`` in one run of ``model`` on zeros at batch 1 (symbolic dims 1)."""
    from chipsim.ort_session import cpu_session  # onnxruntime only when a trial is needed

    m = _at_batch(model, 1)
    outputs = {o.name for o in m.graph.output}
    for name in names:
        if name in outputs:
            continue
        elem = types[name].tensor_type.elem_type if name in types else 0
        if not elem:
            raise CompileError(f"model: the type of tensor {name!r} cannot be inferred, so its size cannot be bounded")
        m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    init_names = {t.name for t in m.graph.initializer}
    feeds = {}
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        tt = inp.type.tensor_type
        feeds[inp.name] = np.zeros([d.dim_value for d in tt.shape.dim], helper.tensor_dtype_to_np_dtype(tt.elem_type))
    try:
        sess = cpu_session(m.SerializeToString(), threads=threads or 1)
        values = sess.run(names, feeds)
    except Exception as err:
        raise CompileError(
            f"model: the sizes of its tensors {names[:3]} cannot be inferred and a trial run on "
            f"zeros failed ({str(err).splitlines()[0][:200]})"
        ) from None
    return {n: int(np.asarray(v).size) for n, v in zip(names, values)}


def check_allocations(
    model: onnx.ModelProto, limits: AllocationLimits | None, threads: int | None = None
) -> AllocationReport | None:
    """Refuse a model that may allocate more than ``limits`` (see the module's docstring);
    ``None`` checks sparse initializers only. Raises CompileError."""
    refuse_sparse(model)
    if limits is None:
        return None
    types = _inferred(_at_batch(model, limits.batch))
    consts = {t.name for t in model.graph.initializer}
    consts.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    total, largest = 0, ("", 0)
    unknown: list[tuple[str, onnx.NodeProto]] = []
    for node in model.graph.node:
        for name in node.output:
            if not name:
                continue
            n = _elements(types.get(name))
            if n is None:
                computed = [
                    node.input[i]
                    for i in VALUE_SIZED_OPS.get(node.op_type, ())
                    if i < len(node.input) and node.input[i] and node.input[i] not in consts
                ]
                if computed or node.op_type == "Loop":
                    raise CompileError(
                        f"model: the size of tensor {name!r} ({node.op_type} node {node.name or node.op_type!r}) "
                        f"depends on values computed at run time (input {computed[0] if computed else 'M'!r}), "
                        "so its memory cannot be bounded; compute that shape from constants"
                    )
                unknown.append((name, node))
                continue
            _check_one(name, node, n, limits, "static shape inference")
            total += n
            largest = max(largest, (name, n), key=lambda t: t[1])
    measured: dict[str, int] = {}
    if unknown:
        measured = _trial_elements(model, [name for name, _ in unknown], types, threads)
        for name, node in unknown:
            n = measured[name] * limits.batch
            _check_one(name, node, n, limits, "a trial run at batch 1, scaled")
            total += n
            largest = max(largest, (name, n), key=lambda t: t[1])
    if total > limits.max_total_elements:
        raise AllocationError(
            f"model: its intermediate tensors hold {total:,} elements together at batch "
            f"{limits.batch}, more than the limit of {limits.max_total_elements:,} (largest: "
            f"{largest[0]!r}, {largest[1]:,})",
            "total",
        )
    return AllocationReport(largest=largest, total_elements=total, measured=tuple(measured))
