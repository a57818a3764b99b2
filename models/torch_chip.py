"""The chip on torch tensors: one layer programmed, aged and read, and one analog matrix product.

DESIGN §7. Every physical formula is imported from :mod:`chipsim` and run on torch tensors
(the device model's ``prog_noise_std_us``, ``drift_nu_stats``, ``drift_factor``,
``read_noise_rel_std``; the periphery's ``dac``, ``adc``, ``output_noise_std_from``,
``ir_drop_delta_from`` on the tile's matrix products, computed for convolutions as convolutions;
GDC's ``references``/``ratio``), so training sees the same chip the runtime emulates. What this
module adds is only the *orchestration* that chipsim does in numpy at programming and read-out
time, in the same order as ``chipsim.programming``, ``chipsim.readout`` and
``chipsim.reference.analog_matmul``:

1. channelwise remapping: ``s_col = max|W[:, col]|``, ``w = W/s_col`` ∈ [−1, 1]
2. differential pair targets ``G± = g_max·max(±w, 0)`` (µS)
3. programming noise ``G_prog = max(0, G + σ_prog(G)·ξ)``, drift exponent ``ν = |μ_ν + σ_ν·ξ|``
   from the target, stuck-at faults as drop-connect (RESET → 0 µS, SET → g_max, no drift)
4. age ``t``: ``G_drift = G_prog·((t+t0)/t0)^−ν``, 1/f noise ``max(0, G_drift + |G_drift|·σ_read·ξ)``
5. GDC: α per tile from chipsim's identity read at programming and at ``t`` (numpy, no gradient)
6. DAC (clip to ±r, ÷r, quantise), per tile ``x'@w(t)`` + IR drop + per-MVM read noise and
   output noise (one Gaussian with their combined σ), ADC, ``× α_k``, summed over tiles,
   ``× r·s_col`` + bias.

The value is the chip's in every :class:`GradientMode`; the mode only decides what autograd sees.
In every mode the noise *amplitudes* (σ_prog, σ_read, the per-MVM σ) are constants for autograd:
their formulas have infinite slope where a conductance or input is 0 (``g^0.65``, ``sqrt``), which
would turn the gradient into NaN; the noise still scales with the weights in the forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from chipsim import gdc as chip_gdc
from chipsim.faults import stuck_masks
from chipsim.mapping import column_scales, pair_targets_us, tile_bounds
from chipsim.modes import GdcMode
from chipsim.periphery import adc, dac, ir_drop_delta_from, ir_drop_ramp, output_noise_std_from
from chipsim.profiles import ChipProfile


class GradientMode(StrEnum):
    """The gradient of the noisy forward (Rasch et al., Nat. Commun. 14:5282 (2023), "Methods").

    The values are the names the training CLI and the recorded recipes carry.
    """

    #: Extended straight-through estimator: the noisy forward runs under ``torch.no_grad()`` and
    #: enters as a detached delta, ``y = y_clean + (y_noisy − y_clean).detach()``; the gradient is
    #: the clean layer's and autograd stores nothing of the noise model. The trainer's default.
    STE = "ste"
    #: Autograd through the noise model, with the DAC and ADC rounding as identities (straight
    #: through) and the DAC clip differentiable in x and in the range r. Trains, at the cost of
    #: keeping the noise model in the graph.
    THROUGH_NOISE = "through"
    #: Autograd through the chip as built, to see what the hardware lets through: stuck devices
    #: pass nothing, the DAC passes gradient only inside ±r (its rounding as identity), IR drop is
    #: differentiated, the ADC passes its derivative in expectation over the Gaussian noise in front
    #: of it (:func:`adc_expected_derivative`). The column scales and the DAC range are digital
    #: constants set at programming, so neither gets a gradient: a diagnostic, not a way to learn
    #: ranges (``studies.diagnose`` measures gradient sensitivity with it).
    THROUGH_CHIP = "through-chip"


# --------------------------------------------------------------------------- device level
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


# --------------------------------------------------------------------------- periphery
@dataclass
class MvmDraws:
    """Standard normals of one analog MVM, one (batch, cols) array per tile, scaled by the
    combined σ of per-MVM weight read noise and ADC output noise (the draws of
    ``chipsim.reference.draw_mvm_noise``)."""

    draws: list[torch.Tensor]

    @classmethod
    def draw(cls, batch: int, cols: int, n_tiles: int, generator: torch.Generator, dtype=torch.float32) -> MvmDraws:
        return cls([torch.randn(batch, cols, generator=generator, dtype=dtype) for _ in range(n_tiles)])


class _ValueWithGate(torch.autograd.Function):
    """Value ``value`` (exactly), gradient ``gate ⊙ upstream`` into ``x`` (``gate`` None: 1)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate if gate is not None else torch.empty(0))
        ctx.has_gate = gate is not None
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (gate,) = ctx.saved_tensors
        return (grad * gate.to(grad.dtype) if ctx.has_gate else grad), None, None


def _normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def adc_expected_derivative(y: torch.Tensor, sigma: float | torch.Tensor, bound: float, levels: int) -> torch.Tensor:
    """``d/dy E_ξ[ADC(y + σ·ξ)]``, ξ ~ N(0, 1): the gradient of the ADC *in expectation over the
    Gaussian noise in front of it* (the chip's output noise and per-MVM read noise; ``sigma`` a
    number or a tensor broadcastable to ``y``), elementwise, for the chipsim ADC
    (``chipsim.periphery.adc``: round to steps of ``Δ = 2·bound/levels``, then clip to ±bound).

    The rounded, clipped staircase jumps by ``J_k = clip((k+1)Δ) − clip(kΔ)`` at ``t_k = (k+½)Δ``;
    smoothing by the Gaussian noise turns each jump into ``J_k·φ((y − t_k)/σ)/σ``. On a fine grid
    (Δ ≲ 2σ) the sum is ≈ 1 inside the range; on a coarse grid it is concentrated near the
    thresholds, ≈ 0 in the zero bin (|y| < Δ/2) and beyond the bound. Without quantisation it is
    ``P(|y + σξ| < bound)``. Where σ = 0 and the ADC quantises, the true derivative is zero almost
    everywhere; there this function returns the clipped straight-through estimate (1 inside ±bound).
    """
    y = y.detach().to(torch.float64)
    if levels <= 0 and bound <= 0:
        return torch.ones_like(y)
    sig = torch.as_tensor(sigma, dtype=torch.float64).detach().expand_as(y)
    noiseless = sig <= 0
    sig = torch.where(noiseless, torch.ones_like(sig), sig)  # placeholder, replaced below
    inside = (y.abs() < bound) if bound > 0 else torch.ones_like(y, dtype=torch.bool)
    step = 2.0 * bound / levels if levels > 0 else 0.0
    noisy = sig[~noiseless]
    s_min, s_max = (float(noisy.min()), float(noisy.max())) if noisy.numel() else (0.0, 0.0)
    if levels <= 0 or step < s_min / 4:
        # no staircase, or a ripple ≤ 2·exp(−2π²σ²/Δ²) < 1e-13: a clipped straight line
        gate = _normal_cdf((bound - y) / sig) - _normal_cdf((-bound - y) / sig) if bound > 0 else torch.ones_like(y)
    else:
        m = int(math.ceil(7.0 * s_max / step)) + 1
        k0 = torch.floor(y / step - 0.5)
        gate = torch.zeros_like(y)
        for j in range(-m, m + 1):  # the thresholds within ±7σ of y
            k = k0 + j
            lo, hi = k * step, (k + 1) * step
            if bound > 0:
                lo, hi = lo.clamp(-bound, bound), hi.clamp(-bound, bound)
            gate = gate + (hi - lo) * _normal_pdf((y - (k + 0.5) * step) / sig) / sig
    return torch.where(noiseless, inside.to(torch.float64), gate)


def _adc_active(profile: ChipProfile) -> bool:
    return profile.out_levels > 0 or profile.out_bound > 0


def _ste(exact: torch.Tensor, smooth: torch.Tensor, straight_through: bool) -> torch.Tensor:
    """``exact`` in value; with ``straight_through`` the gradient of ``smooth`` (identity STE)."""
    return smooth + (exact - smooth).detach() if straight_through else exact


class TileProducts:
    """The matrix products of one tile's MVM that the periphery needs, from the DAC-unit inputs
    ``x`` of the tile's rows and its normalised weights ``w`` at the age (``n_rows`` rows):
    ``x@w``, ``|x|@|w|`` and ``x̃@w`` (IR drop), ``x²@|w|`` (per-MVM read noise). This class
    computes them as matrix products of rows (batch, rows) → (batch, cols);
    :class:`ConvTileProducts` as convolutions, without unfolding."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor):
        self.x, self.w, self.n_rows = x, w, w.shape[0]

    def xw(self) -> torch.Tensor:
        return self.x @ self.w

    def abs_abs(self) -> torch.Tensor:
        return self.x.abs() @ self.w.abs()

    def ramped(self) -> torch.Tensor:
        return (self.x * ir_drop_ramp(self.n_rows, self.x)) @ self.w

    def sq_abs(self) -> torch.Tensor:
        return (self.x * self.x) @ self.w.abs()

    def per_col(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-column vector (cols,), shaped to broadcast over the outputs."""
        return v

    def noise(self, draw: torch.Tensor) -> torch.Tensor:
        """An :class:`MvmDraws` array (one row per MVM, batch·positions × cols) in output layout."""
        return draw


class ConvTileProducts(TileProducts):
    """One tile of a convolution's crossbar, its products computed as convolutions of the whole
    DAC-unit input ``x_dac`` (batch, C, H, W) instead of matrix products of unfolded patches.

    The crossbar's rows are the patch elements in ``F.unfold`` order (channel, kernel row, kernel
    column), so tile rows ``a:b`` are input channels ``a//kk … ⌈b/kk⌉`` (kk = k_h·k_w). Where a
    tile boundary cuts a channel's kernel, the other tile's weights are zeroed: a zero weight adds
    exactly 0. Per-row factors (the IR-drop ramp) go onto the weights. Every product is the
    unfolded one summed in another order, i.e. equal up to float rounding; each input element is
    touched once instead of k_h·k_w times.
    """

    def __init__(
        self,
        x_dac: torch.Tensor,
        w_t: torch.Tensor,
        a: int,
        b: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ):
        kk = kernel_size[0] * kernel_size[1]
        c0, c1 = a // kk, -(-b // kk)
        w = w_t[c0 * kk : c1 * kk].t()  # (cols, channels·kk): conv weight order
        self.lead, self.n_rows = a - c0 * kk, b - a
        if self.lead or c1 * kk != b:
            mask = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)
            mask[self.lead : self.lead + self.n_rows] = 1
            w = w * mask
        self.x, self.w = x_dac[:, c0:c1], w
        self.shape = (w.shape[0], c1 - c0, *kernel_size)
        self.geometry = dict(stride=stride, padding=padding, dilation=dilation)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w.reshape(self.shape), **self.geometry)

    def xw(self) -> torch.Tensor:
        return self._conv(self.x, self.w)

    def abs_abs(self) -> torch.Tensor:
        return self._conv(self.x.abs(), self.w.abs())

    def ramped(self) -> torch.Tensor:
        ramp = torch.zeros(self.w.shape[1], dtype=self.w.dtype, device=self.w.device)
        ramp[self.lead : self.lead + self.n_rows] = ir_drop_ramp(self.n_rows, self.w)
        return self._conv(self.x, self.w * ramp)

    def sq_abs(self) -> torch.Tensor:
        return self._conv(self.x * self.x, self.w.abs())

    def per_col(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, 1, 1) if v.ndim == 1 else v

    def noise(self, draw: torch.Tensor) -> torch.Tensor:
        # MvmDraws rows are (image, output position) in unfold order; outputs are (image, col, h, w)
        g = self.geometry
        h, w = (
            (self.x.shape[2 + i] + 2 * g["padding"][i] - g["dilation"][i] * (self.shape[2 + i] - 1) - 1)
            // g["stride"][i]
            + 1
            for i in range(2)
        )
        return draw.reshape(self.x.shape[0], h, w, draw.shape[1]).permute(0, 3, 1, 2)


def _dac_input(x: torch.Tensor, input_range: float | torch.Tensor, profile: ChipProfile, gradient: GradientMode):
    """(x in DAC units, the range r the outputs are scaled back by). Elementwise, so it commutes
    with unfolding (and DAC(0) = 0, so with zero padding too). What autograd sees per mode:
    ``STE`` anything (run under no_grad), ``THROUGH_NOISE`` the clip and ÷r with the rounding as
    identity, ``THROUGH_CHIP`` the clip mask with r constant."""
    clip = getattr(profile, "in_clip", True)
    if gradient == GradientMode.THROUGH_CHIP:
        r = input_range.detach() if isinstance(input_range, torch.Tensor) else input_range
        if not (clip or profile.in_levels > 0):
            return x / r, r  # what dac() computes for an ideal DAC
        with torch.no_grad():
            x_val = dac(x, r, profile.in_levels, clip)
        inside = (x.detach().abs() <= r) if clip else None
        return _ValueWithGate.apply(x / r, x_val, inside), r
    r = input_range
    x_dac = dac(x, r, profile.in_levels, clip)
    if gradient == GradientMode.THROUGH_NOISE:
        rr = torch.as_tensor(r, dtype=x.dtype)
        smooth = (torch.minimum(torch.maximum(x, -rr), rr) if clip else x) / rr
        x_dac = _ste(x_dac, smooth, True)
    return x_dac, r


def _tiles_through_periphery(
    tiles: list[TileProducts],
    aged: AgedWeights,
    r: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    gradient: GradientMode,
    adc_gates: list[torch.Tensor] | None,
) -> torch.Tensor:
    """Per tile: ``x@w`` + IR drop + per-MVM read noise and output noise, ADC, ``× α_k``; summed
    over tiles, ``× r·s_col`` (no bias). The formulas are chipsim's (``ir_drop_delta_from``,
    ``output_noise_std_from``, ``adc``) on the products ``tiles`` compute.

    ``THROUGH_NOISE`` passes the ADC rounding straight through; ``THROUGH_CHIP`` differentiates
    IR drop and gates the ADC by its expected derivative over the Gaussian noise in front of it
    (σ per output from ``chipsim.periphery.output_noise_std``), appended to ``adc_gates``."""
    through_chip = gradient == GradientMode.THROUGH_CHIP
    straight_through = gradient == GradientMode.THROUGH_NOISE
    needs_noise = profile.w_noise > 0 or profile.out_noise > 0
    y = None
    for k, t in enumerate(tiles):
        yk = t.xw()
        if profile.ir_drop > 0:
            yk = yk + ir_drop_delta_from(t.abs_abs(), t.ramped(), t.n_rows, profile.ir_drop)
        std = None
        if needs_noise:
            with torch.no_grad():  # a constant for autograd in every mode (module docstring)
                std = output_noise_std_from(t.sq_abs(), profile.w_noise, profile.out_noise)
        if through_chip and _adc_active(profile):
            with torch.no_grad():
                noisy = yk + std * t.noise(draws.draws[k]) if std is not None else yk
                value = adc(noisy, profile.out_bound, profile.out_levels)
                gate = adc_expected_derivative(
                    yk, std if std is not None else 0.0, profile.out_bound, profile.out_levels
                )
            if adc_gates is not None:
                adc_gates.append(gate)
            yk = _ValueWithGate.apply(yk, value, gate)
        else:
            if std is not None:
                yk = yk + std * t.noise(draws.draws[k])
            if not through_chip:
                yk = _ste(adc(yk, profile.out_bound, profile.out_levels), yk, straight_through)
        yk = t.per_col(aged.alpha[k]) * yk
        y = yk if y is None else y + yk
    return y * tiles[0].per_col(r * aged.col_scale)


def analog_matmul(
    x: torch.Tensor,
    aged: AgedWeights,
    input_range: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    bias: torch.Tensor | None = None,
    gradient: GradientMode = GradientMode.STE,
    adc_gates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``y ≈ x @ W + b`` through the aged tile, the torch twin of ``chipsim.reference.analog_matmul``.

    ``x`` (batch, rows) in input units, returns (batch, cols). ``gradient`` decides what autograd
    sees (:class:`GradientMode`; ``STE`` callers run this under ``no_grad``); the formulas are
    chipsim's. ``THROUGH_CHIP`` holds ``input_range`` constant and appends each tile's expected
    ADC derivative to ``adc_gates`` when given.
    """
    x_dac, r = _dac_input(x, input_range, profile, gradient)
    tiles = [TileProducts(x_dac[:, a:b], aged.w_t[a:b]) for a, b in aged.tiles]
    y = _tiles_through_periphery(tiles, aged, r, profile, draws, gradient, adc_gates)
    return y + bias if bias is not None else y


def analog_conv2d(
    x: torch.Tensor,
    aged: AgedWeights,
    input_range: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    bias: torch.Tensor | None = None,
    gradient: GradientMode = GradientMode.STE,
    adc_gates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """A convolution through the aged tile: :func:`analog_matmul` of the unfolded patches of ``x``
    (rows in ``F.unfold`` order, one MVM per image and output position), folded back, computed
    without unfolding (:class:`ConvTileProducts`): the DAC runs once per input element, the
    products as convolutions, noise is drawn per output. ``x`` (batch, C, H, W) in input units,
    ``aged.w_t`` (C·k_h·k_w, cols); returns (batch, cols, H_out, W_out). ``draws`` as for the
    unfolded product: (batch·H_out·W_out, cols) per tile, so one generator state gives the same
    chip either way. Gradient modes as :func:`analog_matmul`; ADC gates come in output layout.
    """
    x_dac, r = _dac_input(x, input_range, profile, gradient)
    tiles: list[TileProducts] = [
        ConvTileProducts(x_dac, aged.w_t, a, b, kernel_size, stride, padding, dilation) for a, b in aged.tiles
    ]
    y = _tiles_through_periphery(tiles, aged, r, profile, draws, gradient, adc_gates)
    return y + bias.reshape(-1, 1, 1) if bias is not None else y
