"""What programming a model on a profile will cost, estimated before any work: crossbar tiles
and devices, from the shapes of the model's constant weights alone (no compilation).

Programming time and, above all, the onnxruntime session builds (the chip's, and one per new
age) grow faster than linearly with the number of tiles: 2.0 s at 256 tiles, 7.7 s at 512, 18 s
at 1024, 62 s at 2048 (``python -m bench.serving_costs``, bench/results/serving_costs.md; 2 cores
shared with other jobs). A profile with ``tile_rows=1`` makes the tile count equal to the number of rows: a 16 KB
upload could cost minutes. :func:`estimate` follows the compiler's mapping rules (DESIGN §2,
``chipsim.compiler.rewriters``): a layer's rows are split into ceil(rows/tile_rows) tiles — a 2-D
constant B of a ``MatMul`` (rows = B's rows) or a constant A with an activation B (``MatMul(W, x)``,
mapped transposed: rows = W's columns), the constant B of a ``Gemm``; a ``Conv`` (and a
``ConvTranspose``, as the Conv it computes) is one layer whose rows are one group's C_in/groups
channels of k elements, whole channels in a tile (tile_rows // k of them); an ``LSTM``/``GRU``/
``RNN`` has per direction a W layer (input rows) and an R layer (hidden rows; a GRU without
``linear_before_reset`` reads R as two layers). A weight read by several nodes in the same layout
is one layer (counted once). Each weight is 2 devices (a differential pair).

It reads only tensor dimensions (``TensorProto.dims``), so it is fast on any upload; a model it
cannot parse is left to the compiler, which names the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

#: Physical devices per analog weight (a differential pair, G+ and G−).
DEVICES_PER_WEIGHT = 2


@dataclass(frozen=True)
class ProgramCost:
    tiles: int
    devices: int


def _constant_dims(graph: onnx.GraphProto) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Dimensions of every constant, and the constant each alias stands for: the compiler reads a
    weight through ``Identity`` (torch's duplicates) or a widening ``Cast`` (fp16 weights) as
    that weight."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    alias: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    dims[node.output[0]] = list(attr.t.dims)
        elif node.op_type in ("Identity", "Cast") and node.input and node.input[0] in dims:
            dims[node.output[0]] = dims[node.input[0]]
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    return dims, alias


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _tiles(rows: int, tile_rows: int) -> int:
    return math.ceil(rows / tile_rows)


def _conv_tiles(channels: int, kernel: int, tile_rows: int) -> int:
    return math.ceil(channels / max(1, tile_rows // max(1, kernel)))  # kernel > tile_rows: the compiler refuses


def _layers(
    node: onnx.NodeProto, consts: dict[str, list[int]], tile_rows: int
) -> tuple[list[tuple[str, str]], int, int] | None:
    """(the (weight, layout) keys of a node's layers, their tiles, their weights), or None for a
    node that stays digital."""
    ins = list(node.input) + [""] * 3
    w = consts.get(ins[1])
    if node.op_type == "MatMul":
        if w is not None and len(w) == 2:
            return [(ins[1], "w")], _tiles(w[0], tile_rows), math.prod(w)
        left = consts.get(ins[0])
        if left is not None and len(left) == 2 and ins[1] not in consts:  # MatMul(W, x): the layer holds Wᵀ
            return [(ins[0], "w.T")], _tiles(left[1], tile_rows), math.prod(left)
        return None
    if node.op_type == "Gemm" and w is not None and len(w) == 2:
        trans = _attr(node, "transB")
        return [(ins[1], f"gemm/{trans}")], _tiles(w[1] if trans else w[0], tile_rows), math.prod(w)
    if node.op_type == "Conv" and w is not None and len(w) >= 3:
        groups = _attr(node, "group", 1)
        return [(ins[1], f"conv/{groups}")], _conv_tiles(w[1], math.prod(w[2:]), tile_rows), math.prod(w)
    if node.op_type == "ConvTranspose" and w is not None and len(w) >= 3:  # (C_in, C_out/groups, *kernel)
        groups = _attr(node, "group", 1)
        tiles = _conv_tiles(w[0] // max(1, groups), math.prod(w[2:]), tile_rows)
        return [(ins[1], f"convt/{groups}")], tiles, math.prod(w)
    if node.op_type in ("LSTM", "GRU", "RNN") and w is not None and len(w) == 3:
        r = consts.get(ins[2])
        if r is None or len(r) != 3:
            return None  # refused by the compiler (weights computed at run time)
        dirs, hidden = w[0], r[2]
        r_layers = 2 if node.op_type == "GRU" and not _attr(node, "linear_before_reset") else 1
        tiles = dirs * (_tiles(w[2], tile_rows) + r_layers * _tiles(hidden, tile_rows))
        return [(ins[1], "W"), (ins[2], "R")], tiles, math.prod(w) + math.prod(r)
    return None


def estimate(model_bytes: bytes, tile_rows: int) -> ProgramCost | None:
    """Tiles and devices of the chip ``model_bytes`` would be programmed onto with ``tile_rows``
    rows per tile; ``None`` when the model cannot be parsed (the compiler reports why)."""
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception:  # noqa: BLE001 - any parse failure is the compiler's to report, with its message
        return None
    consts, alias = _constant_dims(model.graph)
    tiles = weights = 0
    seen: set[tuple[str, str]] = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue  # another op domain stays digital
        found = _layers(node, consts, tile_rows)
        if found is None:
            continue  # digital
        keys = [(alias.get(name, name), layout) for name, layout in found[0]]
        if keys[0] in seen:
            continue  # another read of a layer already counted
        seen.update(keys)
        tiles += found[1]
        weights += found[2]
    return ProgramCost(tiles=tiles, devices=DEVICES_PER_WEIGHT * weights)
