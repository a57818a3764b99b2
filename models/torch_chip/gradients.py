"""What autograd sees of the chip: the :class:`GradientMode` choices and the pieces they are built
of (a value with a chosen gradient, the identity straight-through estimator, and the ADC's
derivative in expectation over the Gaussian noise in front of it). The forward value is the
chip's in every mode (:mod:`models.torch_chip`)."""

from __future__ import annotations

import math
from enum import StrEnum

import torch


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


class ValueWithGate(torch.autograd.Function):
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


def ste(exact: torch.Tensor, smooth: torch.Tensor, straight_through: bool) -> torch.Tensor:
    """``exact`` in value; with ``straight_through`` the gradient of ``smooth`` (identity STE)."""
    return smooth + (exact - smooth).detach() if straight_through else exact
