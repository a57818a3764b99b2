"""What programming a model on a profile will cost, estimated before any work: crossbar tiles
and devices, from the shapes of the model's constant weights alone (no compilation).

Programming time and, above all, the onnxruntime session builds (the chip's, and one per new
age) grow faster than linearly with the number of tiles: 2.0 s at 256 tiles, 7.7 s at 512, 18 s
at 1024, 62 s at 2048 (``python -m bench.serving_costs``, bench/results/serving_costs.md; 2 cores
shared with other jobs). A profile with ``tile_rows=1`` makes the tile count equal to the number of rows: a 16 KB
upload could cost minutes. :func:`estimate` follows the compiler's mapping rules (DESIGN §2): a 2-D constant B of a
``MatMul`` and the constant B of a ``Gemm`` (rows = inputs) are split into ceil(rows/tile_rows)
tiles; a ``Conv`` kernel with C_in/groups channels of k elements each keeps whole channels in a
tile, tile_rows // k of them, per group. Each weight is 2 devices (a differential pair).

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


def _constant_dims(graph: onnx.GraphProto) -> dict[str, list[int]]:
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    dims[node.output[0]] = list(attr.t.dims)
    return dims


def _group(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def estimate(model_bytes: bytes, tile_rows: int) -> ProgramCost | None:
    """Tiles and devices of the chip ``model_bytes`` would be programmed onto with ``tile_rows``
    rows per tile; ``None`` when the model cannot be parsed (the compiler reports why)."""
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception:  # noqa: BLE001 - any parse failure is the compiler's to report, with its message
        return None
    consts = _constant_dims(model.graph)
    tiles = weights = 0
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in consts:
            continue
        shape = consts[node.input[1]]
        if node.op_type == "MatMul" and len(shape) == 2:
            rows = shape[0]
            tiles += math.ceil(rows / tile_rows)
        elif node.op_type == "Gemm" and len(shape) == 2:
            rows = shape[1] if _trans_b(node) else shape[0]
            tiles += math.ceil(rows / tile_rows)
        elif node.op_type == "Conv" and len(shape) >= 3:
            kernel = math.prod(shape[2:])
            channels_per_tile = max(1, tile_rows // max(1, kernel))  # kernel > tile_rows: the compiler refuses
            tiles += _group(node) * math.ceil(shape[1] / channels_per_tile)
        else:
            continue
        weights += math.prod(shape)
    return ProgramCost(tiles=tiles, devices=DEVICES_PER_WEIGHT * weights)
