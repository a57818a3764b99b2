"""Torch side of :mod:`studies.noise_midpoint`: a ``model_fn`` that adds Gaussian noise of one
absolute σ to the output of every weight layer (``nn.Conv2d``, ``nn.Linear``, and so every
:class:`models.hwa.AnalogLayer`) of a torch model, and the clip-only control.

Which tensor is "a layer's output": the output of the weight layer itself, i.e. the product an
analog crossbar would deliver. For a network with BatchNorm, pass the folded copy
(:func:`models.fmnist_models.export_copy`) so that the noise sits where the chip's MVM output is
(after the folded per-channel scale), not before a BatchNorm that would rescale it. Attention's
activation-activation products (``q·kᵀ``) have no weights and carry no noise.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from studies.noise_midpoint import ModelFn

#: Layers whose outputs carry the noise.
NOISY_LAYERS = (nn.Conv2d, nn.Linear)


def noisy_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose outputs get noise, in registration order."""
    return [m for m in model.modules() if isinstance(m, NOISY_LAYERS)]


def noisy_logits(model: nn.Module, x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Logits of ``model`` (eval mode, no grad) with N(0, σ²) added to every weight layer's output,
    drawn from ``generator`` in call order (reproducible for a given batch order)."""
    layers = noisy_layers(model)
    if not layers:
        raise ValueError("model: no nn.Conv2d or nn.Linear layer to put noise on")

    def add_noise(_mod, _inp, out):
        return out + sigma * torch.randn(out.shape, generator=generator, dtype=out.dtype)

    handles = [m.register_forward_hook(add_noise) for m in layers]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def torch_model_fn(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> ModelFn:
    """``model_fn(σ, seed)`` → per-image correctness (bool (N,)) of ``model`` on ``x`` (float32)
    and labels ``y``, the noise drawn from ``torch.Generator().manual_seed(seed)`` batch by batch."""
    xt = torch.as_tensor(np.asarray(x, np.float32))
    yt = torch.as_tensor(np.asarray(y, np.int64))

    def model_fn(sigma: float, seed: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(int(seed))
        hits = [
            (noisy_logits(model, xt[i : i + batch], sigma, gen).argmax(1) == yt[i : i + batch]).numpy()
            for i in range(0, len(xt), batch)
        ]
        return np.concatenate(hits)

    return model_fn


def clipped_copy(model: nn.Module, n_sigma: float) -> nn.Module:
    """The clip-only control: a copy of ``model`` with every analog layer's weights clipped per
    output channel at ``n_sigma`` standard deviations (HWA's clipping, :func:`models.hwa.clip_weights`),
    no training. µ(clipped) − µ(plain) is the share of HWA's µ owed to clipping alone."""
    from models import hwa as H

    out = copy.deepcopy(model)
    H.clip_weights(out, n_sigma)
    return out.eval()
