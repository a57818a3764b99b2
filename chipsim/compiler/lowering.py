"""Periphery lowering: one analog layer as standard ONNX ops (DESIGN §3.3, §3.6).

    clip to ±r → DAC code round(x/(r·step))
      → per tile: the products x'@W, x'@(ramp⊙W), |x'|@|W|, x'²@|W| with the read-out weights
        (graph inputs; one grouped Conv for Conv tiles)
        → IR drop + per-MVM weight read noise and output noise → ADC code → × α_k·r·s_col·step
      → Σ over tiles

The graph works in integer DAC codes and ADC steps: the unit changes are folded into the
weights (:func:`part_factors`) and the per-column scales, which saves elementwise passes. The
runtime fills the weight and scale inputs in the layout this module declares
(:mod:`chipsim.compiler.weight_packing`, which mirrors it).
"""

from __future__ import annotations

import numpy as np

from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.plan import LayerPlan
from chipsim.periphery import IR_DROP_G_RATIO, IR_DROP_POLY
from chipsim.profiles import ChipProfile


def is_linear(profile: ChipProfile) -> bool:
    """True when every tile computes an exactly linear function of its input: ideal DAC and ADC,
    no per-MVM noise, no IR drop (weight effects only: drift, programming/read noise, faults).
    Then ``α_k·r·s_col / r`` is folded into the read-out weights and each analog layer compiles
    to the original model's own MatMul/Conv (plus a Sum over tiles)."""
    return (
        not profile.in_clip
        and profile.in_levels == 0
        and profile.out_levels == 0
        and profile.out_bound == 0
        and profile.w_noise == 0
        and profile.out_noise == 0
        and profile.ir_drop == 0
    )


def tile_parts(profile: ChipProfile) -> list[str]:
    """The matrix products of one tile, in this order (see :func:`emit_tile_products`): ``w``
    x'@W; ``r`` x'@(ramp⊙W) and ``a`` |x'|@|W| (IR drop); ``v`` x'²@|W| (per-MVM noise)."""
    parts = ["w"]
    if not is_linear(profile):
        if profile.ir_drop > 0:
            parts += ["r", "a"]
        if profile.w_noise > 0:
            parts.append("v")
    return parts


def input_unit(profile: ChipProfile, input_range: float) -> float:
    """One unit of the compiled DAC's output in normalised input units: the DAC step (the graph
    carries integer DAC codes) or ``1/r`` (no quantisation: the graph carries clipped ``x``)."""
    return 2.0 / profile.in_levels if profile.in_levels > 0 else 1.0 / input_range


def adc_scale_step(profile: ChipProfile) -> float:
    """One unit of the compiled ADC's input in normalised outputs: the ADC step (the graph
    rounds to integer ADC codes) or 1 (no quantisation)."""
    return 2.0 * profile.out_bound / profile.out_levels if profile.out_levels > 0 else 1.0


def part_factors(profile: ChipProfile, input_range: float, rows: int) -> dict[str, float]:
    """Factor each stacked product's weights carry, so the graph works in integer DAC codes in
    and ADC steps out (``s``) with no elementwise rescaling. With ``u`` = :func:`input_unit`:
    ``w``: u/s; ``r``: u·ir·c3/s (the IR polynomial's cubic coefficient, see
    :func:`emit_tile_periphery`); ``a``: u·rows/g_ratio (the IR-drop load ``a``, DESIGN §3.3);
    ``v``: w_noise²·u²/s² (noise variance in ADC steps²)."""
    u, s = input_unit(profile, input_range), adc_scale_step(profile)
    return {
        "w": u / s,
        "r": u * profile.ir_drop * IR_DROP_POLY[2] / s,
        "a": u * rows / IR_DROP_G_RATIO,
        "v": profile.w_noise**2 * u * u / (s * s),
    }


#: A Conv tile's channel slice is padded with zero channels (and its weights with zero input
#: channels) to a multiple of this. onnxruntime 1.32's CPU Conv (MLAS, this host's AVX-512) ran a
#: 3x3 kernel on 1-3 pixel outputs 4-7x slower when the input channels were not a multiple of 4:
#: 2.36 against 0.59 ms at 2x2 pixels for 51 and 52 channels, batch 64, 256 outputs; 0.41 against
#: 0.06 ms at 1x1 (49-51 against 48/52/56/64 channels; at 4x4 pixels and more the gap is under
#: 15 %). A layer split evenly into tiles gets such counts (resnet18: 256 channels x 9 rows in
#: 5 tiles of 51-52), which the model's own Conv never had. Exact: zero inputs times zero
#: weights add nothing to any product.
CONV_CHANNEL_ALIGN = 4


def tile_channel_pad(plan: LayerPlan, k: int) -> int:
    """Zero channels appended to Conv tile ``k``'s channel slice (to a multiple of the plan's
    ``channel_align``, :data:`CONV_CHANNEL_ALIGN` when compiled): only a tile that is a slice of an
    ungrouped layer's channels, whose count the tiling chose."""
    if not plan.is_conv or plan.groups != 1 or len(plan.tiles) == 1:
        return 0
    ca, cb = plan.tile_channels[k]  # type: ignore[index]
    return -(cb - ca) % plan.channel_align


def weight_shape(plan: LayerPlan, k: int, parts: int) -> list[int]:
    """Shape of a tile's weight input (Conv: ``parts`` stacked along the outputs, the channels
    padded by :func:`tile_channel_pad`)."""
    a, e = plan.tiles[k]
    if plan.is_conv:
        ca, cb = plan.tile_channels[k]  # type: ignore[index]
        return [plan.cols * parts, cb - ca + tile_channel_pad(plan, k), *plan.conv_shape[2:]]  # type: ignore[index]
    return [e - a, plan.cols]


def scale_shape(plan: LayerPlan) -> list[int]:
    """Shape of a tile's scale input: one per output column, broadcast over a Conv's pixels."""
    if plan.is_conv:
        return [plan.cols] + [1] * (len(plan.conv_shape) - 2)  # type: ignore[arg-type]
    return [plan.cols]


def emit_dac(b: GraphBuilder, x: str, r: float, profile: ChipProfile, prefix: str) -> str:
    """clip(x, ±r), then the DAC code round(x/(r·step)) (periphery.dac without its final ×step,
    which :func:`part_factors` moves into the weights)."""
    if is_linear(profile):
        return x  # 1/r is folded into the weights (see is_linear)
    if profile.in_clip:
        x = b.op("Clip", [x, b.const(prefix, -r), b.const(prefix, r)], prefix)
    if profile.in_levels > 0:
        x = b.op("Round", [b.op("Mul", [x, b.const(prefix, 1.0 / (r * input_unit(profile, r)))], prefix)], prefix)
    return x


def emit_tile_products(
    b: GraphBuilder, xk: str, plan: LayerPlan, k: int, profile: ChipProfile, prefix: str, conv_attrs: dict | None
) -> dict[str, str]:
    """All matrix products of one tile (:func:`tile_parts`), one tensor per part.

    Conv: one Conv with the inputs stacked along channels and ``group = P·groups`` (weights
    ``[W; R; A; V]`` stacked along outputs), split after: one call and one NCHWc layout
    conversion in and out instead of P. MatMul: one MatMul per part with its own 2-D weight
    input (onnxruntime prepacks 2-D constant weights; a stacked 3-D MatMul measured slower)."""
    parts = tile_parts(profile)
    names = plan.input_names(k)
    s = adc_scale_step(profile)
    sources = {"w": xk, "r": xk}
    if "a" in parts:
        sources["a"] = b.op("Abs", [xk], prefix)
    if "v" in parts:
        sources["v"] = b.op("Mul", [xk, xk], prefix)
    if plan.is_conv:
        b.graph_input(names["w"], weight_shape(plan, k, len(parts)))
        if len(parts) == 1:
            return {"w": b.op("Conv", [xk, names["w"]], prefix, **conv_attrs)}  # type: ignore[arg-type]
        inputs = [b.op("Concat", [sources[p] for p in parts], prefix, axis=1), names["w"]]
        if "v" in parts and profile.out_noise > 0:  # + (σ_out/s)², in the Conv's bias
            bias = np.zeros(len(parts) * plan.cols, np.float32)
            bias[parts.index("v") * plan.cols :] = (profile.out_noise / s) ** 2
            inputs.append(b.const(prefix, bias))
        groups = len(parts) * int(conv_attrs.get("group", 1))  # type: ignore[union-attr]  # P parts × groups
        out = b.op("Conv", inputs, prefix, **{**conv_attrs, "group": groups})  # type: ignore[dict-item]
        return dict(zip(parts, b.split(out, 1, [plan.cols] * len(parts), prefix)))
    out = {}
    for p in parts:
        b.graph_input(names[p], weight_shape(plan, k, 1))
        out[p] = b.op("MatMul", [sources[p], names[p]], prefix)
    if "v" in parts and profile.out_noise > 0:
        out["v"] = b.op("Add", [out["v"], b.const(prefix, (profile.out_noise / s) ** 2)], prefix)
    return out


def emit_noise_like(b: GraphBuilder, like: str, name: str, prefix: str) -> str:
    """The per-MVM noise graph input ``name`` reshaped to ``Shape(like)``: one standard normal per
    element of the tile's output ``like``, as that output is shaped in each run.

    The input is flat (1-D, symbolic size): the runtime feeds one draw per element of ``like``
    (:class:`chipsim.mvm_noise.NoiseShapes` finds ``like`` through this Reshape and infers its shape
    per request), and the Reshape refuses any other count, so noise can never be broadcast over
    pixels, tokens or samples whose dimensions were symbolic (size 1) at compile time."""
    b.graph_input(name, [name.replace("/", "_") + "_size"])
    return b.op("Reshape", [name, b.op("Shape", [like], prefix)], prefix)


def emit_tile_periphery(
    b: GraphBuilder, xk: str, plan: LayerPlan, k: int, profile: ChipProfile, prefix: str, conv_attrs: dict | None
) -> str:
    """One tile: products, IR drop, noise, ADC and scale, in ADC steps (DESIGN §3.3).

    With the factors of :func:`part_factors` in the weights, ``y = w`` is the ideal output in ADC
    steps, ``a`` the IR-drop load, ``v`` the weight-noise variance. The IR drop
    ``ir·c(a)·x̃@W = ir·c3·a·(a·(a + c2/c3) + c1/c3)·x̃@W`` (Horner form, ``ir·c3`` in ``r``),
    the noise ``sqrt(v + (σ_out/s)²)·ξ``, the ADC ``clip(round(y), ±levels/2)`` and
    ``scale = α·r·s_col·s``. Every fold is exact in real arithmetic; float rounding differs from
    the reference only in the last bits.
    """
    p = emit_tile_products(b, xk, plan, k, profile, prefix, conv_attrs)
    y = p["w"]
    if is_linear(profile):
        return y  # α·s_col is folded into the weights (see is_linear)
    names = plan.input_names(k)
    if "r" in p:
        c1, c2, c3 = IR_DROP_POLY
        a = p["a"]
        t = b.op("Add", [a, b.const(prefix, c2 / c3)], prefix)
        t = b.op("Add", [b.op("Mul", [t, a], prefix), b.const(prefix, c1 / c3)], prefix)
        t = b.op("Mul", [b.op("Mul", [t, a], prefix), p["r"]], prefix)
        y = b.op("Sub", [y, t], prefix)
    if profile.w_noise > 0 or profile.out_noise > 0:
        xi = emit_noise_like(b, y, names["noise"], prefix)
        if "v" in p:
            std = b.op("Sqrt", [p["v"]], prefix)
        else:
            std = b.const(prefix, profile.out_noise / adc_scale_step(profile))
        y = b.op("Add", [y, b.op("Mul", [std, xi], prefix)], prefix)
    if profile.out_levels > 0:
        y = b.op("Round", [y], prefix)
        if profile.out_bound > 0:
            half = profile.out_levels / 2.0
            y = b.op("Clip", [y, b.const(prefix, -half), b.const(prefix, half)], prefix)
    elif profile.out_bound > 0:
        y = b.op("Clip", [y, b.const(prefix, -profile.out_bound), b.const(prefix, profile.out_bound)], prefix)
    b.graph_input(names["scale"], scale_shape(plan))
    return b.op("Mul", [y, names["scale"]], prefix)
