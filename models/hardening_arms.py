"""The training arms of the hardening study (issue #18) that :mod:`models.train_fmnist` runs
from scratch next to ``plain``: QAT with constant or dynamic scaling, noisy training, and noisy
training followed by QAT. All use the architecture's plain recipe (same epochs, optimiser,
learning-rate schedule, augmentation); only what the forward pass does differs:

==================  =======================================================================
arm                 forward pass during training
==================  =======================================================================
``qat-constant``    floating point for the first ``qat_delay_fraction`` of the steps, then
                    :mod:`models.qat` with constant scales calibrated at that step and frozen
``qat-dynamic``     the same delay, then :mod:`models.qat` with scales recomputed from every batch
``noisy``           :mod:`models.activation_noise` at ``train_sigma`` on every analog layer
``noisy-then-qat``  the first ``noisy_fraction`` of the steps noisy, the rest constant-scale
                    QAT (calibrated on the noisy-trained model at the switch, noise off)
==================  =======================================================================

At the end the noise hooks come off and the QAT weights are baked in (:func:`models.qat.remove`),
so every arm saves and exports the same plain model structure.

**Training σ.** The seed's training noise level is not recorded in this repository (not in
docs/, DESIGN.md or issue #18), so :data:`NOISY_SIGMA` is our choice, not the seed's: 0.1 in
activation units. At He initialisation with BatchNorm'd inputs a conv's output has unit
standard deviation (``Var = fan_in·(2/fan_out)·E[x²] ≈ c_in/c_out``), so 0.1 is a 10 % (20 dB)
per-layer perturbation. Pass ``--train-sigma`` to change it; choose it on the validation split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models import qat as Q
from models.activation_noise import ActivationNoise

#: Noisy training's σ (activation units); see the module docstring for why 0.1.
NOISY_SIGMA = 0.1


@dataclass(frozen=True)
class HardeningConfig:
    """What the hardening arms add to a recipe (recorded in ``model.pt`` and the ONNX metadata)."""

    #: Absolute σ of the activation noise during noisy training (activation units).
    train_sigma: float = NOISY_SIGMA
    #: ``noisy-then-qat``: fraction of the optimiser steps trained with noise before QAT starts.
    noisy_fraction: float = 0.5
    #: ``qat-*``: fraction of the optimiser steps trained in floating point before QAT starts (a
    #: constant scale is calibrated at that step). Our choice, not tuned: see the module docstring.
    qat_delay_fraction: float = 0.25
    #: chipsim profile whose DAC/ADC level counts the quantisers use.
    qat_profile: str = "pcm"

    def __post_init__(self) -> None:
        if self.train_sigma < 0:
            raise ValueError(f"train_sigma: expected σ ≥ 0, got {self.train_sigma}")
        if not 0 < self.noisy_fraction < 1:
            raise ValueError(f"noisy_fraction: expected a fraction in (0, 1), got {self.noisy_fraction}")
        if not 0 <= self.qat_delay_fraction < 1:
            raise ValueError(f"qat_delay_fraction: expected a fraction in [0, 1), got {self.qat_delay_fraction}")

    def to_json(self) -> dict:
        return asdict(self)


class Arm:
    """The training-time extras of one arm on ``model``: attached by the constructor, updated by
    :meth:`before_step`, taken off by :meth:`finish`.

    ``qat``: the QAT scaling (None: no QAT); ``noisy``: activation noise; both set and ``qat``
    given means the noisy phase comes first. ``x_cal``: the calibration images of constant
    scales. The noise of step ``k`` is drawn from a generator seeded by (``seed``, ``k``), so a
    resumed run draws the noise the uninterrupted run would have.
    """

    def __init__(
        self,
        model: nn.Module,
        config: HardeningConfig,
        qat: Q.QatScaling | None,
        noisy: bool,
        x_cal: torch.Tensor,
        seed: int,
    ):
        self.model, self.config, self.x_cal, self.seed = model, config, x_cal, seed
        self.sequential = noisy and qat is not None
        self.delayed = qat is not None and (self.sequential or config.qat_delay_fraction > 0)
        self.noise = (
            ActivationNoise(model, config.train_sigma, torch.Generator(), training_only=True) if noisy else None
        )
        self.quantizers = []
        if qat is not None:
            # a delayed QAT phase: quantisers present from the start (their state is in every
            # checkpoint) but off until the switch
            self.quantizers = Q.attach(model, Q.QatConfig.from_profile(qat, config.qat_profile), not self.delayed)

    def switch_step(self, total: int) -> int:
        """The first step of the QAT phase (``total`` steps in all): after the noisy phase of
        ``noisy-then-qat``, after the floating-point delay of the QAT arms, 0 otherwise."""
        if self.sequential:
            return round(self.config.noisy_fraction * total)
        return round(self.config.qat_delay_fraction * total) if self.quantizers else 0

    def before_step(self, step: int, total: int) -> None:
        """Set the model up for optimiser step ``step`` (from 0) of ``total``."""
        qat_phase = step >= self.switch_step(total)
        if self.noise is not None:
            self.noise.sigma = 0.0 if (self.sequential and qat_phase) else self.config.train_sigma
            self.noise.generator.manual_seed(self.seed * 1_000_003 + step)
        if self.quantizers and qat_phase and not bool(self.quantizers[0].enabled):
            Q.set_enabled(self.model, True)
        q0 = self.quantizers[0] if self.quantizers else None
        if q0 is not None and qat_phase and q0.config.scaling is Q.QatScaling.CONSTANT and not bool(q0.calibrated):
            Q.calibrate(self.model, self.x_cal)  # once: afterwards the scales are constants

    def finish(self) -> None:
        """Noise off, QAT weights baked in: a plain model of the architecture remains."""
        if self.noise is not None:
            self.noise.remove()
        if self.quantizers:
            Q.remove(self.model, bake=True)
