"""The runtime's side of the lowering: the weight and scale inputs of every tile at an age.

Mirrors :mod:`chipsim.compiler.lowering` exactly: one array per product of
:func:`~chipsim.compiler.lowering.tile_parts` (a Conv tile's parts stacked along its outputs),
carrying the factors of :func:`~chipsim.compiler.lowering.part_factors`, and one scale per tile
``α_k·r·s_col·step`` shaped by :func:`~chipsim.compiler.lowering.scale_shape`. A change of the
graph layout changes both modules and ``GRAPH_FORMAT``. A plan of the lean lowering
(:mod:`chipsim.compiler.lean`, ``plan.lean``) takes one input per part for Conv tiles too, the
IR ramp negated (:func:`~chipsim.compiler.lean.lean_factors`), and scales times ``plan.out_factor``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chipsim.compiler.lean import lean_factors
from chipsim.compiler.lowering import (
    adc_scale_step,
    is_linear,
    part_factors,
    scale_shape,
    tile_channel_pad,
    tile_parts,
)
from chipsim.compiler.plan import LayerPlan
from chipsim.modes import GdcMode
from chipsim.periphery import ir_drop_ramp
from chipsim.profiles import ChipProfile
from chipsim.readout import ChipReadout
from chipsim.state import LayerState


def tile_weights(
    plan: LayerPlan, k: int, profile: ChipProfile, w: np.ndarray, input_range: float
) -> dict[str, np.ndarray]:
    """The weight inputs of tile ``k``, by part, from its normalised weights (rows, cols); a Conv
    tile's parts are stacked into ``w``. Linear profiles: ``w`` carries α·s_col already."""

    pad = tile_channel_pad(plan, k)

    def conv_form(m: np.ndarray) -> np.ndarray:
        c = m.T.reshape(plan.cols, -1, *plan.conv_shape[2:])  # type: ignore[index]
        # zero input channels, as lowering.weight_shape declares
        return np.pad(c, [(0, 0), (0, pad)] + [(0, 0)] * (c.ndim - 2)) if pad else c

    parts = tile_parts(profile)
    if is_linear(profile):
        mats = [w]
    else:
        f = (lean_factors if plan.lean else part_factors)(profile, input_range, w.shape[0])
        mats = []
        for p in parts:
            if p == "r":  # the IR-drop position ramp, per row
                mats.append(w * (ir_drop_ramp(w.shape[0], w) * f[p])[:, None])
            else:
                mats.append((w if p == "w" else np.abs(w)) * f[p])
    if plan.is_conv and plan.lean:
        return {p: np.ascontiguousarray(conv_form(m), dtype=np.float32) for p, m in zip(parts, mats)}
    if plan.is_conv:
        return {"w": np.ascontiguousarray(np.concatenate([conv_form(m) for m in mats], axis=0), dtype=np.float32)}
    return {p: np.ascontiguousarray(m, dtype=np.float32) for p, m in zip(parts, mats)}


def weight_inputs(
    plans: Sequence[LayerPlan], layers: Sequence[LayerState], readout: ChipReadout, profile: ChipProfile, mode: GdcMode
) -> dict[str, np.ndarray]:
    """Every tile's weight inputs at a read-out, by graph input name. ``mode`` matters only for
    linear profiles, whose weights carry the GDC factors (see lowering.is_linear)."""
    linear = is_linear(profile)
    weights: dict[str, np.ndarray] = {}
    for plan, layer, layer_readout in zip(plans, layers, readout.layers):
        alpha = layer_readout.alpha(mode) if linear else None
        for k, (a, b) in enumerate(plan.tiles):
            names = plan.input_names(k)
            w = layer_readout.w_norm[a:b]
            if alpha is not None:  # linear tile: y = x @ (w·α_k·s_col)
                w = w * (alpha[k] * layer.col_scale)[None, :]
            for part, arr in tile_weights(plan, k, profile, w, layer.input_range).items():
                weights[names[part]] = arr
    return weights


def scale_inputs(
    plans: Sequence[LayerPlan], layers: Sequence[LayerState], readout: ChipReadout, profile: ChipProfile, mode: GdcMode
) -> dict[str, np.ndarray]:
    """Every tile's scale input ``α_k·r·s_col·step`` for a GDC mode, by graph input name (none
    for linear profiles: their weights carry it)."""
    if is_linear(profile):
        return {}
    scales = {}
    for plan, layer, layer_readout in zip(plans, layers, readout.layers):
        alpha = layer_readout.alpha(mode)
        # out_factor: the next layer's DAC scale, folded in (compiler.folding); ≥ 0 like α and s_col,
        # which a MaxPool moved before the ADC needs (max commutes with non-decreasing maps only)
        base = np.float32(layer.input_range * adc_scale_step(profile) * plan.out_factor) * layer.col_scale
        shape = scale_shape(plan)
        for k in range(len(plan.tiles)):
            scales[plan.input_names(k)["scale"]] = (alpha[k] * base).astype(np.float32).reshape(shape)
    return scales
