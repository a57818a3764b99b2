"""Read-out of a programmed chip at an age (DESIGN §3.2, §3.4).

``read(chip, age_s, read_seed)`` is a pure function of (state, age, seed): it applies the
power-law drift with each device's ν, adds the accumulated 1/f read noise drawn from the read
stream, and re-reads each tile with the identity for GDC. Two read seeds at one age differ only
in the random draws of that read-out (the 1/f noise and the GDC read's periphery noise).

The read stream of a layer is keyed by (chip seed, read seed, layer, age) (:func:`read_stream`):
every age is a read-out of its own, with a 1/f draw ξ independent of every other age's — as
aihwkit draws new read noise at each read-out — rather than one pattern rescaled with age, and
an age's read-out stays reproducible: the same chip, age and read seed give the same weights.
The age in the key is the layer's device age (:func:`layer_age`: the chip's age plus the layer's
age offset), so a layer carried over unchanged into a derived chip reads as its parent's did at
the same device age. It enters the key as the bit pattern of its float64 seconds: two ages are
the same read-out exactly when they are the same number (the service quantises requested ages).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chipsim import gdc
from chipsim.ages import MAX_AGE_S as MAX_AGE_S  # re-exported: older imports read it from here
from chipsim.ages import check_age
from chipsim.mapping import pair_weight
from chipsim.modes import GdcMode
from chipsim.profiles import ChipProfile
from chipsim.rng import Stream, check_seed, stream
from chipsim.state import ChipState, DecodedDevices, LayerState, decode_devices, decode_rows


def layer_age(layer: LayerState, chip_age_s: float) -> float:
    """Age of a layer's devices when the chip is ``chip_age_s`` old. Layers carried over
    unchanged into a derived chip (e.g. by recalibration) were already ``age_offset_s`` old
    when that chip was made; re-written layers restart their drift (offset 0)."""
    return chip_age_s + float(layer.meta.get("age_offset_s", 0.0))


def _gdc_mode(mode: GdcMode | str) -> GdcMode:
    try:
        return GdcMode(mode)
    except ValueError:
        raise ValueError(f"gdc: unknown mode {mode!r}; known: {gdc.GDC_MODES}") from None


@dataclass
class LayerReadout:
    """Normalised weights of one layer at an age and its GDC factors per mode."""

    w_norm: np.ndarray  # float32 (rows, cols), (G+(t) − G−(t))/g_max
    alpha_global: np.ndarray  # float32 (tiles,)
    alpha_column: np.ndarray  # float32 (tiles, cols)
    alpha_exact: np.ndarray  # float32 (tiles,)

    def alpha(self, mode: GdcMode | str) -> np.ndarray:
        """GDC factors (tiles, cols) a mode applies to the tiles' outputs (``off``: ones)."""
        mode = _gdc_mode(mode)
        n_tiles, cols = self.alpha_column.shape
        if mode is GdcMode.OFF:
            return np.ones((n_tiles, cols), np.float32)
        if mode is GdcMode.COLUMN:
            return self.alpha_column.copy()
        return np.repeat(self.measured_alpha(mode)[:, None], cols, axis=1)

    def measured_alpha(self, mode: GdcMode | str) -> np.ndarray:
        """The factors a mode measures, in their own shape: ``column`` (tiles, cols), ``exact``
        (tiles,), ``global`` (tiles,); ``off`` reports the global factor it would apply."""
        mode = _gdc_mode(mode)
        if mode is GdcMode.COLUMN:
            return self.alpha_column
        return self.alpha_exact if mode is GdcMode.EXACT else self.alpha_global

    def tile_alpha(self, mode: GdcMode | str) -> np.ndarray:
        """One factor per tile (tiles,): the exact reference's for ``exact``, else the global one
        (a ``column`` chip's per-tile summary is its tile-level global factor)."""
        return self.alpha_exact if _gdc_mode(mode) is GdcMode.EXACT else self.alpha_global

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
    dec = decode_devices(layer, profile.device_model)
    return _aged(dec, profile, age_s, _read_draw(dec.g_prog_us.shape, profile, rng))


def _read_draw(shape: tuple[int, ...], profile: ChipProfile, rng: np.random.Generator | None) -> np.ndarray | None:
    """The 1/f draw ξ of every device of a layer (None without read noise)."""
    if rng is None or profile.read_noise_scale <= 0:
        return None
    return rng.standard_normal(shape, dtype=np.float32)


def _aged(dec: DecodedDevices, profile: ChipProfile, age_s: float, xi: np.ndarray | None) -> np.ndarray:
    """:func:`conductances_at` from decoded devices and their draw ξ (consumed)."""
    device = profile.device_model
    g = dec.g_prog_us
    if profile.drift_scale > 0 and age_s > 0:
        g = g * device.drift_factor(dec.nu, age_s)
    if xi is not None:
        sigma_t = np.float32(profile.read_noise_scale * device.read_noise_time_factor(age_s))
        xi *= dec.read_q
        xi *= sigma_t
        xi *= np.abs(g)
        g = g + xi
        np.maximum(g, 0, out=g)
    return g.astype(np.float32, copy=False)


#: Devices per step of a read-out (:func:`read_weights`): a step's temporaries stay in the cache.
READ_CHUNK = 1 << 16


def read_weights(
    layer: LayerState, profile: ChipProfile, age_s: float, rng: np.random.Generator | None, keep_decoded: bool = True
) -> np.ndarray:
    """``pair_weight(conductances_at(...))``, the layer's normalised weights at ``age_s``, bit for
    bit, in blocks of rows: a layer whose devices are not cached (``keep_decoded=False`` and
    none yet) never holds more than its ξ, its result and one block (12 instead of ~56 bytes
    per weight at once)."""
    device = profile.device_model
    rows, cols = layer.weight.shape
    dec = decode_devices(layer, device) if keep_decoded or device.name in layer._decoded else None
    xi = _read_draw((2, rows, cols), profile, rng)
    w = np.empty((rows, cols), np.float32)
    step = max(1, READ_CHUNK // (2 * cols))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        part = (
            decode_rows(layer, device, a, b)
            if dec is None
            else DecodedDevices(dec.g_prog_us[:, a:b], dec.nu[:, a:b], dec.read_q[:, a:b])
        )
        w[a:b] = pair_weight(_aged(part, profile, age_s, None if xi is None else xi[:, a:b]), device.g_max_us)
    return w


def read_stream(chip_seed: int, read_seed: int, layer_index: int, age_s: float) -> np.random.Generator:
    """The generator of one layer's read-out when its devices are ``age_s`` seconds old (its
    :func:`layer_age`): its 1/f noise ξ, then the GDC identity read's periphery noise. Keyed by
    (chip seed, read seed, layer, age): the age as the two 32-bit halves of its float64 bit
    pattern (−0.0 read as 0.0), a fixed-width key."""
    bits = int(np.float64(float(age_s) + 0.0).view(np.uint64))
    return stream(chip_seed, Stream.READ, read_seed, layer_index, bits >> 32, bits & 0xFFFFFFFF)


def read_layer(
    layer: LayerState,
    profile: ChipProfile,
    chip_seed: int,
    layer_index: int,
    age_s: float,
    read_seed: int,
    keep_decoded: bool = True,
) -> LayerReadout:
    """One layer read out at chip age ``age_s`` (seconds) with read seed ``read_seed``;
    ``keep_decoded`` as in :func:`conductances_at` (the same values either way)."""
    device_age = layer_age(layer, age_s)
    rng = read_stream(chip_seed, read_seed, layer_index, device_age)
    w = read_weights(layer, profile, device_age, rng, keep_decoded)
    n_tiles = len(layer.tiles)
    cur = np.zeros(n_tiles)
    cur_col = np.zeros((n_tiles, w.shape[1]), np.float32)
    cur_exact = np.zeros(n_tiles)
    for k, (a, b) in enumerate(layer.tiles):
        cur[k], cur_col[k] = gdc.references(w[a:b], profile, rng)
        cur_exact[k] = gdc.exact_reference(w[a:b])
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
