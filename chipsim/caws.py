"""Channel-wise adaptive weight scaling (CAWS): each column's clip bound chosen for its devices.

The default mapping (DESIGN §3.1) scales every weight column by ``s_col = max|W[:, col]|``, so
the largest weight of the column sits at ``g_max`` and no weight is clipped. One outlier then
squeezes the column's other weights towards the programming-noise floor (σ_prog ≈ 1 % of
``g_max`` even at 0 µS, Joshi et al. 2020). CAWS picks, per column, the bound ``c`` that
minimises the expected squared error of the programmed weights, in weight units:

    E(c) = Σ_i (|w_i| − c)₊²                                        clipping
         + (c / g_max)² Σ_i [σ²(g_max·min(|w_i|/c, 1)) + σ²(0)]     programming noise of the pair

(σ = ``prog_noise_scale`` × the device's σ_prog(G); a weight is a differential pair, one device
at the target, the other at 0 µS), over ``c = f·max|w|`` on a grid of ``f``; then clips the
column at ``c``, so ``s_col = c``. Drift and read noise scale with the conductance like the
signal and are left out of the criterion; the scale is undone digitally as before, so only the
clipped weights change what the chip computes. An option of the programming path
(``program_onnx(..., column_scaling="caws")``), numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from chipsim.profiles import ChipProfile
from chipsim.state import LayerSpec

#: Candidate bounds as fractions of the column's max|w|: 1 (no clipping) down to 0.2.
FRACTIONS = np.linspace(1.0, 0.2, 33)


def expected_error(weight: np.ndarray, bounds: np.ndarray, profile: ChipProfile) -> np.ndarray:
    """E(c) per column (weight units squared, summed over rows) for ``bounds`` (cols,)."""
    device = profile.device_model
    g_max = device.g_max_us
    a = np.abs(np.asarray(weight, np.float64))
    c = np.asarray(bounds, np.float64)
    clip = np.sum(np.maximum(a - c, 0.0) ** 2, axis=0)
    u = np.minimum(a / c, 1.0)
    sig = profile.prog_noise_scale * np.asarray(device.prog_noise_std_us(u * g_max), np.float64)
    sig0 = profile.prog_noise_scale * float(device.prog_noise_std_us(0.0))
    noise = (c / g_max) ** 2 * np.sum(sig**2 + sig0**2, axis=0)
    return clip + noise


def caws_bounds(weight: np.ndarray, profile: ChipProfile, fractions: Sequence[float] = FRACTIONS) -> np.ndarray:
    """Per column of ``weight`` (rows = inputs, cols = outputs) the bound ``c`` of least
    :func:`expected_error` among ``f·max|w|`` for ``f`` in ``fractions``; an all-zero column
    gets 1 (as :func:`chipsim.mapping.column_scales`)."""
    w = np.asarray(weight, np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight: expected a (rows, cols) matrix, got shape {w.shape}")
    m = np.max(np.abs(w), axis=0)
    m = np.where(m > 0, m, 1.0)
    errs = np.stack([expected_error(w, f * m, profile) for f in fractions])  # (F, cols)
    best = np.asarray(fractions, np.float64)[np.argmin(errs, axis=0)]
    return (best * m).astype(np.float32)


def caws_weight(weight: np.ndarray, profile: ChipProfile) -> np.ndarray:
    """``weight`` clipped per column at its :func:`caws_bounds` (float32)."""
    c = caws_bounds(weight, profile)
    w = np.asarray(weight, np.float32)
    return np.clip(w, -c, c).astype(np.float32)


def caws_specs(specs: Sequence[LayerSpec], profile: ChipProfile) -> list[LayerSpec]:
    """The layer specs with CAWS-clipped weights (``meta["column_scaling"] = "caws"``)."""
    return [
        dataclasses.replace(s, weight=caws_weight(s.weight, profile), meta={**s.meta, "column_scaling": "caws"})
        for s in specs
    ]
