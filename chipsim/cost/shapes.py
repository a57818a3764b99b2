"""Input shapes of a cost estimate: the batch and given input shapes validated and fixed into a copy
of the model, and every tensor's static shape from ONNX shape inference."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from chipsim.cost.errors import CostError

#: Largest batch an estimate accepts (shape inference cost does not depend on it).
MAX_BATCH = 1 << 24


def check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or not (1 <= batch <= MAX_BATCH):
        raise CostError(f"batch: expected an integer in [1, {MAX_BATCH}], got {batch!r}", field="batch")
    return batch


def check_shape(shape: Any, field: str) -> list[int]:
    """A shape as a list of Python ints; :class:`CostError` naming ``field`` otherwise."""
    try:
        dims = [operator.index(v) for v in shape]
    except TypeError:
        raise CostError(f"{field}: a shape is a list of integers, got {shape!r}", field=field) from None
    return dims


#: Initializers larger than this (bytes) lose their values in :func:`shape_skeleton`.
SKELETON_MIN_BYTES = 4096


def _tensor_bytes(t: onnx.TensorProto) -> int:
    return len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data))


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place) without the values of its large initializers: each keeps its
    name, type and dims, its data marked external as ``onnx.load(..., load_external_data=False)``
    leaves a model. Shape inference needs only those (the values it propagates are shape tensors,
    a few bytes each), so a cost estimate of a 500M-weight model holds kilobytes, not its 2 GB
    (keeping the whole parsed model made POST /program of a 500M-weight model peak at 20.6 GiB
    instead of 16.9 GiB, bench.scale_http)."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or _tensor_bytes(t) <= SKELETON_MIN_BYTES:
            continue
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(name)
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value="values-dropped-for-the-cost-estimate")
    return model


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    init = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def fix_input_shapes(
    model: onnx.ModelProto, batch: int | None, input_shapes: Mapping[str, Sequence[int]] | None
) -> tuple[onnx.ModelProto, int, list[str]]:
    """A copy of ``model`` with every input dimension fixed: from ``input_shapes`` where given,
    else a symbolic leading dimension → ``batch`` and any other symbolic dimension → 1 (with a
    warning). Returns the copy, the batch and the warnings. :class:`CostError` names the field."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inputs = data_inputs(m)
    names = {i.name for i in inputs}
    shapes = dict(input_shapes or {})
    for name in shapes.keys() - names:
        raise CostError(
            f"inputs.{name}: the model has no input {name!r}; it takes {sorted(names)}", field=f"inputs.{name}"
        )
    warnings: list[str] = []
    batches: set[int] = set()
    for inp in inputs:
        tt = inp.type.tensor_type
        given = shapes.get(inp.name)
        if given is not None:
            given = check_shape(given, f"inputs.{inp.name}")
            if tt.HasField("shape") and len(given) != len(tt.shape.dim):
                raise CostError(
                    f"inputs.{inp.name}: expected {len(tt.shape.dim)} dimensions, got shape {given}",
                    field=f"inputs.{inp.name}",
                )
            if any(v < 1 for v in given):
                raise CostError(
                    f"inputs.{inp.name}: dimensions must be positive, got {given}", field=f"inputs.{inp.name}"
                )
            for d, v in zip(tt.shape.dim, given):
                if d.HasField("dim_value") and d.dim_value != v:
                    raise CostError(
                        f"inputs.{inp.name}: shape {given} does not fit the model's "
                        f"{[x.dim_value or x.dim_param for x in tt.shape.dim]}",
                        field=f"inputs.{inp.name}",
                    )
            tt.ClearField("shape")
            for v in given:
                tt.shape.dim.add().dim_value = v
            batches.add(given[0] if given else 1)
            continue
        if not tt.HasField("shape"):
            raise CostError(
                f"inputs.{inp.name}: the model does not declare its shape; pass the input shapes",
                field=f"inputs.{inp.name}",
            )
        b = 1 if batch is None else batch
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                if axis == 0 and batch is not None and d.dim_value != batch:
                    raise CostError(
                        f"batch: input {inp.name!r} has a fixed batch dimension of {d.dim_value}", field="batch"
                    )
                continue
            label = d.dim_param or "?"
            d.Clear()
            d.dim_value = b if axis == 0 else 1
            if axis > 0:
                warnings.append(
                    f"input {inp.name!r}: symbolic dimension {label!r} (axis {axis}) taken as 1; "
                    "pass the input shapes for the real size"
                )
        dims = tt.shape.dim
        batches.add(dims[0].dim_value if len(dims) else 1)
    if len(batches) > 1:
        raise CostError(f"batch: the inputs disagree on the batch size ({sorted(batches)})", field="batch")
    eff = batches.pop() if batches else (batch or 1)
    if batch is not None and eff != batch:
        raise CostError(f"batch: {batch} differs from the inputs' leading dimension {eff}", field="batch")
    return m, check_batch(eff), warnings


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Shape of every tensor of a model whose inputs are fixed (None where not inferred)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # onnx raises several types
        raise CostError(
            f"chip: shape inference failed on the chip's model ({str(err).splitlines()[0][:200]})"
        ) from None
    shapes: dict[str, tuple[int, ...] | None] = {}
    for t in inferred.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            shapes.setdefault(vi.name, None)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        shapes[vi.name] = None if any(d is None for d in dims) else tuple(dims)  # type: ignore[misc]
    return shapes
