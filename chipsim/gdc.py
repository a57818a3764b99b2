"""Global drift compensation (DESIGN §3.4; aihwkit's ``GlobalDriftCompensation``, Joshi 2020).

At programming each tile is read with one-hot inputs (the identity) through the full noisy
periphery and ``baseline = mean|Y|`` is stored. At a read-out at an age the same read gives
``current`` and the tile's outputs are multiplied by ``α = baseline/current``.

Variants: ``global`` (one α per tile), ``column`` (one α per tile and output column), ``exact``
(noise-free reference: mean|w_target| over mean|w(t)|, no periphery in the loop), ``off``.
"""

from __future__ import annotations

import numpy as np

from chipsim.modes import GdcMode
from chipsim.periphery import IR_DROP_G_RATIO, adc, ir_drop_c, ir_drop_ramp
from chipsim.profiles import ChipProfile

GDC_MODES: tuple[GdcMode, ...] = tuple(GdcMode)


def identity_read(w_tile: np.ndarray, profile: ChipProfile, rng: np.random.Generator) -> np.ndarray:
    """``Y = periphery(I @ w)``: the tile read with one-hot DAC inputs (x'_j = 1).

    With a one-hot input every sum in the periphery has a single term, so the general formulas
    of :mod:`chipsim.periphery` reduce exactly to elementwise ones (row j of the output is row j
    of ``w``): ``x@w = w``, ``x²@|w| = |w|``, ``|x|@|w| = |w|``, ``x̃@w = ramp_j·w``. A test checks
    this against the general periphery on an explicit identity matrix with the same draws.
    Noise: one standard-normal draw per output, shaped like ``w``, scaled by the combined σ of
    weight read noise and output noise (:func:`chipsim.periphery.output_noise_std`).
    """
    n = w_tile.shape[0]
    w = w_tile.astype(np.float32, copy=False)
    y = w.copy()
    if profile.ir_drop > 0:
        a = (n / IR_DROP_G_RATIO) * np.abs(w)
        c = ir_drop_c(a)
        y -= profile.ir_drop * c * ir_drop_ramp(n, w)[:, None] * w
    if profile.w_noise > 0 or profile.out_noise > 0:
        std = np.sqrt(np.float32(profile.w_noise**2) * np.abs(w) + np.float32(profile.out_noise**2))
        y += std * rng.standard_normal(w.shape, dtype=np.float32)
    return adc(y, profile.out_bound, profile.out_levels)


def references(w_tile: np.ndarray, profile: ChipProfile, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(mean|Y|, mean|Y| per column) of an identity read."""
    y = np.abs(identity_read(w_tile, profile, rng))
    return float(y.mean(dtype=np.float64)), y.mean(axis=0, dtype=np.float64).astype(np.float32)


def exact_reference(w_tile: np.ndarray) -> float:
    """The ``exact`` variant's reference of one tile: mean|w| (float64) of its normalised weights,
    no periphery. At programming it is taken of the *target* weights (the baseline), at an age of
    the read-out weights; α = baseline/current. The one definition of the chip (programming,
    read-out) and of HWA training (``models.hwa.gdc_alpha``)."""
    return float(np.abs(np.asarray(w_tile)).mean(dtype=np.float64))


def ratio(baseline: np.ndarray | float, current: np.ndarray | float) -> np.ndarray:
    """α = baseline/current, 1 where the current read is 0 (an all-zero or fully stuck tile)."""
    # Both sides are rounded to float32 first (baselines are stored as float32), so an unchanged
    # tile gives α = 1 exactly.
    baseline = np.asarray(baseline, dtype=np.float32).astype(np.float64)
    current = np.asarray(current, dtype=np.float32).astype(np.float64)
    safe = np.where(current > 0, current, 1.0)
    return np.where(current > 0, baseline / safe, 1.0).astype(np.float32)
