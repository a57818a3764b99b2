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
and are not operations of the chip), priced by :func:`~chipsim.cost.digital_ops.node_ops`.

This module adds up the whole graph; the parts live in :mod:`~chipsim.cost.shapes` (batch and
input shapes, shape inference), :mod:`~chipsim.cost.analog_layers` (plans matched to nodes, counts
per layer) and :mod:`~chipsim.cost.digital_ops` (operations per digital node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from chipsim.cost.analog_layers import (
    RECURRENT_OPS,
    AnalogLayerCounts,
    chip_plans,
    layer_counts,
    node_plans,
    recurrent_counts,
)
from chipsim.cost.digital_ops import node_ops
from chipsim.cost.errors import CostError
from chipsim.cost.shapes import fix_input_shapes, shape_skeleton, static_shapes
from chipsim.state import ChipState


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


def count_graph(
    model: onnx.ModelProto,
    plans: Sequence[Mapping[str, Any]],
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> GraphCounts:
    """Counts of ``model`` (the ONNX model a chip was programmed from) with its compiled
    ``plans``, at ``batch`` or at the given input shapes (see :func:`~chipsim.cost.shapes.fix_input_shapes`)."""
    fixed, batch, warnings = fix_input_shapes(model, batch, input_shapes)
    shapes = static_shapes(fixed)
    layers: list[AnalogLayerCounts] = []
    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    matched: set[int] = set()
    nodes = 0
    for node in fixed.graph.node:
        group = node_plans(node, plans)
        if group and node.op_type not in RECURRENT_OPS:
            matched.update(group)
            layers.append(layer_counts(node, [plans[i] for i in group], shapes, batch, warnings))
            continue
        if group:  # recurrent: each of W, R (per direction) is its own layer; the gates are digital
            matched.update(group)
            layers.extend(recurrent_counts(node, plans[i], shapes, batch) for i in group)
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


def count_chip(
    chip: ChipState, batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> GraphCounts:
    """:func:`count_graph` of a programmed chip."""
    plans = chip_plans(chip)
    model = shape_skeleton(onnx.load_from_string(chip.attachments["model.onnx"]))
    return count_graph(model, plans, batch, input_shapes)
