"""Gradient diagnostics of a perturbed forward pass (DESIGN §8): small, pure metric functions.

The study in :mod:`studies.diagnose` asks, per perturbation class of the chip, whether
hardware-aware training (HWA) can absorb it. Three properties of the gradient decide that,
each a function here, on torch tensors, with no model or chip inside:

* **Gradient expectation consistency** — :func:`consistency`: cosine between the mean of K
  perturbed gradients (one per noise draw) and the clean gradient. 1 = on average the
  perturbed forward points training the same way as the clean model.
* **Bounded gradient variance** — :func:`relative_variance`: total variance of the K draws
  (unbiased, summed over parameters) divided by the squared norm of their mean. Below 1 the
  mean dominates a single draw (a single draw's expected cosine to the mean is ≳ 1/√2).
* **Non-degenerate sensitivity** — :func:`weight_sensitivity`: the fraction of weights with an
  informative clean gradient that still receive an informative gradient through the hardware
  in one chip instance (averaged over draws); :func:`pass_fraction` of the ADC's expected
  derivative (``models.torch_chip.adc_expected_derivative``): the fraction of analog output
  units through which the ADC lets gradient pass at all.

Plus the two decision rules of the study (:func:`diagnostic_verdict`, :func:`gap_recovered`),
so the thresholds are written once and tested.

Finite-K bias, documented once: with K draws the mean's squared norm carries an extra
``tr(Σ)/K``, so for zero-mean noise of relative variance ``v`` the expected cosine is about
``1/sqrt(1 + v/K)`` (≥ 0.97 for v ≤ 1, K = 16) and the relative variance is biased low by the
same factor ``1/(1 + v/K)``. Both are reported as measured, not corrected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: A weight's gradient is informative if |g| > TAU_W · RMS of its layer's gradient (the clean one for
#: the clean gradient, the draw's own for a perturbed one): 1 % of the typical magnitude is far
#: below any useful update and far above the exact zeros a stuck device or a dead ADC zone produces.
TAU_W = 0.01
#: An analog output unit passes gradient if the ADC's expected local derivative is ≥ this: at
#: least a tenth of the unit gain of the clean path (0 in dead zones and saturation).
GATE_PASS = 0.1


def flatten(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float64 vector from a list of gradient tensors (in order)."""
    return torch.cat([g.detach().reshape(-1).to(torch.float64) for g in grads])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors; 0 if either is exactly zero (no direction)."""
    a, b = a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b) / (na * nb)


def consistency(draws: torch.Tensor, clean: torch.Tensor) -> float:
    """Gradient expectation consistency: ``cos(mean_k g_k, g_clean)``; ``draws`` is (K, P)."""
    return cosine(draws.to(torch.float64).mean(0), clean)


def relative_variance(draws: torch.Tensor) -> float:
    """``Σ_p Var_k(g_kp) / ||mean_k g_k||²`` (unbiased variance, K ≥ 2); ``inf`` for a zero mean
    with non-zero spread, ``nan`` (undefined) when every draw is exactly zero."""
    d = draws.to(torch.float64)
    if d.shape[0] < 2:
        raise ValueError("relative_variance needs at least 2 draws")
    var = float(d.var(dim=0, unbiased=True).sum())
    mean_sq = float(d.mean(0).pow(2).sum())
    if mean_sq == 0.0:
        return math.nan if var == 0.0 else math.inf
    return var / mean_sq


def informative(grad: torch.Tensor, scale: float, tau: float = TAU_W) -> torch.Tensor:
    """Boolean mask of entries with ``|grad| > tau·scale``."""
    return grad.abs() > tau * scale


def rms(x: torch.Tensor) -> float:
    return float(x.to(torch.float64).pow(2).mean().sqrt())


def weight_sensitivity(
    draws: Sequence[Sequence[torch.Tensor]], clean: Sequence[torch.Tensor], tau: float = TAU_W
) -> tuple[float, list[float]]:
    """Fraction of informative weights (pooled over layers) and per-layer fractions.

    ``clean`` is one gradient tensor per layer, ``draws`` K lists of the same shapes (gradients
    *through* the perturbation model, one chip instance each). A weight counts if its clean
    gradient is informative (``|g| > tau·RMS_layer(clean)``); it is sensitive in a draw if that
    draw's gradient clears ``tau·RMS_layer(draw)``: the bar moves with the draw's own scale, so a
    uniform rescaling of the gradient (drift without compensation shrinks every conductance)
    loses nothing, while weights zeroed *relative to the rest* (stuck devices, dead ADC zones)
    do. A draw whose layer gradient is exactly zero has no sensitive weight. The result is
    averaged over draws, so a weight dead on a fraction p of chips contributes 1 − p. Layers
    whose clean gradient is exactly zero are skipped (nothing to lose).
    """
    per_layer, num, den = [], 0.0, 0
    for li, gc in enumerate(clean):
        scale = rms(gc)
        base = informative(gc, scale, tau) if scale > 0 else torch.zeros_like(gc, dtype=torch.bool)
        n = int(base.sum())
        if n == 0:
            per_layer.append(float("nan"))
            continue
        hits = []
        for d in draws:
            s_d = rms(d[li])
            hits.append(float((informative(d[li], s_d, tau) & base).sum()) / n if s_d > 0 else 0.0)
        frac = sum(hits) / len(hits)
        per_layer.append(frac)
        num += frac * n
        den += n
    return (num / den if den else float("nan")), per_layer


def pass_fraction(gate: torch.Tensor, threshold: float = GATE_PASS) -> float:
    """Fraction of output units whose expected ADC derivative is ≥ ``threshold``."""
    return float((gate >= threshold).to(torch.float64).mean()) if gate.numel() else float("nan")


# --------------------------------------------------------------------------- decision rules
@dataclass(frozen=True)
class Rules:
    """Thresholds of the study's two verdicts (documented in the report)."""

    #: Diagnostics say "compensable" iff cos ≥ cos_min, relative variance ≤ relvar_max and both
    #: sensitivities ≥ sens_min, at the strength HWA is trained with.
    cos_min: float = 0.9
    relvar_max: float = 1.0
    sens_min: float = 0.5
    #: Training "closes the gap" iff HWA recovers ≥ close_frac of the accuracy the plain model
    #: loses under the perturbation; a gap below min_gap is "no gap" (nothing to close).
    close_frac: float = 0.5
    min_gap: float = 0.01


def diagnostic_verdict(
    cos: float, relvar: float, sens_w: float, sens_out: float, rules: Rules = Rules()
) -> tuple[bool, list[str]]:
    """(compensable, reasons it is not) from the three diagnostics at one strength."""
    why = []
    if not cos >= rules.cos_min:
        why.append(f"cos {cos:.2f} < {rules.cos_min:g}")
    if not relvar <= rules.relvar_max:
        why.append(f"rel. var {relvar:.2g} > {rules.relvar_max:g}")
    if not sens_w >= rules.sens_min:
        why.append(f"weight sens. {sens_w:.2f} < {rules.sens_min:g}")
    if not sens_out >= rules.sens_min:
        why.append(f"output sens. {sens_out:.2f} < {rules.sens_min:g}")
    return not why, why


def gap_recovered(acc_clean: float, acc_plain: float, acc_hwa: float, rules: Rules = Rules()) -> tuple[float, str]:
    """(fraction of the gap HWA recovers, outcome) with outcome ``closes``, ``open`` or ``no gap``.

    ``acc_clean``: the plain model without perturbation; ``acc_plain``: the plain model under the
    perturbation; ``acc_hwa``: the HWA model (trained under it) under the perturbation.
    """
    gap = acc_clean - acc_plain
    if gap < rules.min_gap:
        return float("nan"), "no gap"
    frac = (acc_hwa - acc_plain) / gap
    return frac, ("closes" if frac >= rules.close_frac else "open")
