"""Device level on torch tensors: one layer programmed onto a fresh chip instance and read at an age
(steps 1–5 of :mod:`models.torch_chip`), in the order of ``chipsim.programming`` and
``chipsim.readout``, with chipsim's own device formulas."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chipsim import gdc as chip_gdc
from chipsim.faults import stuck_masks
from chipsim.mapping import column_scales, pair_targets_us, tile_bounds
from chipsim.modes import GdcMode
from chipsim.profiles import ChipProfile
from models.torch_chip.gradients import GradientMode


@dataclass
class DeviceDraws:
    """The random numbers of one chip instance of one layer, each (2, rows, cols): standard
    normals for programming noise, device-to-device gain, drift exponent and 1/f read noise,
    and a uniform [0, 1) number for the stuck-at fault."""

    prog: torch.Tensor
    d2d: torch.Tensor
    nu: torch.Tensor
    fault_u: torch.Tensor
    read: torch.Tensor

    @classmethod
    def draw(cls, shape: tuple[int, ...], generator: torch.Generator, dtype=torch.float32) -> DeviceDraws:
        def n() -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=dtype)

        return cls(
            prog=n(), d2d=n(), nu=n(), fault_u=torch.rand(shape, generator=generator, dtype=torch.float32), read=n()
        )


def program_devices(
    g_target_us: torch.Tensor, profile: ChipProfile, draws: DeviceDraws
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(G_prog µS, ν, stuck mask) as ``chipsim.programming.sample_devices`` computes them.

    ``G_prog = max(0, G + prog_noise_scale·σ_prog(G)·ξ)`` (then × (1 + σ_d2d·ξ)), ``ν = |μ_ν +
    σ_ν·ξ|·drift_scale`` from the *target*, then stuck-at faults as drop-connect: RESET devices
    read 0 µS, SET devices g_max, and neither drifts (ν = 0).
    """
    device = profile.device_model
    g_prog = g_target_us
    if profile.prog_noise_scale > 0:
        sigma = (profile.prog_noise_scale * device.prog_noise_std_us(g_target_us)).detach()
        g_prog = (g_target_us + sigma * draws.prog).clamp(min=0)
    if profile.d2d_sigma > 0:
        g_prog = (g_prog * (1 + profile.d2d_sigma * draws.d2d)).clamp(min=0)
    if profile.drift_scale > 0:
        mu, sd = device.drift_nu_stats(g_target_us)
        nu = torch.abs(mu + sd * draws.nu) * profile.drift_scale
    else:
        nu = torch.zeros_like(g_target_us)
    reset, stuck_set = stuck_masks(draws.fault_u, profile.p_stuck_reset, profile.p_stuck_set)
    stuck = reset | stuck_set
    if bool(stuck.any()):
        g_prog = torch.where(reset, torch.zeros_like(g_prog), g_prog)
        g_prog = torch.where(stuck_set, torch.full_like(g_prog, device.g_max_us), g_prog)
        nu = torch.where(stuck, torch.zeros_like(nu), nu)
    return g_prog, nu, stuck


def conductances_at(
    g_prog_us: torch.Tensor, nu: torch.Tensor, profile: ChipProfile, age_s: float, read_xi: torch.Tensor | None
) -> torch.Tensor:
    """G(t) µS as ``chipsim.readout.conductances_at``: drift ``G_prog·((t+t0)/t0)^−ν`` then
    accumulated 1/f noise ``max(0, G_drift + |G_drift|·σ_read(G_prog, t)·ξ)``."""
    device = profile.device_model
    g = g_prog_us
    if profile.drift_scale > 0 and age_s > 0:
        g = g_prog_us * device.drift_factor(nu, age_s)
    if read_xi is not None and profile.read_noise_scale > 0:
        sigma = (device.read_noise_rel_std(g_prog_us, age_s) * profile.read_noise_scale).detach()
        g = (g + torch.abs(g) * sigma * read_xi).clamp(min=0)
    return g


def gdc_alpha(
    w_prog: torch.Tensor,
    w_t: torch.Tensor,
    tiles: list[tuple[int, int]],
    profile: ChipProfile,
    rng: np.random.Generator,
    w_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """GDC factors (tiles, cols) for the profile's mode, from chipsim's own identity read
    (``chipsim.gdc.references``) of the programmed (age 0, baseline) and aged weights; in
    ``exact`` mode chipsim's ``gdc.exact_reference`` of the normalised target weights ``w_target``
    (required there) over that of the aged weights, as the chip computes it.
    Always without gradient: on the chip α is a measured constant."""
    mode = profile.gdc
    cols = w_t.shape[1]
    if mode == GdcMode.OFF:
        return torch.ones(len(tiles), cols, dtype=w_t.dtype)
    wp = w_prog.detach().to(torch.float32).cpu().numpy()
    wt = w_t.detach().to(torch.float32).cpu().numpy()
    alpha = np.ones((len(tiles), cols), np.float32)
    if mode == GdcMode.EXACT and w_target is None:
        raise ValueError("w_target: the exact GDC reference is taken of the target weights; pass them")
    for k, (a, b) in enumerate(tiles):
        if mode == GdcMode.EXACT:
            w_ref = w_target[a:b].detach().to(torch.float32).cpu().numpy()  # type: ignore[index]
            alpha[k] = chip_gdc.ratio(chip_gdc.exact_reference(w_ref), chip_gdc.exact_reference(wt[a:b]))
            continue
        base, base_col = chip_gdc.references(wp[a:b], profile, rng)
        cur, cur_col = chip_gdc.references(wt[a:b], profile, rng)
        alpha[k] = chip_gdc.ratio(base_col, cur_col) if mode == GdcMode.COLUMN else chip_gdc.ratio(base, cur)
    return torch.from_numpy(alpha).to(w_t.dtype)


@dataclass
class AgedWeights:
    """One chip instance of one layer read at an age: normalised weights at programming
    (``w_prog``) and at the age (``w_t``), column scales, tiles and GDC factors."""

    w_t: torch.Tensor
    w_prog: torch.Tensor
    col_scale: torch.Tensor
    tiles: list[tuple[int, int]]
    alpha: torch.Tensor


def age_weights(
    weight: torch.Tensor,
    profile: ChipProfile,
    age_s: float,
    generator: torch.Generator,
    np_rng: np.random.Generator,
    draws: DeviceDraws | None = None,
    gradient: GradientMode = GradientMode.STE,
) -> AgedWeights:
    """Program ``weight`` (rows = inputs, cols = outputs) onto a fresh chip instance and read it
    at ``age_s``. Differentiable in ``weight`` except for the GDC factors, and, in
    ``THROUGH_CHIP``, for the column scales (a fully stuck column then informs no weight)."""
    g_max = profile.device_model.g_max_us
    s = column_scales(weight)
    if gradient == GradientMode.THROUGH_CHIP:
        s = s.detach()
    w_norm = weight / s
    g_target = pair_targets_us(w_norm, g_max)
    if draws is None:
        draws = DeviceDraws.draw(tuple(g_target.shape), generator, weight.dtype)
    g_prog, nu, _ = program_devices(g_target, profile, draws)
    g_t = conductances_at(g_prog, nu, profile, age_s, draws.read)
    w_prog = (g_prog[0] - g_prog[1]) / g_max
    w_t = (g_t[0] - g_t[1]) / g_max
    tiles = tile_bounds(weight.shape[0], profile.tile_rows)
    alpha = gdc_alpha(w_prog, w_t, tiles, profile, np_rng, w_target=w_norm)
    return AgedWeights(w_t=w_t, w_prog=w_prog, col_scale=s, tiles=tiles, alpha=alpha)
