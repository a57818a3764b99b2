"""The numpy reference of one analog matrix product at an age (DESIGN §3.3).

Written for clarity, not speed: it is the definition the compiled ONNX runtime is tested
against. For an input batch ``x`` (batch, rows) in the layer's input units:

1. DAC: ``x' = quantize(clip(x, ±r)/r)``
2. per tile k with normalised weights ``w_k`` at the age:
   ``y_k = x'_k @ w_k`` + IR drop + per-MVM weight read noise and output noise (one Gaussian
   with their combined σ, see :func:`chipsim.periphery.output_noise_std`), then the ADC
3. digital: ``y = Σ_k α_k·y_k`` (GDC), ``× r·s_col`` (undo the normalisations), ``+ bias``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chipsim.modes import GdcMode
from chipsim.periphery import adc, dac, ir_drop_delta, output_noise_std
from chipsim.profiles import ChipProfile
from chipsim.readout import LayerReadout
from chipsim.state import LayerState


@dataclass
class MvmNoise:
    """Standard-normal draws of one analog MVM: ``draws[k]`` (batch, cols) for tile k, scaled
    by the combined σ of per-MVM weight read noise and ADC output noise."""

    draws: list[np.ndarray]


def draw_mvm_noise(batch: int, layer: LayerState, rng: np.random.Generator) -> MvmNoise:
    """Draws for one MVM in a fixed order (tile by tile)."""
    cols = layer.shape[1]
    return MvmNoise([rng.standard_normal((batch, cols), dtype=np.float32) for _ in layer.tiles])


def analog_matmul(
    x: np.ndarray,
    layer: LayerState,
    readout: LayerReadout,
    profile: ChipProfile,
    *,
    gdc: GdcMode | None = None,
    noise: MvmNoise | None = None,
    rng: np.random.Generator | None = None,
    bias: bool = True,
) -> np.ndarray:
    """``y ≈ x @ W + b`` as the aged analog tile computes it. Returns float64 (batch, cols).

    ``gdc`` defaults to the profile's mode; noise comes from ``noise`` or is drawn from ``rng``
    (one of them is needed when the profile has per-MVM or output noise).
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[1] != layer.shape[0]:
        raise ValueError(f"x: expected {layer.shape[0]} input features, got {x.shape[1]}")
    needs_noise = profile.w_noise > 0 or profile.out_noise > 0
    if noise is None and needs_noise:
        if rng is None:
            raise ValueError("analog_matmul needs `noise` or `rng` when the profile has per-MVM noise")
        noise = draw_mvm_noise(x.shape[0], layer, rng)
    r = layer.input_range
    alpha = readout.alpha(gdc or profile.gdc).astype(np.float64)
    x_dac = dac(x, r, profile.in_levels, profile.in_clip)
    y = np.zeros((x.shape[0], layer.shape[1]))
    for k, (a, b) in enumerate(layer.tiles):
        w = readout.w_norm[a:b].astype(np.float64)
        xk = x_dac[:, a:b]
        yk = xk @ w
        if profile.ir_drop > 0:
            yk += ir_drop_delta(xk, w, profile.ir_drop)
        if needs_noise:
            yk += output_noise_std(xk, w, profile.w_noise, profile.out_noise) * noise.draws[k]
        yk = adc(yk, profile.out_bound, profile.out_levels)
        y += alpha[k] * yk
    y *= r * layer.col_scale.astype(np.float64)
    if bias and layer.bias is not None:
        y += layer.bias
    return y
