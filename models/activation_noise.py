"""Additive Gaussian noise of one absolute σ on every analog layer's output (issue #18).

The noise model of the hardening literature (Borras, Klein & Fröning, "Walking Noise",
ECML-PKDD 2024, arXiv:2212.10430; Wang, Borras, Klein & Fröning, "On Hardening DNNs against
Noisy Computations", arXiv:2501.14531): ``y ← y + σ·ξ``, ξ ~ N(0, 1) drawn independently per
element, the same σ (in the units of the activations) at every layer. It is added to the output of each
layer the chip computes in analog (:func:`models.hwa.analog_layers`), *as exported*: a conv whose
BatchNorm is folded into it for the chip (the ``CONV_BN`` pairs of :mod:`models.fmnist_models`)
outputs what its BatchNorm outputs, so there the noise goes after the BatchNorm. That is the
product the chip's crossbar delivers, and the tensor the σ sweep perturbs on the folded model
(:mod:`studies.activation_noise`); training and evaluation noise are one model.

Noisy training (:class:`~models.train_fmnist.TrainMode` ``noisy``) attaches it with
``training_only=True``: the layers are noisy in ``train()`` mode and clean in ``eval()`` mode,
so validation reads the clean model. The σ sweep attaches it with ``training_only=False``.
The generator is explicit (no global RNG); the same generator state gives the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.hwa import analog_layers


def noise_sites(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs carry the noise, in forward order: each analog layer, or the
    BatchNorm that the export folds into it (declared in a module's ``CONV_BN``)."""
    folded = {}
    for m in model.modules():
        for conv_name, bn_name in getattr(m, "CONV_BN", ()):
            bn = getattr(m, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                folded[id(getattr(m, conv_name))] = bn
    return [folded.get(id(layer), layer) for _, layer in analog_layers(model)]


@dataclass
class ActivationNoise:
    """Forward hooks that add ``sigma``·N(0, 1) to every analog layer's output of ``model``.
    ``sigma`` may be changed while attached; 0 turns the noise off. :meth:`remove` detaches."""

    model: nn.Module
    sigma: float
    generator: torch.Generator
    training_only: bool = True
    _hooks: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"sigma: expected a standard deviation ≥ 0, got {self.sigma}")
        self._hooks = [m.register_forward_hook(self._add) for m in noise_sites(self.model)]
        if not self._hooks:
            raise ValueError("model: it has no analog layers to add activation noise to")

    def _add(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0 or (self.training_only and not module.training):
            return out
        xi = torch.randn(out.shape, generator=self.generator, dtype=out.dtype)
        return out + self.sigma * xi

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
