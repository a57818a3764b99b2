"""Hardware-aware training (HWA): the noisy forward's configuration, its per-batch chip, and the
analog layers.

DESIGN §7. During HWA training every analog layer runs its forward through a fresh chip
instance per batch (:mod:`models.torch_chip`: chipsim's device and periphery formulas on torch
tensors), read at an age drawn per batch. :class:`HwaConfig` says which chip (a chipsim preset
with training scales) and which gradient (:class:`~models.torch_chip.GradientMode`; the extended
straight-through estimator by default, Rasch et al., Nat. Commun. 14:5282 (2023));
:class:`HwaContext` holds the chip of the current batch; a :class:`ChipSchedule` replaces the
preset by any profile (studies). Without a context an analog layer is exactly its torch base class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chipsim.ages import YEAR_S
from chipsim.modes import GdcMode
from chipsim.profiles import ChipProfile, get_profile
from models.torch_chip import AgedWeights, GradientMode, MvmDraws, age_weights, analog_conv2d, analog_matmul


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
    #: The gradient of the noisy forward (a name is accepted: ``"ste"``, ``"through"``, …).
    mode: GradientMode = GradientMode.STE

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", GradientMode(self.mode))

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
    return base.model_copy(
        update=dict(
            prog_noise_scale=base.prog_noise_scale * k,
            read_noise_scale=base.read_noise_scale * k,
            w_noise=base.w_noise * k,
            out_noise=base.out_noise * k,
            drift_scale=base.drift_scale * strength,
            p_stuck_reset=min(1.0, base.p_stuck_reset * f),
            p_stuck_set=min(1.0, base.p_stuck_set * f),
            gdc=GdcMode.resolve(config.gdc, base.gdc),
        )
    )


def sample_age(generator: torch.Generator, age_min_s: float, age_max_s: float) -> float:
    """One age (s), log-uniform in [age_min_s, age_max_s]: every decade is equally likely,
    which matches evaluating at 1 s, 1 h, 1 d, … 10 y."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return math.exp(math.log(age_min_s) + u * (math.log(age_max_s) - math.log(age_min_s)))


# --------------------------------------------------------------------------- context & layers
@dataclass(frozen=True)
class ChipSchedule:
    """Which chip each batch runs on, instead of ``HwaConfig``'s preset and age range.

    ``profile_at(ρ)`` is the chip profile at noise-ramp strength ρ ∈ [0, 1]; ``age_s`` a fixed
    age in seconds (None: log-uniform per batch from the config). The studies use it to train and
    evaluate under one perturbation class at a time.
    """

    profile_at: Callable[[float], ChipProfile]
    age_s: float | None = None


@dataclass
class HwaContext:
    """Shared by all analog layers of a model during HWA training: the config, the generator
    (explicit; no global RNG), and the chip drawn for the current batch (age, ramp strength).

    ``schedule`` (optional) picks the chip per batch instead of the config's preset. When
    ``adc_gates`` is a dict, layers running ``GradientMode.THROUGH_CHIP`` append each tile's
    expected ADC derivative to ``adc_gates[layer]`` (diagnostics of what the ADC lets through).
    """

    config: HwaConfig
    generator: torch.Generator
    age_s: float = 0.0
    strength: float = 1.0
    profile: ChipProfile = field(default=None)  # type: ignore[assignment]
    np_rng: np.random.Generator = field(default=None)  # type: ignore[assignment]
    schedule: ChipSchedule | None = None
    adc_gates: dict[AnalogLayer, list[torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        self.new_batch(self.strength, self.age_s)

    def new_batch(self, strength: float, age_s: float | None = None) -> None:
        """Start a batch: a new chip instance at ramp ``strength``, at ``age_s`` if given, else
        the schedule's fixed age, else a log-uniform age from the config."""
        self.strength = float(strength)
        if age_s is None and self.schedule is not None:
            age_s = self.schedule.age_s
        self.age_s = (
            sample_age(self.generator, self.config.age_min_s, self.config.age_max_s) if age_s is None else age_s
        )
        if self.schedule is not None:
            self.profile = self.schedule.profile_at(self.strength)
        else:
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

    def _n_mvms(self, x: torch.Tensor) -> int:
        """How many analog MVMs the layer runs for input ``x`` (rows of ``_to_rows(x)``)."""
        raise NotImplementedError

    def _through_chip(
        self,
        x: torch.Tensor,
        aged: AgedWeights,
        r: torch.Tensor,
        ctx: HwaContext,
        draws: MvmDraws,
        gradient: GradientMode,
        gates: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """The layer's output for ``x`` through the aged tile (what ``_from_rows(analog_matmul(
        _to_rows(x)))`` computes, with the bias)."""
        return self._from_rows(analog_matmul(self._to_rows(x), aged, r, ctx.profile, draws, None, gradient, gates), x)

    def _noisy(self, x: torch.Tensor, ctx: HwaContext, gradient: GradientMode) -> torch.Tensor:
        """The layer through the chip of ``ctx``: device draws, then MVM draws from ``ctx.generator``."""
        w = self.chip_weight()
        aged = age_weights(w, ctx.profile, ctx.age_s, ctx.generator, ctx.np_rng, gradient=gradient)
        draws = MvmDraws.draw(self._n_mvms(x), w.shape[1], len(aged.tiles), ctx.generator, x.dtype)
        r = self.input_range if gradient == GradientMode.THROUGH_NOISE else self.input_range.detach()
        gates = ctx.adc_gates.setdefault(self, []) if ctx.adc_gates is not None else None
        return self._through_chip(x, aged, r, ctx, draws, gradient, gates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx: HwaContext | None = self.hwa  # type: ignore[attr-defined]
        if ctx is None or not self.training:
            return self._clean(x)
        if ctx.config.mode != GradientMode.STE:
            return self._noisy(x, ctx, ctx.config.mode)
        clean = self._clean(self._clip_input(x))
        with torch.no_grad():
            noisy = self._noisy(x.detach(), ctx, GradientMode.STE)
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

    def _n_mvms(self, x: torch.Tensor) -> int:
        return x.numel() // self.in_features

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
        h, w = self._out_hw(x)
        return (
            y.reshape(x.shape[0], h * w, self.out_channels).transpose(1, 2).reshape(x.shape[0], self.out_channels, h, w)
        )

    def _out_hw(self, x: torch.Tensor) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (x.shape[d] + 2 * self.padding[i] - self.dilation[i] * (self.kernel_size[i] - 1) - 1) // self.stride[i] + 1
            for i, d in ((0, 2), (1, 3))
        )

    def _n_mvms(self, x: torch.Tensor) -> int:
        h, w = self._out_hw(x)
        return x.shape[0] * h * w

    def _through_chip(
        self,
        x: torch.Tensor,
        aged: AgedWeights,
        r: torch.Tensor,
        ctx: HwaContext,
        draws: MvmDraws,
        gradient: GradientMode,
        gates: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        # The unfolded product computed as convolutions (models.torch_chip.analog_conv2d): same
        # chip, same draws, ~k_h·k_w× less periphery work than unfolding (DAC, IR drop, noise).
        if not isinstance(self.padding, tuple):
            raise ValueError(f"padding: the chip maps explicit zero padding, not {self.padding!r}")
        return analog_conv2d(
            x,
            aged,
            r,
            ctx.profile,
            draws,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.bias,
            gradient,
            gates,
        )

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


def run_with_hooks(model: nn.Module, x: torch.Tensor, batch: int, hooks: list) -> None:
    """Run ``model`` in eval mode on ``x``, ``batch`` rows at a time, for what its forward ``hooks``
    record; then remove the hooks and give the model back its training flag (calibration)."""
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


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
    run_with_hooks(model, x, batch, hooks)
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
