"""Analog layer counts: the chip's compiled plans matched to the model's weight-bearing nodes, and
per node (or per W/R layer of a recurrent node) its tiles, conversions and MVMs over the batch
(the rules in :mod:`chipsim.cost.counts`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from chipsim.cost.errors import CostError
from chipsim.state import ChipState

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
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})


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


def node_plans(node: onnx.NodeProto, plans: Sequence[Mapping[str, Any]]) -> list[int]:
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


def _tile_rows(p: Mapping[str, Any]) -> list[int]:
    return [int(e) - int(a) for a, e in p["tiles"]]


def layer_counts(
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


def recurrent_counts(node: onnx.NodeProto, p: Mapping[str, Any], shapes, batch: int) -> AnalogLayerCounts:
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
