"""Programming: sample every random, static property of the chip exactly once (DESIGN §3.2–3.5).

For each device: programming noise (and optional device-to-device gain) → G_prog, the drift
exponent ν from the *target* conductance, and the stuck-at fault. Then the GDC baselines are
read through the periphery from the state as stored, so later read-outs compare like with like.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from chipsim import faults, gdc
from chipsim.mapping import column_scales, normalise, pair_targets_us, pair_weight, tile_bounds
from chipsim.profiles import ChipProfile
from chipsim.rng import Stream, check_seed, stream
from chipsim.state import ChipState, LayerSpec, LayerState, check_chip_id


def sample_nu(g_target_us: np.ndarray, profile: ChipProfile, seed: int, layer_index: int) -> np.ndarray:
    """Drift exponents ``ν = |μ_ν(G) + σ_ν(G)·ξ|·drift_scale`` for devices with conductance ``G``."""
    if profile.drift_scale <= 0:
        return np.zeros(g_target_us.shape, dtype=np.float32)
    mu, sd = profile.device_model.drift_nu_stats(g_target_us)
    xi = stream(seed, Stream.NU, layer_index).standard_normal(g_target_us.shape, dtype=np.float32)
    return (np.abs(mu + sd * xi) * np.float32(profile.drift_scale)).astype(np.float32)


def gdc_baselines(layer: LayerState, w_prog: np.ndarray, profile: ChipProfile, seed: int, layer_index: int) -> None:
    """Fill the layer's GDC baselines from its programmed weights ``w_prog`` (normalised)."""
    rng = stream(seed, Stream.GDC_BASELINE, layer_index)
    for k, (a, b) in enumerate(layer.tiles):
        layer.gdc_baseline[k], layer.gdc_baseline_col[k] = gdc.references(w_prog[a:b], profile, rng)
        layer.gdc_baseline_exact[k] = gdc.exact_reference(layer.w_norm[a:b])  # of the targets


def sample_devices(
    g_target_us: np.ndarray, profile: ChipProfile, seed: int, layer_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """(G_prog in µS, ν with fault codes) for stacked device targets, float32.

    ``G_prog = max(0, G_target + σ_prog(G_target)·ξ)``, optionally × ``(1 + σ_d2d·ξ)``;
    ``ν = |μ_ν + σ_ν·ξ|·drift_scale``; stuck devices are set to 0 or g_max and flagged in ν.
    """
    device = profile.device_model
    shape = g_target_us.shape
    g_prog = g_target_us.copy()
    if profile.prog_noise_scale > 0:
        xi = stream(seed, Stream.PROG, layer_index).standard_normal(shape, dtype=np.float32)
        g_prog += (profile.prog_noise_scale * device.prog_noise_std_us(g_target_us)) * xi
        np.maximum(g_prog, 0, out=g_prog)
    if profile.d2d_sigma > 0:
        xi = stream(seed, Stream.D2D, layer_index).standard_normal(shape, dtype=np.float32)
        g_prog *= 1 + profile.d2d_sigma * xi
        np.maximum(g_prog, 0, out=g_prog)
    nu = sample_nu(g_target_us, profile, seed, layer_index)
    codes = faults.sample_faults(
        shape, profile.p_stuck_reset, profile.p_stuck_set, stream(seed, Stream.FAULTS, layer_index)
    )
    g_prog[codes == faults.STUCK_RESET] = 0.0
    g_prog[codes == faults.STUCK_SET] = device.g_max_us
    return g_prog.astype(np.float32), faults.encode_nu(nu.astype(np.float32), codes)


def _check_tiles(name: str, tiles: list[tuple[int, int]], n_rows: int, tile_rows: int) -> None:
    edges = [0]
    for a, b in tiles:
        if a != edges[-1] or not a < b or b - a > tile_rows:
            raise ValueError(
                f"layer {name!r}: tiles {tiles} must cover the {n_rows} rows contiguously, "
                f"each with at most tile_rows={tile_rows} rows"
            )
        edges.append(b)
    if edges[-1] != n_rows:
        raise ValueError(f"layer {name!r}: tiles cover {edges[-1]} of {n_rows} rows")


def program_layer(spec: LayerSpec, profile: ChipProfile, seed: int, layer_index: int) -> LayerState:
    """Program one matrix onto tiles; returns its immutable state."""
    weight = np.ascontiguousarray(spec.weight, dtype=np.float32)
    g_max = profile.device_model.g_max_us
    w_norm = normalise(weight, column_scales(weight))
    g_target = pair_targets_us(w_norm, g_max)
    g_prog, nu = sample_devices(g_target, profile, seed, layer_index)
    dg = (g_prog - g_target).astype(np.float16)
    tiles = spec.tiles or tile_bounds(weight.shape[0], profile.tile_rows)
    _check_tiles(spec.name, tiles, weight.shape[0], profile.tile_rows)
    layer = LayerState(
        name=spec.name,
        weight=weight,
        input_range=float(spec.input_range),
        tiles=tiles,
        dg_us=dg,
        nu=nu.astype(np.float16),
        gdc_baseline=np.zeros(len(tiles), np.float32),
        gdc_baseline_col=np.zeros((len(tiles), weight.shape[1]), np.float32),
        gdc_baseline_exact=np.zeros(len(tiles), np.float32),
        bias=None if spec.bias is None else np.asarray(spec.bias, dtype=np.float32),
        meta=dict(spec.meta),
    )
    # Baselines from the state as stored (float16-decoded), at programming: no drift, no 1/f noise.
    gdc_baselines(layer, pair_weight(layer.g_prog_us(g_max), g_max), profile, seed, layer_index)
    return layer


def program(
    layers: Sequence[LayerSpec],
    profile: ChipProfile,
    seed: int,
    chip_id: str = "chip",
    meta: dict[str, Any] | None = None,
    attachments: dict[str, bytes] | None = None,
    progress: bool = False,
) -> ChipState:
    """Program layers onto a new chip. Everything random is sampled here, once."""
    seed = check_seed(seed)
    check_chip_id(chip_id)
    if not layers:
        raise ValueError("layers: a chip needs at least one analog layer")
    names = [s.name for s in layers]
    if len(set(names)) != len(names):
        raise ValueError("layers: layer names must be unique")
    iterator: Any = enumerate(layers)
    if progress:
        from chipsim.progress import progress_bar

        iterator = progress_bar(iterator, total=len(layers), desc="programming")
    states = [program_layer(spec, profile, seed, i) for i, spec in iterator]
    return ChipState(
        chip_id=chip_id,
        profile=profile,
        seed=seed,
        programmed_at=time.time(),
        layers=states,
        meta=dict(meta or {}),
        attachments=dict(attachments or {}),
    )
