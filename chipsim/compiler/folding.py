"""Exact folds across layers for the lean lowering (graph format 4, :mod:`chipsim.compiler.lean`).

Between two analog layers P → N of a typical model sit only ops that commute with a positive
scale ``c`` (Relu, MaxPool, Flatten, Reshape, Identity, ``+ constant``), so N's DAC scale
``c = 1/(r·step)`` can be applied to P's output instead: it joins P's per-column ADC scale (the
runtime's scale input, :attr:`LayerPlan.out_factor`) and P's digital bias, and N's DAC keeps only
clip and round — one elementwise pass less per layer. On the way:

- a Relu moves into N's DAC clip (``clip(relu(x), −h, h) = clip(x, 0, h)``; MaxPool, Flatten and
  Reshape commute with Relu), so it costs no pass of its own;
- a MaxPool moves before P's ADC rounding when P is a one-tile Conv: ``max`` commutes with every
  non-decreasing elementwise map, and round, clip, ``× scale ≥ 0``, ``+ bias`` per channel and Relu
  all are, so the rest of P's periphery runs on the pooled (4× smaller) tensor;
- a LayerNormalization feeding N alone takes ``c`` into its γ and β.

Each fold is exact in real arithmetic; float results differ only in the last bits (where a value
lies exactly on a rounding boundary its code may differ by one, with probability ~1e-7).
Only layers read by one node fold (a shared layer's scale inputs serve every read).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from chipsim.compiler.lowering import input_unit, is_linear
from chipsim.profiles import ChipProfile

#: Ops between P and N that commute with a positive scale and carry it unchanged.
PASS_OPS = ("Relu", "MaxPool", "Flatten", "Reshape", "Identity")
#: Ops that commute with Relu (which may therefore move past them into N's clip).
RELU_COMMUTES = ("MaxPool", "Flatten", "Reshape", "Identity")
#: Ops whose output is never negative, and ops that keep a non-negative input non-negative.
NONNEG_OPS = ("Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Sqrt")
NONNEG_KEEPERS = (
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Slice",
)


@dataclass
class Folds:
    """What the lean lowering folds, by tensor and node (all keyed by output tensor names)."""

    #: producer P's output → factor on its outputs (ADC scales, bias)
    out_factor: dict[str, float] = field(default_factory=dict)
    #: N's output → the factor its input already carries (its DAC skips the multiply)
    prescaled: dict[str, float] = field(default_factory=dict)
    #: N's output → True when a Relu moved into its DAC clip (lower bound 0)
    relu_clip: dict[str, bool] = field(default_factory=dict)
    #: P's output → MaxPool attributes, the pool moved before its ADC rounding
    pool: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: digital node's output → what to do: "identity" (moved) or a factor for its constant operand
    digital: dict[str, Any] = field(default_factory=dict)

    def rewrite_digital(self, node: onnx.NodeProto, const) -> onnx.NodeProto:
        """``node`` after the folds: an Identity if it moved, its constants scaled if it carries a
        factor (``const(value)`` adds an initializer and returns its name)."""
        what = self.digital.get(node.output[0]) if node.output else None
        if what is None:
            return node
        if what == "identity":
            return helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, scaled in what.items():
            new.input[i] = const(scaled)
        return new


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def nonnegative(tensor: str, producers: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray]) -> bool:
    """True when ``tensor`` is provably ≥ 0 for every input (its producers, walked back)."""
    seen = 0
    while seen < 64:  # a bound on the walk; deeper chains are simply not proven
        seen += 1
        node = producers.get(tensor)
        if node is None:
            return False
        if node.op_type in NONNEG_OPS:
            return True
        if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in consts:
            return float(np.min(consts[node.input[1]])) >= 0 or nonnegative(node.input[0], producers, consts)
        if node.op_type == "Concat":
            return all(nonnegative(i, producers, consts) for i in node.input)
        if node.op_type not in NONNEG_KEEPERS:
            return False
        tensor = node.input[0]
    return False


def _analog_io(node: onnx.NodeProto, consts: dict[str, np.ndarray], readers: Counter) -> str | None:
    """The weight of a node the lean lowering can fold across (right-hand 2-D MatMul, Gemm
    without transA, Conv; its weight read by no other node), else None."""
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or node.input[1] not in consts:
        return None
    w = consts[node.input[1]]
    if readers[node.input[1]] != 1:
        return None
    if node.op_type == "MatMul" and w.ndim == 2 and node.input[0] not in consts:
        return node.input[1]
    if node.op_type == "Gemm" and not _attrs(node).get("transA", 0):
        return node.input[1]
    if node.op_type == "Conv":
        return node.input[1]
    return None


def _const_operand(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> int | None:
    """Index of the constant operand of a two-input Add, or None."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    hits = [i for i, t in enumerate(node.input) if t in consts]
    return hits[0] if len(hits) == 1 else None


def find_folds(
    model: onnx.ModelProto, consts: dict[str, np.ndarray], profile: ChipProfile, ranges: dict[str, float]
) -> Folds:
    """The folds of the lean lowering for ``model`` (see the module docstring); none for a linear
    profile (no DAC to fold) or a DAC without quantisation."""
    folds = Folds()
    if is_linear(profile) or profile.in_levels <= 0:
        return folds
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = Counter(i for n in graph.node for i in n.input)
    consumers.update(o.name for o in graph.output)  # a graph output must keep its values
    readers = Counter(n.input[1] for n in graph.node if len(n.input) > 1)
    for node in graph.node:
        w = _analog_io(node, consts, readers)
        if w is None or w not in ranges:
            continue
        c = 1.0 / (ranges[w] * input_unit(profile, ranges[w]))
        chain, x = [], node.input[0]
        while consumers[x] == 1 and x in producers:
            p = producers[x]
            if p.op_type in PASS_OPS and (p.op_type != "MaxPool" or len(p.output) == 1):
                chain.append(p)
            elif _const_operand(p, consts) is not None:
                chain.append(p)
            else:
                break
            x = p.input[0] if p.op_type != "Add" else p.input[1 - _const_operand(p, consts)]  # type: ignore[operator]
        top = producers.get(x)
        if top is None or consumers[x] != 1:
            continue
        if top.op_type == "LayerNormalization" and not chain and all(i in consts for i in top.input[1:3] if i):
            folds.digital[top.output[0]] = {
                i: consts[top.input[i]] * np.float32(c) for i in (1, 2) if len(top.input) > i and top.input[i]
            }
        elif _analog_io(top, consts, readers) is None or top.input[1] not in ranges:
            continue
        else:
            folds.out_factor[top.output[0]] = c
            _fold_chain(folds, chain, node, top, consts, profile)
        folds.prescaled[node.output[0]] = c
    return folds


def _fold_chain(
    folds: Folds, chain: list[onnx.NodeProto], node: onnx.NodeProto, top: onnx.NodeProto, consts, profile
) -> None:
    """Record the chain's folds: constants scaled, a Relu moved into N's clip, a MaxPool moved
    before P's ADC rounding. ``chain`` runs from N back to P."""
    c = folds.out_factor[top.output[0]]
    for p in chain:
        i = _const_operand(p, consts)
        if i is not None:
            folds.digital[p.output[0]] = {i: consts[p.input[i]] * np.float32(c)}
    forward = chain[::-1]
    relus = [k for k, p in enumerate(forward) if p.op_type == "Relu"]
    if profile.in_clip and len(relus) == 1 and all(p.op_type in RELU_COMMUTES for p in forward[relus[0] + 1 :]):
        folds.digital[forward[relus[0]].output[0]] = "identity"
        folds.relu_clip[node.output[0]] = True
    pools = [k for k, p in enumerate(forward) if p.op_type == "MaxPool"]
    one_tile = top.op_type == "Conv" and int(np.prod(consts[top.input[1]].shape[1:])) <= profile.tile_rows
    if one_tile and len(pools) == 1 and all(p.op_type == "Relu" for p in forward[: pools[0]]):
        pool = forward[pools[0]]
        folds.pool[top.output[0]] = _attrs(pool)
        folds.digital[pool.output[0]] = "identity"
