"""Conv tiles of the int8 digit benchmark (:mod:`bench.int8_products`): the compiled graph runs a
Conv tile as ``Conv`` (not as a MatMul on unfolded patches), so its int8 form is ``ConvInteger``.

Per distinct Conv tile of the zoo chips (groups = 1; a tile is a slice of input channels), at
batch 64: ``conv-float`` (float32 ``Conv`` on the DAC outputs) and ``conv-k3`` (3 int8 digits,
:func:`bench.int8_digits.conv_int8_graph`), interleaved in the same rounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from bench.int8_digits import CODE_MAX, ZERO_POINT, conv_float_graph, conv_int8_graph
from chipsim.ort_session import cpu_session

BATCH = 64
DIGITS = 3


def _conv_nodes(path: Path) -> tuple[dict, dict]:
    """Conv nodes by name, and every tensor's inferred shape (batch 1 in the zoo's exports)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*g.input, *g.value_info, *g.output]}
    return {n.name: n for n in g.node if n.op_type == "Conv"}, shapes


def conv_tiles(chips: list[tuple[Path, object]]) -> list[dict]:
    """Distinct Conv tiles: input shape (batch 64), weights (cols, channels, kh, kw), attributes."""
    found: dict[tuple, dict] = {}
    for path, chip in chips:
        nodes, shapes = _conv_nodes(path)
        for plan, layer in zip(chip.meta["plans"], chip.layers):
            node = nodes.get(plan["node"])
            if plan["kind"] != "conv" or plan["groups"] != 1 or node is None:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "group"}
            cols, _, *kernel = plan["conv_shape"]
            spatial = shapes[node.input[0]][2:]
            for (a, b), (c0, c1) in zip(plan["tiles"], plan["tile_channels"]):
                key = (c1 - c0, cols, *kernel, *spatial, repr(sorted(attrs.items())))
                where = f"{path.stem}:{plan['name']}"
                if key in found:
                    found[key]["layers"].append(where)
                    continue
                w = layer.w_norm[a:b].T.reshape(cols, c1 - c0, *kernel)
                found[key] = {"x_shape": [BATCH, c1 - c0, *spatial], "w": w, "attrs": attrs, "layers": [where]}
    return list(found.values())


def conv_runners(tile: dict, rng: np.random.Generator) -> tuple[dict, float]:
    """Per variant a callable running one batch; the int8 form's max error ÷ max|y| vs float32 Conv."""
    codes = rng.integers(-CODE_MAX, CODE_MAX + 1, tile["x_shape"])
    xf = (codes / CODE_MAX).astype(np.float32)
    u = (codes + ZERO_POINT).astype(np.uint8)
    fl = cpu_session(conv_float_graph(tile["w"], tile["attrs"]), 1)
    i8 = cpu_session(conv_int8_graph(tile["w"], DIGITS, tile["attrs"]), 1)
    ref, y = fl.run(None, {"x": xf})[0], i8.run(None, {"x": u})[0]
    err = float(np.abs(y - ref).max() / np.abs(ref).max())
    run = {
        "float": lambda _xb: fl.run(None, {"x": xf}),
        f"k{DIGITS}": lambda _xb: i8.run(None, {"x": u}),
    }
    return run, err
