"""Operation counts of a programmed chip's model at a batch size, from its compiled layers and
ONNX shape inference.

Analog layers come from the chip's compiled plan (``chip.meta["plans"]``: one entry per
programmed layer, a grouped Conv giving one — g of them in chips programmed before), matched by
op and weight name to the weight-bearing nodes of the model the chip was programmed from
(``chip.attachments["model.onnx"]``): a layer read by several nodes (a shared initializer) is
counted at each of them. A recurrent node (LSTM, GRU, RNN) gives one row per W and R layer.
Per application of a layer to one input vector (an *MVM*) and per tile ``k`` with ``rows_k``
inputs and ``cols`` outputs programmed:

- one tile MVM; ``rows_k·cols`` analog MACs; ``rows_k`` DAC and ``cols`` ADC conversions;
- digital: ``(tiles − 1)·cols`` additions of the tiles' partial sums, plus ``cols`` bias
  additions when the node has a bias (Gemm ``C``, Conv ``B``).

Applications per sample: 1 for a Dense layer on a vector, ``H_out·W_out`` for a Conv, ``T``
for a MatMul applied per token: the node's output elements divided by its output channels,
read from ONNX shape inference at the requested batch.

Digital operations: every other node of that model (the compiler keeps them unchanged; the
compiled graph's extra nodes emulate the analog periphery — noise, IR drop, quantisation —
and are not operations of the chip), priced by :func:`node_ops`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from chipsim.cost.errors import CostError
from chipsim.state import ChipState

#: Largest batch an estimate accepts (shape inference cost does not depend on it).
MAX_BATCH = 1 << 24

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
_ANALOG_OPS = {
    "matmul": "MatMul",
    "matmul_left": "MatMul",
    "gemm": "Gemm",
    "conv": "Conv",
    "conv_transpose": "ConvTranspose",
    "lstm": "LSTM",
    "gru": "GRU",
    "rnn": "RNN",
}
_RECURRENT = frozenset({"lstm", "gru", "rnn"})
_RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})


@dataclass(frozen=True)
class AnalogLayerCounts:
    """One weight-bearing node of the model on the chip (all groups of a grouped Conv), counted
    over the whole batch. Per-MVM figures do not depend on the batch; ``mvms`` does."""

    name: str  # the model's node name
    kind: str  # "matmul" | "gemm" | "conv"
    chip_layers: tuple[str, ...]  # the chip's layers (one; one per Conv group in chips programmed before)
    tiles: int  # Σ over groups
    rows: int  # inputs per MVM = DAC conversions per MVM
    cols: int  # outputs per MVM
    weights: int  # programmed weights = analog MACs per MVM
    adc_per_mvm: int  # Σ_groups tiles·cols
    digital_per_mvm: int  # partial-sum and bias additions per MVM
    mvms: int  # applications over the batch (each runs on every tile at once)

    @property
    def tile_mvms(self) -> int:
        return self.tiles * self.mvms

    @property
    def analog_macs(self) -> int:
        return self.weights * self.mvms

    @property
    def dac_conversions(self) -> int:
        return self.rows * self.mvms

    @property
    def adc_conversions(self) -> int:
        return self.adc_per_mvm * self.mvms

    @property
    def digital_ops(self) -> int:
        return self.digital_per_mvm * self.mvms


@dataclass(frozen=True)
class DigitalCounts:
    """The model's nodes outside the crossbars, over the whole batch."""

    nodes: int
    ops: int
    by_op: dict[str, int]  # op type → operations
    uncounted: tuple[str, ...] = ()  # nodes whose shapes shape inference could not give


@dataclass(frozen=True)
class GraphCounts:
    batch: int
    layers: tuple[AnalogLayerCounts, ...]
    digital: DigitalCounts
    warnings: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- shapes
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


# --------------------------------------------------------------------------- digital ops
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


# --------------------------------------------------------------------------- analog layers
def chip_plans(chip: ChipState) -> list[dict[str, Any]]:
    plans = chip.meta.get("plans")
    if not plans or "model.onnx" not in chip.attachments:
        raise CostError(f"chip: {chip.chip_id!r} was not programmed from an ONNX model (no compiled plan)")
    return plans


def _applications(kind: str, out: tuple[int, ...]) -> int:
    """MVMs a node's output needs: its elements over its channels (axis 1 for Conv and
    ConvTranspose, axis −2 for MatMul(W, x), last axis else)."""
    if kind in ("conv", "conv_transpose"):
        channels = out[1]
    elif kind == "matmul_left":
        channels = out[-2]
    else:
        channels = out[-1]
    return math.prod(out) // channels


def _plan_weight_input(plan: Mapping[str, Any]) -> int:
    """Which input of its node carries a plan's weight: 0 for MatMul(W, x), 1 else (recurrent
    ops: W is input 1, R input 2, matched by name)."""
    return 0 if plan.get("kind") == "matmul_left" else 1


def _node_plans(node: onnx.NodeProto, plans: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the plans whose layers ``node`` reads: same op, the plan's weight in the
    node's weight position (a layer shared by several nodes matches each of them)."""
    out = []
    for i, p in enumerate(plans):
        if _ANALOG_OPS.get(p.get("kind", "")) != node.op_type:
            continue
        if p.get("kind") in _RECURRENT:
            if p.get("weight_name") in node.input[1:3]:
                out.append(i)
            continue
        k = _plan_weight_input(p)
        if len(node.input) > k and node.input[k] == p.get("weight_name"):
            out.append(i)
    return out


def count_graph(
    model: onnx.ModelProto,
    plans: Sequence[Mapping[str, Any]],
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> GraphCounts:
    """Counts of ``model`` (the ONNX model a chip was programmed from) with its compiled
    ``plans``, at ``batch`` or at the given input shapes (see :func:`fix_input_shapes`)."""
    fixed, batch, warnings = fix_input_shapes(model, batch, input_shapes)
    shapes = static_shapes(fixed)
    layers: list[AnalogLayerCounts] = []
    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    matched: set[int] = set()
    nodes = 0
    for node in fixed.graph.node:
        group = _node_plans(node, plans)
        if group and node.op_type not in _RECURRENT_OPS:
            matched.update(group)
            layers.append(_layer_counts(node, [plans[i] for i in group], shapes, batch, warnings))
            continue
        if group:  # recurrent: each of W, R (per direction) is its own layer; the gates are digital
            matched.update(group)
            layers.extend(_recurrent_counts(node, plans[i], shapes, batch) for i in group)
        if node.op_type == "Constant":
            continue
        nodes += 1
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            uncounted.append(node.name or node.op_type)  # control flow: its body is not counted
            continue
        ops = node_ops(node, shapes)
        if ops is None:
            uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + ops
    missing = [i for i in range(len(plans)) if i not in matched]
    if missing:
        raise CostError(
            "chip: its stored model does not match its programmed layers "
            f"(matched {len(plans) - len(missing)} of {len(plans)}; first unmatched: "
            f"{plans[missing[0]].get('name')!r})"
        )
    if uncounted:
        warnings.append(
            f"{len(uncounted)} digital node(s) not counted (shape unknown or control flow): {uncounted[:5]}"
        )
    digital = DigitalCounts(nodes=nodes, ops=sum(by_op.values()), by_op=by_op, uncounted=tuple(uncounted))
    return GraphCounts(batch=batch, layers=tuple(layers), digital=digital, warnings=tuple(warnings))


def _tile_rows(p: Mapping[str, Any]) -> list[int]:
    return [int(e) - int(a) for a, e in p["tiles"]]


def _layer_counts(
    node: onnx.NodeProto, group: Sequence[Mapping[str, Any]], shapes, batch: int, warnings: list[str]
) -> AnalogLayerCounts:
    """One node's MVMs on its layer (or, in chips programmed before grouped Convs were one
    layer, its groups' layers). A grouped layer's tile holds one channel slice of every group:
    its DAC converts ``groups ×`` the tile's rows."""
    kind = group[0]["kind"]
    tiles = rows = cols = weights = adc = digital = 0
    for p in group:
        tile_rows = _tile_rows(p)
        c = int(p["cols"])
        tiles += len(tile_rows)
        rows += sum(tile_rows) * int(p.get("groups", 1))
        cols += c
        weights += sum(tile_rows) * c
        adc += len(tile_rows) * c
        digital += (len(tile_rows) - 1) * c  # Σ of the tiles' partial sums
    if len(node.input) > 2 and node.input[2]:
        digital += cols  # bias
    out = shapes.get(node.output[0])
    if out:
        mvms = _applications(kind, out)
    else:  # the compiler's per-sample shape (symbolic dims as 1) times the batch
        per = group[0]["out_shape"]
        mvms = batch * _applications(kind, tuple(per))
        warnings.append(
            f"layer {node.name or node.op_type!r}: output shape not inferred; MVMs from the compiled per-sample shape"
        )
    return AnalogLayerCounts(
        name=node.name or node.op_type,
        kind=kind,
        chip_layers=tuple(p["name"] for p in group),
        tiles=tiles,
        rows=rows,
        cols=cols,
        weights=weights,
        adc_per_mvm=adc,
        digital_per_mvm=digital,
        mvms=mvms,
    )


def _recurrent_counts(node: onnx.NodeProto, p: Mapping[str, Any], shapes, batch: int) -> AnalogLayerCounts:
    """One W or R layer of a recurrent node: W reads every step's input (T·N MVMs); R reads the
    hidden state at every step but a first one whose state is 0 (T or T − 1 reads per sample)."""
    tile_rows = _tile_rows(p)
    c = int(p["cols"])
    is_w = p.get("weight_name") == node.input[1]
    layout = next((int(a.i) for a in node.attribute if a.name == "layout"), 0)
    x = shapes.get(node.input[0])
    n = batch if x is None else x[1 - layout]
    steps = (p["out_shape"][1] if len(p["out_shape"]) > 2 else 1) if x is None else x[layout]
    if is_w:
        mvms = n * steps
    elif len(p["out_shape"]) > 2:  # a Scan: one read per step, but none at a first step whose state is 0
        no_state = len(node.input) <= 5 or not node.input[5]
        mvms = n * (p["out_shape"][1] if x is None else steps - no_state)
    else:  # unrolled: one read per step as compiled
        mvms = n * (1 + len(p.get("reads", [])))
    return AnalogLayerCounts(
        name=p["name"],
        kind=p["kind"],
        chip_layers=(p["name"],),
        tiles=len(tile_rows),
        rows=sum(tile_rows),
        cols=c,
        weights=sum(tile_rows) * c,
        adc_per_mvm=len(tile_rows) * c,
        digital_per_mvm=(len(tile_rows) - 1) * c,
        mvms=mvms,
    )


def count_chip(
    chip: ChipState, batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> GraphCounts:
    """:func:`count_graph` of a programmed chip."""
    plans = chip_plans(chip)
    return count_graph(onnx.load_from_string(chip.attachments["model.onnx"]), plans, batch, input_shapes)
