"""Read-out of a programmed chip at an age (DESIGN §3.2, §3.4).

``read(chip, age_s, read_seed)`` is a pure function of (state, age, seed): it applies the
power-law drift with each device's ν, adds the accumulated 1/f read noise drawn from the read
stream, and re-reads each tile with the identity for GDC. Two read seeds at one age differ only
in the random draws of that read-out (the 1/f noise and the GDC read's periphery noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chipsim import gdc
from chipsim.mapping import pair_weight
from chipsim.profiles import ChipProfile, GdcMode
from chipsim.rng import Stream, check_seed, stream
from chipsim.state import ChipState, LayerState, decode_devices

#: The oldest age a chip can be read at: 1000 years. Beyond that the drift law is an
#: extrapolation over 10 decades past the data it was fitted to (Joshi 2020 measured to ~1e6 s).
MAX_AGE_S = 1000 * 365 * 86400.0


def check_age(age_s: float, field: str = "age") -> float:
    """A valid age in seconds: finite, ≥ 0 and ≤ MAX_AGE_S, else ``ValueError`` naming ``field``."""
    try:
        age = float(age_s)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number of seconds, got {age_s!r}") from None
    if not math.isfinite(age):
        raise ValueError(f"{field}: must be finite, got {age_s!r}")
    if age < 0:
        raise ValueError(f"{field}: must be ≥ 0 s (seconds since programming), got {age}")
    if age > MAX_AGE_S:
        raise ValueError(f"{field}: {age:g} s is beyond the supported maximum of {MAX_AGE_S:g} s (1000 years)")
    return age


def layer_age(layer: LayerState, chip_age_s: float) -> float:
    """Age of a layer's devices when the chip is ``chip_age_s`` old. Layers carried over
    unchanged into a derived chip (e.g. by recalibration) were already ``age_offset_s`` old
    when that chip was made; re-written layers restart their drift (offset 0)."""
    return chip_age_s + float(layer.meta.get("age_offset_s", 0.0))


@dataclass
class LayerReadout:
    """Normalised weights of one layer at an age and its GDC factors per mode."""

    w_norm: np.ndarray  # float32 (rows, cols), (G+(t) − G−(t))/g_max
    alpha_global: np.ndarray  # float32 (tiles,)
    alpha_column: np.ndarray  # float32 (tiles, cols)
    alpha_exact: np.ndarray  # float32 (tiles,)

    def alpha(self, mode: GdcMode) -> np.ndarray:
        """GDC factors (tiles, cols) for a mode (``off``: ones)."""
        n_tiles, cols = self.alpha_column.shape
        if mode == "global":
            return np.repeat(self.alpha_global[:, None], cols, axis=1)
        if mode == "column":
            return self.alpha_column.copy()
        if mode == "exact":
            return np.repeat(self.alpha_exact[:, None], cols, axis=1)
        if mode == "off":
            return np.ones((n_tiles, cols), np.float32)
        raise ValueError(f"gdc: unknown mode {mode!r}; known: {gdc.GDC_MODES}")

    @property
    def nbytes(self) -> int:
        return self.w_norm.nbytes + self.alpha_global.nbytes + self.alpha_column.nbytes + self.alpha_exact.nbytes


@dataclass
class ChipReadout:
    age_s: float
    read_seed: int
    layers: list[LayerReadout]

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def conductances_at(
    layer: LayerState, profile: ChipProfile, age_s: float, rng: np.random.Generator | None
) -> np.ndarray:
    """G(t) (2, rows, cols) in µS: drift ``G_prog·((t+t0)/t0)^−ν`` then 1/f noise
    ``max(0, G_drift + |G_drift|·σ_read·ξ)``. Stuck devices (ν < 0 code) do not drift.
    ``rng=None`` gives the noise-free drifted conductances."""
    device = profile.device_model
    dec = decode_devices(layer, device)
    g = dec.g_prog_us
    if profile.drift_scale > 0 and age_s > 0:
        g = g * device.drift_factor(dec.nu, age_s)
    if rng is not None and profile.read_noise_scale > 0:
        sigma_t = np.float32(profile.read_noise_scale * device.read_noise_time_factor(age_s))
        xi = rng.standard_normal(g.shape, dtype=np.float32)
        xi *= dec.read_q
        xi *= sigma_t
        xi *= np.abs(g)
        g = g + xi
        np.maximum(g, 0, out=g)
    return g.astype(np.float32, copy=False)


def read_layer(
    layer: LayerState, profile: ChipProfile, chip_seed: int, layer_index: int, age_s: float, read_seed: int
) -> LayerReadout:
    rng = stream(chip_seed, Stream.READ, read_seed, layer_index)
    g_max = profile.device_model.g_max_us
    w = pair_weight(conductances_at(layer, profile, layer_age(layer, age_s), rng), g_max)
    n_tiles = len(layer.tiles)
    cur = np.zeros(n_tiles)
    cur_col = np.zeros((n_tiles, w.shape[1]), np.float32)
    cur_exact = np.zeros(n_tiles)
    for k, (a, b) in enumerate(layer.tiles):
        cur[k], cur_col[k] = gdc.references(w[a:b], profile, rng)
        cur_exact[k] = np.abs(w[a:b]).mean(dtype=np.float64)
    return LayerReadout(
        w_norm=w,
        alpha_global=gdc.ratio(layer.gdc_baseline, cur),
        alpha_column=gdc.ratio(layer.gdc_baseline_col, cur_col),
        alpha_exact=gdc.ratio(layer.gdc_baseline_exact, cur_exact),
    )


def read(chip: ChipState, age_s: float, read_seed: int = 0) -> ChipReadout:
    """All layers of ``chip`` read out at ``age_s`` seconds after programming."""
    age_s = check_age(age_s)
    read_seed = check_seed(read_seed, "read_seed")
    layers = [read_layer(layer, chip.profile, chip.seed, i, age_s, read_seed) for i, layer in enumerate(chip.layers)]
    return ChipReadout(age_s=age_s, read_seed=read_seed, layers=layers)
