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
from chipsim.half import to_float16, to_float32
from chipsim.mapping import column_scales, normalise, pair_targets_us, pair_weight, tile_bounds
from chipsim.profiles import ChipProfile
from chipsim.rng import Stream, check_seed, stream
from chipsim.state import ChipState, LayerSpec, LayerState, check_chip_id

#: Devices sampled per step: every intermediate of a step stays in the CPU's cache (float32, 256 KiB
#: per array), so the elementwise formulas cost a fraction of what whole-layer arrays do. The
#: draws do not depend on it: a generator's draws of n values in pieces are its draws of n at once.
CHUNK = 1 << 16


def sample_nu(g_target_us: np.ndarray, profile: ChipProfile, seed: int, layer_index: int) -> np.ndarray:
    """Drift exponents ``ν = |μ_ν(G) + σ_ν(G)·ξ|·drift_scale`` for devices with conductance ``G``."""
    if profile.drift_scale <= 0:
        return np.zeros(g_target_us.shape, dtype=np.float32)
    mu, sd = profile.device_model.drift_nu_stats(g_target_us)
    return _nu(
        mu, sd, stream(seed, Stream.NU, layer_index).standard_normal(g_target_us.shape, dtype=np.float32), profile
    )


def _nu(mu: np.ndarray, sd: np.ndarray, xi: np.ndarray, profile: ChipProfile) -> np.ndarray:
    """``|μ + σ·ξ|·drift_scale`` computed in ``xi`` (the same float32 operations, in place)."""
    xi *= sd
    xi += mu
    np.abs(xi, out=xi)
    xi *= np.float32(profile.drift_scale)
    return xi


def gdc_baselines(
    layer: LayerState,
    w_prog: np.ndarray,
    profile: ChipProfile,
    seed: int,
    layer_index: int,
    w_norm: np.ndarray | None = None,
) -> None:
    """Fill the layer's GDC baselines from its programmed weights ``w_prog`` (normalised);
    ``w_norm``: the layer's normalised targets when the caller has them."""
    rng = stream(seed, Stream.GDC_BASELINE, layer_index)
    w_norm = layer.w_norm if w_norm is None else w_norm
    for k, (a, b) in enumerate(layer.tiles):
        layer.gdc_baseline[k], layer.gdc_baseline_col[k] = gdc.references(w_prog[a:b], profile, rng)
        layer.gdc_baseline_exact[k] = gdc.exact_reference(w_norm[a:b])  # of the targets


def sample_devices(
    g_target_us: np.ndarray, profile: ChipProfile, seed: int, layer_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """(G_prog in µS, ν with fault codes) for stacked device targets, float32.

    ``G_prog = max(0, G_target + σ_prog(G_target)·ξ)``, optionally × ``(1 + σ_d2d·ξ)``;
    ``ν = |μ_ν + σ_ν·ξ|·drift_scale``; stuck devices are set to 0 or g_max and flagged in ν.
    Computed in steps of :data:`CHUNK` devices, one generator per stream as before.
    """
    g_target = np.ascontiguousarray(g_target_us, dtype=np.float32)
    flat = g_target.reshape(-1)
    g_prog, nu = np.empty_like(flat), np.empty_like(flat)
    draws = _Draws(profile, seed, layer_index)
    for a in range(0, flat.size, CHUNK):
        b = min(a + CHUNK, flat.size)
        _sample_chunk(flat[a:b], g_prog[a:b], nu[a:b], profile, draws)
    return g_prog.reshape(g_target.shape), nu.reshape(g_target.shape)


class _Draws:
    """The generators of a layer's programming streams (None where the profile draws nothing)."""

    def __init__(self, profile: ChipProfile, seed: int, layer_index: int) -> None:
        def rng(kind: Stream, used: bool) -> np.random.Generator | None:
            return stream(seed, kind, layer_index) if used else None

        self.prog = rng(Stream.PROG, profile.prog_noise_scale > 0)
        self.d2d = rng(Stream.D2D, profile.d2d_sigma > 0)
        self.nu = rng(Stream.NU, profile.drift_scale > 0)
        self.faults = rng(Stream.FAULTS, profile.p_stuck_reset > 0 or profile.p_stuck_set > 0)


def _sample_chunk(g: np.ndarray, g_prog: np.ndarray, nu: np.ndarray, profile: ChipProfile, draws: _Draws) -> None:
    """One step of :func:`sample_devices`: ``g_prog`` and ``nu`` (views) from targets ``g``."""
    device, n = profile.device_model, g.size
    g_prog[...] = g
    if draws.prog is not None:
        xi = draws.prog.standard_normal(n, dtype=np.float32)
        xi *= profile.prog_noise_scale * device.prog_noise_std_us(g)  # (scale·σ)·ξ
        g_prog += xi
        np.maximum(g_prog, 0, out=g_prog)
    if draws.d2d is not None:
        xi = draws.d2d.standard_normal(n, dtype=np.float32)
        g_prog *= 1 + profile.d2d_sigma * xi
        np.maximum(g_prog, 0, out=g_prog)
    if draws.nu is None:
        nu[...] = 0.0
    else:
        mu, sd = device.drift_nu_stats(g)
        nu[...] = _nu(mu, sd, draws.nu.standard_normal(n, dtype=np.float32), profile)
    if draws.faults is not None:
        # the draw and the rule of faults.sample_faults, without its code array
        u = draws.faults.random(n, dtype=np.float32)
        for code, stuck in zip(
            (faults.STUCK_RESET, faults.STUCK_SET), faults.stuck_masks(u, profile.p_stuck_reset, profile.p_stuck_set)
        ):
            if stuck.any():
                g_prog[stuck] = 0.0 if code == faults.STUCK_RESET else device.g_max_us
                nu[stuck] = faults.NU_CODE[code]


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
    tiles = spec.tiles or tile_bounds(weight.shape[0], profile.tile_rows)
    _check_tiles(spec.name, tiles, weight.shape[0], profile.tile_rows)
    w_norm = normalise(weight, column_scales(weight))
    g_target = pair_targets_us(w_norm, g_max)
    g_prog, nu = sample_devices(g_target, profile, seed, layer_index)
    g_prog -= g_target
    dg = to_float16(g_prog)
    del g_prog
    layer = LayerState(
        name=spec.name,
        weight=weight,
        input_range=float(spec.input_range),
        tiles=tiles,
        dg_us=dg,
        nu=to_float16(nu),
        gdc_baseline=np.zeros(len(tiles), np.float32),
        gdc_baseline_col=np.zeros((len(tiles), weight.shape[1]), np.float32),
        gdc_baseline_exact=np.zeros(len(tiles), np.float32),
        bias=None if spec.bias is None else np.asarray(spec.bias, dtype=np.float32),
        meta=dict(spec.meta),
    )
    del nu
    # Baselines from the state as stored (float16-decoded), at programming: no drift, no 1/f
    # noise. Decoded as LayerState.g_prog_us does, reusing the targets.
    g_target += to_float32(dg)
    np.maximum(g_target, 0, out=g_target)
    gdc_baselines(layer, pair_weight(g_target, g_max), profile, seed, layer_index, w_norm)
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
