"""The lean lowering of one analog tile (graph format 4, :class:`~chipsim.modes.GraphLowering` ``lean``).

The same periphery as :mod:`chipsim.compiler.lowering` (DESIGN §3.3), in fewer elementwise passes:

- every product is its own MatMul/Conv with its own weight input (no Concat, Split or stacked
  Conv), all on the DAC output ``x'``; ``|x'|`` only when ``x'`` may be negative (sign analysis,
  :func:`chipsim.compiler.folding.nonnegative`): after a Relu, Sigmoid or Softmax ``|x'| = x'``;
- the output-noise variance ``(σ_out/s)²`` is the bias of the variance product;
- the IR ramp's weights carry ``−ir·c3`` (:func:`lean_factors`), so the IR term is added, and
  ideal output, IR term and noise meet in one variadic ``Sum`` (instead of ``Sub`` + ``Add``);
- a MaxPool that followed the layer runs before the ADC rounding (:mod:`.folding`), the next
  layer's DAC scale is folded into the ADC scale input and the layer's bias.

``free_products`` (benchmark only, never a chip's graph): the three extra products read the ideal
product's output instead of computing their own — the same periphery with the products for free,
the bound ``bench.runtime`` compares with. Its values are meaningless (a square root of a signed
value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from chipsim.compiler.graph_builder import GraphBuilder
from chipsim.compiler.lowering import (
    adc_scale_step,
    emit_dac,
    emit_noise_like,
    input_unit,
    is_linear,
    part_factors,
    scale_shape,
    tile_parts,
    weight_shape,
)
from chipsim.compiler.plan import LayerPlan
from chipsim.periphery import IR_DROP_POLY
from chipsim.profiles import ChipProfile


@dataclass(frozen=True)
class TileOptions:
    """What the lean lowering knows about one layer's input and output."""

    nonneg: bool = False  # the DAC output is provably ≥ 0
    pool: dict[str, Any] | None = None  # MaxPool attributes, applied before the ADC rounding


def lean_factors(profile: ChipProfile, input_range: float, rows: int) -> dict[str, float]:
    """:func:`~chipsim.compiler.lowering.part_factors` with the ``r`` factor negated: the IR term
    enters the variadic Sum with its sign."""
    f = part_factors(profile, input_range, rows)
    return {**f, "r": -f["r"]}


def emit_lean_dac(
    b: GraphBuilder, x: str, r: float, profile: ChipProfile, prefix: str, prescaled: float | None, relu: bool
) -> str:
    """The DAC on ``x``; when ``prescaled`` (``x`` already carries ``1/(r·step)``, folded into the
    previous layer) only the clip to ``±1/step`` (``[0, 1/step]`` with a moved Relu) and the round."""
    if prescaled is None or is_linear(profile):
        return emit_dac(b, x, r, profile, prefix)
    h = 1.0 / input_unit(profile, r)
    if profile.in_clip:
        x = b.op("Clip", [x, b.const(prefix, 0.0 if relu else -h), b.const(prefix, h)], prefix)
    elif relu:
        x = b.op("Relu", [x], prefix)
    return b.op("Round", [x], prefix)


def _product(
    b: GraphBuilder, src: str, plan: LayerPlan, k: int, part: str, prefix: str, conv_attrs: dict | None, bias: float
) -> str:
    name = b.graph_input(plan.input_names(k)[part], weight_shape(plan, k, 1))
    if plan.is_conv:
        inputs = [src, name] + ([b.const(prefix, np.full(plan.cols, bias, np.float32))] if bias else [])
        return b.op("Conv", inputs, prefix, **(conv_attrs or {}))
    y = b.op("MatMul", [src, name], prefix)
    return b.op("Add", [y, b.const(prefix, bias)], prefix) if bias else y


def emit_ir_term(b: GraphBuilder, a: str, r: str, prefix: str) -> str:
    """``−ir·c(a)·x̃@W`` from the load ``a`` and the negated ramp product ``r`` (Horner form,
    ``r`` carrying ``−ir·c3``): ``r·a·(a·(a + c2/c3) + c1/c3)``."""
    c1, c2, c3 = IR_DROP_POLY
    t = b.op("Add", [a, b.const(prefix, c2 / c3)], prefix)
    t = b.op("Add", [b.op("Mul", [t, a], prefix), b.const(prefix, c1 / c3)], prefix)
    return b.op("Mul", [b.op("Mul", [t, a], prefix), r], prefix)


def emit_lean_tile(
    b: GraphBuilder,
    xk: str,
    plan: LayerPlan,
    k: int,
    profile: ChipProfile,
    prefix: str,
    conv_attrs: dict | None,
    opts: TileOptions,
) -> str:
    """One tile in ADC steps × scale (see the module docstring and lowering.emit_tile_periphery)."""
    parts = tile_parts(profile)
    free = b.free_products
    y = _product(b, xk, plan, k, "w", prefix, conv_attrs, 0.0)
    if is_linear(profile):
        return y
    terms = [y]
    if "r" in parts:
        r = y if free else _product(b, xk, plan, k, "r", prefix, conv_attrs, 0.0)
        if free:
            a = y
        else:
            a = _product(b, xk if opts.nonneg else b.op("Abs", [xk], prefix), plan, k, "a", prefix, conv_attrs, 0.0)
        terms.append(emit_ir_term(b, a, r, prefix))
    s = adc_scale_step(profile)
    if profile.w_noise > 0 or profile.out_noise > 0:
        xi = emit_noise_like(b, y, plan.input_names(k)["noise"], prefix)
        if "v" in parts:
            sigma2 = (profile.out_noise / s) ** 2
            v = y if free else _product(b, b.op("Mul", [xk, xk], prefix), plan, k, "v", prefix, conv_attrs, sigma2)
            std = b.op("Sqrt", [v], prefix)
        else:
            std = b.const(prefix, profile.out_noise / s)
        terms.append(b.op("Mul", [std, xi], prefix))
    y = b.op("Sum", terms, prefix) if len(terms) > 1 else y
    if opts.pool is not None:
        y = b.op("MaxPool", [y], prefix, **opts.pool)
    if profile.out_levels > 0:
        y = b.op("Round", [y], prefix)
        if profile.out_bound > 0:
            half = profile.out_levels / 2.0
            y = b.op("Clip", [y, b.const(prefix, -half), b.const(prefix, half)], prefix)
    elif profile.out_bound > 0:
        y = b.op("Clip", [y, b.const(prefix, -profile.out_bound), b.const(prefix, profile.out_bound)], prefix)
    b.graph_input(plan.input_names(k)["scale"], scale_shape(plan))
    return b.op("Mul", [y, plan.input_names(k)["scale"]], prefix)
