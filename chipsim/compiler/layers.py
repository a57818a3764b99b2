"""One analog layer in the lowering a compilation chose: :mod:`.lowering` (``full``) or :mod:`.lean`.

The rewriters call these; the choice and the lean lowering's knowledge of the layer's input
(sign) and output (a MaxPool moved before its ADC, see :mod:`.folding`) come with the builder
(:attr:`GraphBuilder.lean`) and :class:`~chipsim.compiler.lean.TileOptions`.
"""

from __future__ import annotations

import numpy as np

from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.lean import TileOptions, emit_lean_dac, emit_lean_tile
from chipsim.compiler.lowering import emit_dac, emit_tile_periphery, tile_channel_pad
from chipsim.compiler.plan import LayerPlan
from chipsim.profiles import ChipProfile

FULL_TILE = TileOptions()


def emit_layer_dac(
    b: GraphBuilder,
    x: str,
    r: float,
    profile: ChipProfile,
    prefix: str,
    prescaled: float | None = None,
    relu: bool = False,
) -> str:
    """The DAC of a layer with input range ``r``; lean: ``prescaled`` and ``relu`` as folded."""
    if b.lean:
        return emit_lean_dac(b, x, r, profile, prefix, prescaled, relu)
    return emit_dac(b, x, r, profile, prefix)


def emit_tile(
    b: GraphBuilder,
    xk: str,
    plan: LayerPlan,
    k: int,
    profile: ChipProfile,
    prefix: str,
    conv_attrs: dict | None,
    opts: TileOptions = FULL_TILE,
) -> str:
    """Tile ``k`` of ``plan`` on its input ``xk``, in output units × scale."""
    if b.lean:
        return emit_lean_tile(b, xk, plan, k, profile, prefix, conv_attrs, opts)
    return emit_tile_periphery(b, xk, plan, k, profile, prefix, conv_attrs)


def emit_analog_layer(
    b: GraphBuilder,
    xq: str,
    plan: LayerPlan,
    profile: ChipProfile,
    conv_attrs: dict | None,
    opts: TileOptions = FULL_TILE,
) -> str:
    """The tiles of one analog layer on the DAC output ``xq``; returns Σ_k tile outputs."""
    prefix = f"chip/l{plan.index}"
    outs: list[str] = []
    for k, (a, e) in enumerate(plan.tiles):
        if len(plan.tiles) == 1:
            xk = xq
        elif plan.is_conv:
            ca, cb = plan.tile_channels[k]  # type: ignore[index]
            xk = b.slice(xq, [ca], [cb], [1], prefix)  # whole input channels
            pad = tile_channel_pad(plan, k)
            if pad:  # zero channels after the slice's last (ONNX pads: all begins, then all ends)
                rank = len(plan.conv_shape)  # type: ignore[arg-type]  # (N, C, *spatial)
                pads = [0] * (rank + 1) + [pad] + [0] * (rank - 2)
                xk = b.op("Pad", [xk, b.const(prefix, pads, np.int64)], prefix)
        else:
            xk = b.slice(xq, [a], [e], [-1], prefix)  # input rows
        outs.append(emit_tile(b, xk, plan, k, profile, prefix, conv_attrs, opts))
    return outs[0] if len(outs) == 1 else b.op("Sum", outs, prefix)
