"""Hardware-aware training (HWA): the chip's noise model on torch tensors, and analog layers.

DESIGN §7. Every physical formula is imported from :mod:`chipsim` and run on torch tensors
(the device model's ``prog_noise_std_us``, ``drift_nu_stats``, ``drift_factor``,
``read_noise_rel_std``; the periphery's ``dac``, ``adc``, ``output_noise_std``, ``ir_drop_delta``;
GDC's ``references``/``ratio``), so training sees the same chip the runtime emulates. What this
module adds is only the *orchestration* that chipsim does in numpy at programming and read-out
time: draw one chip instance per batch, age it, and run one analog matrix product through it.

Pipeline of one analog layer in the noisy forward (same order as ``chipsim.programming``,
``chipsim.readout`` and ``chipsim.reference.analog_matmul``):

1. channelwise remapping: ``s_col = max|W[:, col]|``, ``w = W/s_col`` ∈ [−1, 1]
2. differential pair targets ``G± = g_max·max(±w, 0)`` (µS)
3. programming noise ``G_prog = max(0, G + σ_prog(G)·ξ)``, drift exponent ``ν = |μ_ν + σ_ν·ξ|``
   from the target, stuck-at faults as drop-connect (RESET → 0 µS, SET → g_max, no drift)
4. age ``t``: ``G_drift = G_prog·((t+t0)/t0)^−ν``, 1/f noise ``max(0, G_drift + |G_drift|·σ_read·ξ)``
5. GDC: α per tile from chipsim's identity read at programming and at ``t`` (numpy, no gradient)
6. DAC (clip to ±r, ÷r, quantise), per tile ``x'@w(t)`` + IR drop + per-MVM read noise and
   output noise (one Gaussian with their combined σ), ADC, ``× α_k``, summed over tiles,
   ``× r·s_col`` + bias.

Gradients (Rasch et al., Nat. Commun. 14:5282 (2023), "hardware-aware training"): in the
*extended straight-through estimator* (``mode="ste"``) the noisy forward runs under
``torch.no_grad()`` and its difference from the clean forward is added as a detached delta,
``y = y_clean + (y_noisy − y_clean).detach()``: the value is the chip's, the gradient is the
clean layer's, and autograd stores nothing of the noise model. ``mode="through"`` keeps the
noise model in the autograd graph (quantisers as straight-through identities), for comparison.
In both modes the noise *amplitudes* (σ_prog, σ_read, the per-MVM σ) are constants for autograd:
their formulas have infinite slope where a conductance or input is 0 (``g^0.65``, ``sqrt``), which
would turn the gradient into NaN; the noise still scales with the weights in the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chipsim import gdc as chip_gdc
from chipsim.faults import stuck_masks
from chipsim.mapping import column_scales, pair_targets_us, tile_bounds
from chipsim.periphery import adc, dac, ir_drop_delta, output_noise_std
from chipsim.profiles import ChipProfile, get_profile

YEAR_S = 365 * 86400.0
Mode = Literal["ste", "through"]


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class HwaConfig:
    """What the noisy forward emulates during training.

    ``profile`` names the chipsim preset whose device and periphery are emulated. The scales
    multiply the profile's own settings (1 = the chip as deployed); Rasch et al. (2023) found
    training with somewhat *stronger* noise than the target chip generalises better to it.
    """

    profile: str = "pcm"
    #: × programming noise, 1/f read noise, per-MVM weight noise and ADC output noise.
    noise_scale: float = 1.0
    #: × stuck-at probabilities (drop-connect rate).
    fault_scale: float = 1.0
    #: Age per batch, log-uniform in [age_min_s, age_max_s] seconds (1 s … 10 y).
    age_min_s: float = 1.0
    age_max_s: float = 10 * YEAR_S
    #: Emulate the profile's global drift compensation in the noisy forward (chip default: on).
    gdc: bool = True
    mode: Mode = "ste"

    def to_json(self) -> dict:
        return asdict(self)


def training_profile(config: HwaConfig, strength: float = 1.0) -> ChipProfile:
    """The chipsim profile the noisy forward runs, with the training scales applied.

    ``strength`` ∈ [0, 1] is the noise ramp: 0 = a noise-free (but still quantised) chip,
    1 = ``config``'s full strength. Drift is ramped through ``drift_scale`` (ν ← strength·ν).
    """
    base = get_profile(config.profile)
    k = config.noise_scale * strength
    f = config.fault_scale * strength
    return base.model_copy(update=dict(
        prog_noise_scale=base.prog_noise_scale * k,
        read_noise_scale=base.read_noise_scale * k,
        w_noise=base.w_noise * k,
        out_noise=base.out_noise * k,
        drift_scale=base.drift_scale * strength,
        p_stuck_reset=min(1.0, base.p_stuck_reset * f),
        p_stuck_set=min(1.0, base.p_stuck_set * f),
        gdc=(base.gdc if base.gdc != "off" else "global") if config.gdc else "off",
    ))


def sample_age(generator: torch.Generator, age_min_s: float, age_max_s: float) -> float:
    """One age (s), log-uniform in [age_min_s, age_max_s]: every decade is equally likely,
    which matches evaluating at 1 s, 1 h, 1 d, … 10 y."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return math.exp(math.log(age_min_s) + u * (math.log(age_max_s) - math.log(age_min_s)))


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

        return cls(prog=n(), d2d=n(), nu=n(), fault_u=torch.rand(shape, generator=generator, dtype=torch.float32), read=n())


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
    w_prog: torch.Tensor, w_t: torch.Tensor, tiles: list[tuple[int, int]], profile: ChipProfile, rng: np.random.Generator,
    w_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """GDC factors (tiles, cols) for the profile's mode, from chipsim's own identity read
    (``chipsim.gdc.references``) of the programmed (age 0, baseline) and aged weights; in
    ``exact`` mode chipsim's ``gdc.exact_reference`` of the normalised target weights ``w_target``
    (required there) over that of the aged weights, as the chip computes it.
    Always without gradient: on the chip α is a measured constant."""
    mode = profile.gdc
    cols = w_t.shape[1]
    if mode == "off":
        return torch.ones(len(tiles), cols, dtype=w_t.dtype)
    wp = w_prog.detach().to(torch.float32).cpu().numpy()
    wt = w_t.detach().to(torch.float32).cpu().numpy()
    alpha = np.ones((len(tiles), cols), np.float32)
    if mode == "exact" and w_target is None:
        raise ValueError("w_target: the exact GDC reference is taken of the target weights; pass them")
    for k, (a, b) in enumerate(tiles):
        if mode == "exact":
            w_ref = w_target[a:b].detach().to(torch.float32).cpu().numpy()  # type: ignore[index]
            alpha[k] = chip_gdc.ratio(chip_gdc.exact_reference(w_ref), chip_gdc.exact_reference(wt[a:b]))
            continue
        base, base_col = chip_gdc.references(wp[a:b], profile, rng)
        cur, cur_col = chip_gdc.references(wt[a:b], profile, rng)
        alpha[k] = chip_gdc.ratio(base_col, cur_col) if mode == "column" else chip_gdc.ratio(base, cur)
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
) -> AgedWeights:
    """Program ``weight`` (rows = inputs, cols = outputs) onto a fresh chip instance and read it
    at ``age_s``. Differentiable in ``weight`` except for the GDC factors."""
    g_max = profile.device_model.g_max_us
    s = column_scales(weight)
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


def _ste(exact: torch.Tensor, smooth: torch.Tensor, straight_through: bool) -> torch.Tensor:
    """``exact`` in value; with ``straight_through`` the gradient of ``smooth`` (identity STE)."""
    return smooth + (exact - smooth).detach() if straight_through else exact


def analog_matmul(
    x: torch.Tensor,
    aged: AgedWeights,
    input_range: float | torch.Tensor,
    profile: ChipProfile,
    draws: MvmDraws,
    bias: torch.Tensor | None = None,
    straight_through: bool = False,
) -> torch.Tensor:
    """``y ≈ x @ W + b`` through the aged tile, the torch twin of ``chipsim.reference.analog_matmul``.

    ``x`` (batch, rows) in input units, returns (batch, cols). With ``straight_through`` the DAC
    and ADC quantisers pass gradients as identities (used by ``mode="through"``); the formulas
    themselves are chipsim's.
    """
    r = input_range
    clip = getattr(profile, "in_clip", True)
    x_dac = dac(x, r, profile.in_levels, clip)
    needs_noise = profile.w_noise > 0 or profile.out_noise > 0
    if straight_through:
        rr = torch.as_tensor(r, dtype=x.dtype)
        smooth = (torch.minimum(torch.maximum(x, -rr), rr) if clip else x) / rr
        x_dac = _ste(x_dac, smooth, True)
    y = None
    for k, (a, b) in enumerate(aged.tiles):
        w = aged.w_t[a:b]
        xk = x_dac[:, a:b]
        yk = xk @ w
        if profile.ir_drop > 0:
            yk = yk + ir_drop_delta(xk, w, profile.ir_drop)
        if needs_noise:
            yk = yk + output_noise_std(xk, w, profile.w_noise, profile.out_noise).detach() * draws.draws[k]
        yk = _ste(adc(yk, profile.out_bound, profile.out_levels), yk, straight_through)
        yk = aged.alpha[k] * yk
        y = yk if y is None else y + yk
    y = y * (r * aged.col_scale)
    if bias is not None:
        y = y + bias
    return y


# --------------------------------------------------------------------------- context & layers
@dataclass
class HwaContext:
    """Shared by all analog layers of a model during HWA training: the config, the generator
    (explicit; no global RNG), and the chip drawn for the current batch (age, ramp strength)."""

    config: HwaConfig
    generator: torch.Generator
    age_s: float = 0.0
    strength: float = 1.0
    profile: ChipProfile = field(default=None)  # type: ignore[assignment]
    np_rng: np.random.Generator = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.new_batch(self.strength, self.age_s)

    def new_batch(self, strength: float, age_s: float | None = None) -> None:
        """Start a batch: a new chip instance at a new age (log-uniform unless given)."""
        self.strength = float(strength)
        self.age_s = sample_age(self.generator, self.config.age_min_s, self.config.age_max_s) if age_s is None else age_s
        self.profile = training_profile(self.config, self.strength)
        # GDC's identity read is chipsim numpy code; its generator is seeded from ours.
        self.np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=self.generator)))


class AnalogLayer:
    """Mixin for layers the chip maps to crossbars. Holds the DAC input range ``input_range``
    (a learnable scalar; exported as ``agedchip.input_ranges``) and, during HWA training, a
    reference to the shared :class:`HwaContext`. Without a context (plain training, evaluation,
    export) the layer is exactly its torch base class."""

    learn_range: bool
    input_range: nn.Parameter

    def _init_analog(self) -> None:
        self.input_range = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.learn_range = False
        object.__setattr__(self, "hwa", None)  # not a submodule: no state, no export

    def chip_weight(self) -> torch.Tensor:
        """The weight in chip orientation (rows = inputs, cols = outputs)."""
        raise NotImplementedError

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _from_rows(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _clean(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _clip_input(self, x: torch.Tensor) -> torch.Tensor:
        """Clip to ±r in the clean path so r gets a gradient where it clips (learned ranges)."""
        r = self.input_range
        return torch.minimum(torch.maximum(x, -r), r)

    def _noisy(self, x: torch.Tensor, ctx: HwaContext, straight_through: bool) -> torch.Tensor:
        rows = self._to_rows(x)
        w = self.chip_weight()
        aged = age_weights(w, ctx.profile, ctx.age_s, ctx.generator, ctx.np_rng)
        draws = MvmDraws.draw(rows.shape[0], w.shape[1], len(aged.tiles), ctx.generator, rows.dtype)
        r = self.input_range if straight_through else self.input_range.detach()
        y = analog_matmul(rows, aged, r, ctx.profile, draws, None, straight_through)
        return self._from_rows(y, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx: HwaContext | None = self.hwa  # type: ignore[attr-defined]
        if ctx is None or not self.training:
            return self._clean(x)
        if ctx.config.mode == "through":
            return self._noisy(x, ctx, straight_through=True)
        clean = self._clean(self._clip_input(x))
        with torch.no_grad():
            noisy = self._noisy(x.detach(), ctx, straight_through=False)
        return clean + (noisy - clean).detach()


class AnalogLinear(AnalogLayer, nn.Linear):
    """``nn.Linear`` mapped to a crossbar (exports as ONNX Gemm/MatMul with an initializer)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_analog()

    def chip_weight(self) -> torch.Tensor:
        return self.weight.t()

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.in_features)

    def _from_rows(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _clean(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class AnalogConv2d(AnalogLayer, nn.Conv2d):
    """``nn.Conv2d`` mapped to a crossbar: rows are the ``C_in·k_h·k_w`` patch elements in
    torch's ``unfold`` order (channel, kernel row, kernel column), columns the output channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self._init_analog()

    def chip_weight(self) -> torch.Tensor:
        return self.weight.reshape(self.out_channels, -1).t()

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride, dilation=self.dilation)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (batch·positions, C·kh·kw)

    def _from_rows(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        h, w = (
            (x.shape[d] + 2 * self.padding[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1
            for i, d in ((0, 2), (1, 3))
        )
        return y.reshape(x.shape[0], h * w, self.out_channels).transpose(1, 2).reshape(x.shape[0], self.out_channels, h, w)

    def _clean(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)


def analog_layers(model: nn.Module) -> Iterator[tuple[str, AnalogLayer]]:
    """(qualified name, layer) of every analog layer, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, AnalogLayer):
            yield name, m


def attach(model: nn.Module, ctx: HwaContext | None) -> None:
    """Give every analog layer the HWA context (``None`` detaches: plain torch layers)."""
    for _, m in analog_layers(model):
        object.__setattr__(m, "hwa", ctx)


def input_ranges(model: nn.Module) -> dict[str, float]:
    """The DAC input range of each analog layer by module name."""
    return {name: float(m.input_range.detach()) for name, m in analog_layers(model)}


@torch.no_grad()
def calibrate_input_ranges(
    model: nn.Module, x: torch.Tensor, quantile: float = 0.9999, batch: int = 256
) -> dict[str, float]:
    """Set each analog layer's input range to ``quantile`` of |input| over ``x`` (the clean model).

    0.9999 is the quantile chipsim's compiler uses when it calibrates from data: rare outliers
    are clipped rather than spreading the 254 DAC levels over a range nobody uses.
    """
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in analog_layers(model):
        def record(mod, args, name=name):
            seen.setdefault(name, []).append(args[0].abs().flatten())

        hooks.append(m.register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name, m in analog_layers(model):
        v = torch.cat(seen[name]).double()
        # torch.quantile takes at most 2^24 elements: a fixed random subsample of 2 M is plenty
        keep = torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:2_000_000]
        q = float(torch.quantile(v[keep], quantile))
        q = q if q > 0 else 1.0
        m.input_range.data.fill_(q)
        out[name] = q
    return out


def clip_weights(model: nn.Module, n_sigma: float) -> None:
    """Clip each output channel's weights to ±n_sigma·std of that channel (in place).

    The chip maps each column's max|w| to g_max; a single outlier squeezes every other weight
    of the column towards the noise floor (σ_prog ≈ 1 % of g_max even at 0 µS). Clipping at a
    few σ (aihwkit's ``WeightClipType.LAYER_GAUSSIAN``, per channel here) keeps the useful
    weights large relative to that floor.
    """
    with torch.no_grad():
        for _, m in analog_layers(model):
            w = m.weight.reshape(m.weight.shape[0], -1)
            bound = n_sigma * w.std(dim=1, keepdim=True)
            w.copy_(torch.maximum(torch.minimum(w, bound), -bound))


def range_decay_loss(model: nn.Module, decay: float) -> torch.Tensor:
    """``decay·Σ r`` over learnable input ranges: pulls each range down (finer DAC steps and a
    larger signal relative to the fixed output noise) against the clean path's clipping
    gradient, which pulls it up where clipping hurts (aihwkit's ``input_range.decay``)."""
    terms = [m.input_range for _, m in analog_layers(model) if m.learn_range]
    if not terms or decay <= 0:
        return torch.zeros(())
    return decay * torch.stack(terms).sum()


def set_learn_ranges(model: nn.Module, learn: bool, skip_first: bool = True) -> None:
    """Make input ranges learnable. The first layer's range stays fixed: its input is the
    preprocessed image, bounded in [0, 1] by construction, so r = 1 loses nothing."""
    for i, (_, m) in enumerate(analog_layers(model)):
        on = learn and not (skip_first and i == 0)
        m.learn_range = on
        m.input_range.requires_grad_(on)
