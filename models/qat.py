"""Quantisation-aware training (QAT) at the chip's DAC/ADC resolution (issue #18).

Every analog layer (:func:`models.hwa.analog_layers`) gets three fake quantisers with
straight-through gradients (Bengio, Léonard & Courville 2013, arXiv:1308.3432; the clipped form
of Jacob et al., CVPR 2018): its input (the DAC), its weight and its output (the ADC). A
quantiser with scale ``s`` clips to ±s and rounds to the grid of :func:`chipsim.periphery.quantize`
(step ``2·s/levels``), i.e. the chip's own rounding. The level counts come from one chipsim
profile (:meth:`QatConfig.from_profile`: ``in_levels`` for inputs and weights, ``out_levels`` for
outputs), so the chip stays the single source of its resolution. The chip has no weight
quantiser (PCM conductances are analog); the seed quantises weights too, and we give them the
DAC's resolution.

Two ways to choose ``s`` (:class:`QatScaling`):

``constant``  one scale per tensor and layer, calibrated once (:func:`calibrate`: max|W| for the
              weight, the 0.9999 quantile of |x| and |y| over calibration images, as
              :func:`models.hwa.calibrate_input_ranges` does for the DAC) and then frozen: a buffer
              that no batch and no optimiser step changes (the seed's "constant scaling factors").
``dynamic``   the scale is recomputed at every forward from the tensor itself (max|·| of the
              batch's input and output, of the current weight): per-batch scaling.

The quantisers sit on the layer as torch trains it, i.e. before its BatchNorm, as QAT libraries
quantise a conv (the seed's setting); the chip quantises the exported layer with the BatchNorm
folded in, whose per-channel factor changes the scale but not the number of levels.

The weight quantiser is a :mod:`torch.nn.utils.parametrize` parametrisation, so the clean
forward and the HWA noisy forward (:meth:`models.hwa.AnalogLayer.chip_weight`) both see the
quantised weight: QAT composes with HWA noise injection. :func:`remove` bakes the quantised
weights in and leaves a plain model (standard state-dict keys) for saving and export.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from chipsim.periphery import quantize
from chipsim.profiles import get_profile
from models.hwa import analog_layers, run_with_hooks

#: Quantile of |activation| a constant scale is calibrated to (chipsim's compiler and
#: :func:`models.hwa.calibrate_input_ranges` use the same: rare outliers clip rather than
#: spreading the levels over a range nobody uses).
CALIBRATION_QUANTILE = 0.9999
#: Values per tensor the quantile is taken over (a random sample; the 0.9999 quantile of 2 M
#: values has 200 above it, a relative error of ~7 % in its rank).
CALIBRATION_SAMPLES = 2_000_000


class QatScaling(StrEnum):
    CONSTANT = "constant"  # calibrated once, then frozen
    DYNAMIC = "dynamic"  # recomputed from every batch


@dataclass(frozen=True)
class QatConfig:
    """Level counts (steps over [−s, s]; 0 = that tensor is not quantised) and the scaling."""

    scaling: QatScaling = QatScaling.CONSTANT
    in_levels: int = 254
    weight_levels: int = 254
    out_levels: int = 254

    def __post_init__(self) -> None:
        object.__setattr__(self, "scaling", QatScaling(self.scaling))
        for name in ("in_levels", "weight_levels", "out_levels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a number of steps ≥ 0, got {getattr(self, name)}")

    @classmethod
    def from_profile(cls, scaling: QatScaling | str, profile: str = "pcm") -> QatConfig:
        """The resolution of chipsim profile ``profile``: DAC steps for inputs and weights,
        ADC steps for outputs."""
        p = get_profile(profile)
        return cls(QatScaling(scaling), p.in_levels, p.in_levels, p.out_levels)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    """``x`` clipped to ±scale and rounded to ``levels`` steps over [−scale, scale]; the gradient
    passes straight through the rounding and is zero where the clip bites."""
    if levels <= 0:
        return x
    s = scale.detach()
    xc = torch.minimum(torch.maximum(x, -s), s)
    return xc + (quantize(xc, levels, s) - xc).detach()


def _abs_max(x: torch.Tensor) -> torch.Tensor:
    m = x.detach().abs().max()
    return torch.where(m > 0, m, torch.ones_like(m))


class LayerQuantizer(nn.Module):
    """The three quantisers of one analog layer. Scales are buffers (saved in checkpoints, never
    trained); ``enabled`` switches the layer's quantisers off and on (a buffer, so a resumed run
    knows whether its QAT phase had begun)."""

    def __init__(self, config: QatConfig):
        super().__init__()
        self.config = config
        for name in ("in_scale", "weight_scale", "out_scale"):
            self.register_buffer(name, torch.tensor(1.0))
        self.register_buffer("enabled", torch.tensor(True))
        self.register_buffer("calibrated", torch.tensor(False))

    @property
    def active(self) -> bool:
        return bool(self.enabled)

    def _scale(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.config.scaling is QatScaling.DYNAMIC:
            s = _abs_max(x)
            getattr(self, name).copy_(s)  # the last scale used, for inspection only
            return s
        if not bool(self.calibrated):
            raise RuntimeError("constant-scale QAT: call models.qat.calibrate before the first forward")
        return getattr(self, name)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self._scale("in_scale", x), self.config.in_levels) if self.active else x

    def quant_weight(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant(w, self._scale("weight_scale", w), self.config.weight_levels) if self.active else w

    def quant_output(self, y: torch.Tensor) -> torch.Tensor:
        return fake_quant(y, self._scale("out_scale", y), self.config.out_levels) if self.active else y


class _WeightQuant(nn.Module):
    """The parametrisation ``W ↦ q(W)`` (holds the quantiser without registering it twice)."""

    def __init__(self, quantizer: LayerQuantizer):
        super().__init__()
        object.__setattr__(self, "q", quantizer)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.q.quant_weight(w)


def _pre_hook(module: nn.Module, args: tuple) -> tuple:
    return (module.qat.quant_input(args[0]), *args[1:])


def _post_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return module.qat.quant_output(out)


def attach(model: nn.Module, config: QatConfig, enabled: bool = True) -> list[LayerQuantizer]:
    """Put quantisers on every analog layer of ``model`` (in place) and return them in module
    order. Each becomes the layer's submodule ``qat`` (its buffers join the state dict); the
    weight becomes a parametrisation. Constant scaling needs :func:`calibrate` before use."""
    quantizers = []
    for _, m in analog_layers(model):
        if hasattr(m, "qat"):
            raise ValueError("QAT is already attached to this model")
        q = LayerQuantizer(config)
        q.enabled.fill_(enabled)
        m.qat = q
        parametrize.register_parametrization(
            m, "weight", _WeightQuant(q), unsafe=True
        )  # no trial call: not calibrated yet
        m._qat_hooks = (m.register_forward_pre_hook(_pre_hook), m.register_forward_hook(_post_hook))
        quantizers.append(q)
    return quantizers


def quantizers(model: nn.Module) -> list[LayerQuantizer]:
    """The quantisers :func:`attach` put on ``model``, in module order (empty: none)."""
    return [m.qat for _, m in analog_layers(model) if isinstance(getattr(m, "qat", None), LayerQuantizer)]


def set_enabled(model: nn.Module, enabled: bool) -> None:
    for q in quantizers(model):
        q.enabled.fill_(enabled)


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, batch: int = 256, quantile: float = CALIBRATION_QUANTILE) -> None:
    """Fix every constant scale from the current model (eval mode, quantisers off while
    measuring): weight → max|W|, input and output → the ``quantile`` of |·| over ``x``. Called
    once; afterwards the scales are constants."""
    qs = quantizers(model)
    if not qs:
        raise ValueError("calibrate: no QAT quantisers on this model (models.qat.attach first)")
    seen: dict[int, tuple[list, list]] = {id(q): ([], []) for q in qs}
    layers = [m for _, m in analog_layers(model) if getattr(m, "qat", None) is not None]

    # a fixed random sample of each batch's values (with replacement), 2 M per tensor in all:
    # holding every activation of 1024 images would take gigabytes
    per_batch = CALIBRATION_SAMPLES // max(1, -(-len(x) // batch))
    gen = torch.Generator().manual_seed(0)

    def sample(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().abs().flatten()
        return v if len(v) <= per_batch else v[torch.randint(0, len(v), (per_batch,), generator=gen)]

    def record(mod: nn.Module, args: tuple, y: torch.Tensor) -> None:
        ins, outs = seen[id(mod.qat)]
        ins.append(sample(args[0]))
        outs.append(sample(y))

    hooks = [m.register_forward_hook(record) for m in layers]
    flags = [bool(q.enabled) for q in qs]
    set_enabled(model, False)
    run_with_hooks(model, x, batch, hooks)
    for m, q, flag in zip(layers, qs, flags, strict=True):
        ins, outs = seen[id(q)]
        q.in_scale.fill_(_quantile(torch.cat(ins), quantile))
        q.out_scale.fill_(_quantile(torch.cat(outs), quantile))
        q.weight_scale.fill_(float(_abs_max(m.parametrizations.weight.original)))
        q.calibrated.fill_(True)
        q.enabled.fill_(flag)


def _quantile(v: torch.Tensor, q: float) -> float:
    out = float(np.quantile(v.double().numpy(), q))  # numpy partitions (linear time); torch sorts
    return out if out > 0 else 1.0


def remove(model: nn.Module, bake: bool = True) -> None:
    """Take the quantisers off ``model`` (in place). ``bake``: the weights keep their quantised
    values (what QAT trained); otherwise the float weights return."""
    for _, m in analog_layers(model):
        q = getattr(m, "qat", None)
        if not isinstance(q, LayerQuantizer):
            continue
        with torch.no_grad():
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=bake and q.active)
        for h in m._qat_hooks:
            h.remove()
        del m._qat_hooks
        del m.qat
