"""The diagnostics of one setting of the study in :mod:`studies.diagnose`: the chip of one
perturbation class at one strength (an HWA context whose every batch is a fresh chip instance),
the STE and through gradients of K instances of it and their diagnostics (DESIGN §8,
:mod:`studies.gradient_diagnostics`), and a model's accuracy under it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.hwa import ChipSchedule, HwaConfig, HwaContext, analog_layers, attach
from models.torch_chip import GradientMode
from models.train import emulated_accuracy
from studies import gradient_diagnostics
from studies.perturbations import PerturbationClass


# --------------------------------------------------------------------------- the chip of a class
def class_schedule(pc: PerturbationClass, strength: float) -> ChipSchedule:
    """The chip ``pc`` at ``strength``, read at the class's age. The trainer's noise ramp
    ρ ∈ [0, 1] becomes strength ρ·s for ramped classes (quantisation is not ramped)."""
    return ChipSchedule(profile_at=lambda ramp: pc.profile(strength * ramp if pc.ramp else strength), age_s=pc.age_s)


def make_context(pc: PerturbationClass, strength: float, seed: int) -> HwaContext:
    """An HWA context whose every batch is a fresh chip instance of ``pc`` at ``strength``."""
    return HwaContext(
        HwaConfig(profile="ideal", gdc=False, mode=GradientMode.STE),
        torch.Generator().manual_seed(seed),
        schedule=class_schedule(pc, strength),
    )


# --------------------------------------------------------------------------- diagnostics of one setting
def analog_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for _, m in analog_layers(model)]


def clean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    attach(model, None)
    model.eval()
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, analog_weights(model))]


@dataclass
class Diagnostics:
    """The diagnostics of one class at one strength (K draws)."""

    cos_ste: float
    relvar_ste: float
    cos_through: float
    relvar_through: float
    sens_weights: float
    sens_outputs: float
    sens_weights_layers: list[float]
    sens_outputs_layers: list[float]
    #: max |logits(STE forward) − logits(through forward)| over draws: both must be the same chip.
    forward_mismatch: float


def _gradient(
    model: nn.Module, ctx: HwaContext, mode: GradientMode, x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, gradient w.r.t. ``weights``) of the cross-entropy through the chip of ``ctx``."""
    ctx.config = replace(ctx.config, mode=mode)
    logits = model(x)
    return logits.detach(), [g.detach() for g in torch.autograd.grad(F.cross_entropy(logits, y), weights)]


def diagnose_setting(
    model: nn.Module,
    pc: PerturbationClass,
    strength: float,
    x: torch.Tensor,
    y: torch.Tensor,
    g_clean: list[torch.Tensor],
    draws: int,
    seed: int,
    tau: float = gradient_diagnostics.TAU_W,
    gate_pass: float = gradient_diagnostics.GATE_PASS,
    bar=None,
) -> Diagnostics:
    """K chip instances of ``pc`` at ``strength``: per instance the STE gradient (the trainer's
    forward) and the through gradient of the same instance (the generators are rewound)."""
    ctx = make_context(pc, strength, seed)
    weights = analog_weights(model)
    names = {m: n for n, m in analog_layers(model)}
    ste, through, mismatch = [], [], 0.0
    out_pass: dict[str, list[float]] = {}
    model.train()  # analog layers run their noisy path in training mode (no dropout/BN in the zoo)
    attach(model, ctx)
    try:
        for _ in range(draws):
            ctx.new_batch(1.0)
            state, np_state = ctx.generator.get_state(), copy.deepcopy(ctx.np_rng)
            logits, g = _gradient(model, ctx, GradientMode.STE, x, y, weights)
            ste.append(g)
            ctx.generator.set_state(state)
            ctx.np_rng = np_state
            ctx.adc_gates = {}
            logits_t, g = _gradient(model, ctx, GradientMode.THROUGH_CHIP, x, y, weights)
            through.append(g)
            mismatch = max(mismatch, float((logits - logits_t).abs().max()))
            for layer, gs in ctx.adc_gates.items():
                if gs:
                    out_pass.setdefault(names[layer], []).append(
                        float(
                            sum(gradient_diagnostics.pass_fraction(g, gate_pass) * g.numel() for g in gs)
                            / sum(g.numel() for g in gs)
                        )
                    )
            ctx.adc_gates = None
            if bar is not None:
                bar.update(1)
    finally:
        attach(model, None)
        model.eval()
    ste_flat = torch.stack([gradient_diagnostics.flatten(g) for g in ste])
    thr_flat = torch.stack([gradient_diagnostics.flatten(g) for g in through])
    clean_flat = gradient_diagnostics.flatten(g_clean)
    sens_w, sens_w_layers = gradient_diagnostics.weight_sensitivity(through, g_clean, tau)
    out_layers = [float(np.mean(out_pass[n])) if n in out_pass else 1.0 for n in names.values()]
    return Diagnostics(
        cos_ste=gradient_diagnostics.consistency(ste_flat, clean_flat),
        relvar_ste=gradient_diagnostics.relative_variance(ste_flat),
        cos_through=gradient_diagnostics.consistency(thr_flat, clean_flat),
        relvar_through=gradient_diagnostics.relative_variance(thr_flat),
        sens_weights=sens_w,
        sens_outputs=float(np.mean(out_layers)),
        sens_weights_layers=sens_w_layers,
        sens_outputs_layers=out_layers,
        forward_mismatch=mismatch,
    )


def minibatch_relative_variance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> float:
    """Reference scale for the relative variance: the clean gradient's relative variance across
    disjoint minibatches of the training batch size (the noise plain SGD already lives with)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    grads = [
        gradient_diagnostics.flatten(clean_gradient(model, x[perm[i : i + batch]], y[perm[i : i + batch]]))
        for i in range(0, len(x) - batch + 1, batch)
    ]
    return gradient_diagnostics.relative_variance(torch.stack(grads))


def accuracy_under(
    model: nn.Module, pc: PerturbationClass, strength: float, x: torch.Tensor, y: torch.Tensor, n_chips: int, seed: int
) -> tuple[float, float]:
    """(mean, std) accuracy over ``n_chips`` chip instances of ``pc`` at ``strength``, in the HWA
    torch emulation (the trainer's own noisy forward). The same seed gives the same draws for
    every model of the same architecture (paired comparisons)."""
    return emulated_accuracy(model, x, y, make_context(pc, strength, seed), n_chips)
