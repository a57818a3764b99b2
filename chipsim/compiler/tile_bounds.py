"""Which ops of a lean tile a read-out's weights make negligible (#14 part 2), decided per read-out.

When a runtime builds the session of a read-out it knows every weight the graph will multiply,
and the DAC bounds every tile input: ``|x_code| ≤ h = 1/input_unit`` (the compiled DAC clips to
``±r`` before its rounding, DESIGN §3.3, so this holds for every request). From the packed weight
inputs of a tile (:mod:`chipsim.compiler.weight_packing`, graph units: DAC codes in, ADC steps
out) each output column ``i`` has, for every input:

- ideal output ``|y_i| ≤ Y_i = h·Σ_j |W_w[j,i]|``;
- IR-drop load ``0 ≤ a_i ≤ A_i = h·Σ_j W_a[j,i]`` (the physical load ``a`` of DESIGN §3.3) and ramp
  product ``|ρ_i| ≤ R_i = h·Σ_j |W_r[j,i]|`` (``W_r`` carries ``−ir·c3``);
- per-MVM noise ``σ_i² ≤ h²·Σ_j W_v[j,i] + (σ_out/s)²``.

A Conv tile's output sums over a subset of its kernel's rows (padding, stride, a ConvTranspose's
zero-upsampled input), so the sum over all of them bounds it too.

Two drops, each per tile (:class:`~chipsim.modes.TileDrop`):

- ``ir_cubic``: the IR factor ``c(a) = c1·a + c2·a² + c3·a³`` loses its cubic term when
  ``c3·a² ≤ TOLERANCE·(c1 + c2·a + c3·a²)`` at ``a = max_i A_i`` — then for every output and input
  the dropped term is at most ``TOLERANCE`` of the IR term it belongs to (the left side grows with
  ``a``, the right side's bracket falls for ``a < −c2/(2·c3) = 2``; loads ≥ 1 are never dropped).
- ``adc_clip``: the ADC's clip to ``±L`` goes when ``max_i (Y_i + IR_i + XI_MAX·σ_i) + ½ ≤ L``
  (the ½: the rounding before the clip), with ``IR_i = R_i·(A_i³ + |c2/c3|·A_i² + (c1/c3)·A_i)``:
  the clip would never change an output.

``XI_MAX`` bounds the standard normal ξ of the per-MVM noise. The default sampler ``fresh-q16``
(:func:`chipsim.mvm_noise.q16_table`) never exceeds 4.39; numpy's float32 ziggurat of ``fresh``
(``random_standard_normal_f`` in numpy/random/src/distributions/distributions.c) cannot return
more than ``r + ln(2^24)/r = 8.21`` in magnitude
(``r = 3.6541528853610088``, its uniforms have 24 bits), and an exact Gaussian exceeds 10 with
probability 1.5e-23 per draw. A caller feeding its own noise beyond it gets the undropped graph
(:meth:`chipsim.runtime.ChipRuntime.run`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from chipsim.compiler.lowering import adc_scale_step, input_unit, is_linear, tile_parts
from chipsim.compiler.plan import LayerPlan
from chipsim.modes import TileDrop
from chipsim.periphery import IR_DROP_POLY
from chipsim.profiles import ChipProfile

#: A dropped term's largest share of the term it belongs to (#14: "below 1e-5").
TOLERANCE = 1e-5
#: Largest |ξ| of per-MVM noise assumed by the ADC-clip bound (see the module docstring).
XI_MAX = 10.0

#: One tile's drops: (layer index, tile index, what is dropped).
Drop = tuple[int, int, TileDrop]


def column_abs_sums(arr: np.ndarray, plan: LayerPlan) -> np.ndarray:
    """Σ over a tile's rows of ``|arr|`` per output column, float64: a MatMul weight is
    (rows, cols), a lean Conv weight (cols, channels, *kernel)."""
    a = np.abs(arr.astype(np.float64))
    if plan.is_conv:
        return a.reshape(a.shape[0], -1).sum(axis=1)
    return a.sum(axis=0)


def cubic_negligible(load_max: float) -> bool:
    """True when the cubic term of ``c(a)`` is at most :data:`TOLERANCE` of ``c(a)`` for every
    load ``0 < a ≤ load_max`` (see the module docstring)."""
    c1, c2, c3 = IR_DROP_POLY
    a = float(load_max)
    return a < 1.0 and c3 * a * a <= TOLERANCE * (c1 + c2 * a + c3 * a * a)


def ir_bound(load: np.ndarray, ramp: np.ndarray) -> np.ndarray:
    """Largest |IR term| per column in ADC steps, from the load and ramp-product bounds."""
    c1, c2, c3 = IR_DROP_POLY
    return ramp * load * (load * (load + abs(c2 / c3)) + c1 / c3)


def adc_limit(profile: ChipProfile) -> float:
    """The compiled ADC clip's limit in graph units (ADC steps, or normalised outputs without
    quantisation); 0 when there is no clip."""
    if profile.out_bound <= 0:
        return 0.0
    return profile.out_levels / 2.0 if profile.out_levels > 0 else profile.out_bound


def tile_drops(
    plan: LayerPlan, k: int, weights: Mapping[str, np.ndarray], profile: ChipProfile, r: float
) -> set[TileDrop]:
    """The ops tile ``k`` of ``plan`` can drop, given its packed weights (by graph input name) and
    its layer's input range ``r``."""
    parts = tile_parts(profile)
    names = plan.input_names(k)
    h = 1.0 / input_unit(profile, r)
    out: set[TileDrop] = set()
    load = ramp = None
    if "r" in parts:
        load = h * column_abs_sums(weights[names["a"]], plan)
        ramp = h * column_abs_sums(weights[names["r"]], plan)
        if cubic_negligible(float(load.max(initial=0.0))):
            out.add(TileDrop.IR_CUBIC)
    limit = adc_limit(profile)
    if limit > 0:
        top = h * column_abs_sums(weights[names["w"]], plan)
        if load is not None:
            top = top + ir_bound(load, ramp)  # type: ignore[arg-type]
        s = adc_scale_step(profile)
        var = (profile.out_noise / s) ** 2
        if "v" in parts:
            var = var + h * h * column_abs_sums(weights[names["v"]], plan)
        if profile.w_noise > 0 or profile.out_noise > 0:
            top = top + XI_MAX * np.sqrt(var)
        if float(top.max(initial=0.0)) + (0.5 if profile.out_levels > 0 else 0.0) <= limit:
            out.add(TileDrop.ADC_CLIP)
    return out


def decide_drops(
    plans: Sequence[LayerPlan], ranges: Sequence[float], weights: Mapping[str, np.ndarray], profile: ChipProfile
) -> frozenset[Drop]:
    """Every drop the read-out's packed ``weights`` allow, over the lean layers of ``plans``
    (``ranges``: each layer's DAC input range). None without a DAC clip (inputs unbounded) or on a
    linear profile (no periphery)."""
    if is_linear(profile) or not profile.in_clip:
        return frozenset()
    out: set[Drop] = set()
    for plan, r in zip(plans, ranges):
        if not plan.lean:
            continue
        for k in range(len(plan.tiles)):
            out.update((plan.index, k, d) for d in tile_drops(plan, k, weights, profile, r))
    return frozenset(out)
