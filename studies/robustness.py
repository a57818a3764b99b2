"""The robustness midpoint µ (after Borras, Klein & Fröning, "Walking Noise", ECML-PKDD 2024,
arXiv:2212.10430): the noise level at which accuracy falls halfway from its maximum to chance.

Noise model here: the ``ideal`` profile plus additive Gaussian output noise of σ on every analog
MVM (``out_noise = σ``, normalised units: 1 = one full-scale input times one full-scale weight),
accuracy on a log grid of σ on the serving path, and the fit ``acc(σ) = c + (a − c)/(1 + (σ/µ)^k)``
with ``c = 1/classes`` (chance) fixed.
"""

from __future__ import annotations

import math

import numpy as np

from chipsim import get_profile
from studies.common import STUDY_NOISE, ZooModel, chip_accuracy

#: Additive output-noise grid, normalised units (log-spaced, 3 decades; 10 is the profile maximum).
SIGMAS = np.logspace(-2, 1, 16)


def robustness_study(
    model: ZooModel, sigmas: np.ndarray = SIGMAS, repeats: int = 5, threads: int = 1
) -> list[list[float]]:
    """Accuracy per σ (rows) and per-MVM noise seed (columns) on the ``ideal`` profile with
    additive output noise σ (no other non-ideality, so σ is the only thing that varies)."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    accs = []
    for sigma in sigmas:
        chip = program_onnx(model.onnx, get_profile("ideal", out_noise=float(sigma)), seed=0, chip_id="mu")
        rt = ChipRuntime(chip, threads=threads, noise=STUDY_NOISE)
        accs.append([chip_accuracy(rt, model.x, model.y, 0.0, False, seed=s) for s in range(repeats)])
    return accs


def logistic(sigma: np.ndarray, a: float, log_mu: float, k: float, chance: float) -> np.ndarray:
    """``c + (a − c)/(1 + (σ/µ)^k)``: ``a`` at σ → 0, chance ``c`` at σ → ∞, halfway at σ = µ."""
    return chance + (a - chance) / (1.0 + np.exp(k * (np.log(sigma) - log_mu)))


def fit_midpoint(sigmas: np.ndarray, acc: np.ndarray, chance: float) -> dict[str, float]:
    """Least-squares logistic fit in log σ; returns ``mu`` (the midpoint σ), ``a``, ``k``, ``rmse``.

    The start values come from the data (the σ grid point closest to halfway), so the fit does
    not depend on a lucky guess; ``a`` is bounded to [chance, 1] and ``k`` to (0, 20].
    """
    from scipy.optimize import curve_fit

    sigmas = np.asarray(sigmas, float)
    acc = np.asarray(acc, float)
    a0 = float(acc.max())
    half = chance + (a0 - chance) / 2
    mu0 = float(sigmas[np.argmin(np.abs(acc - half))])

    def f(s, a, log_mu, k):
        return logistic(s, a, log_mu, k, chance)

    popt, _ = curve_fit(
        f,
        sigmas,
        acc,
        p0=[a0, math.log(mu0), 2.0],
        bounds=([chance, math.log(sigmas[0]) - 5, 1e-3], [1.0, math.log(sigmas[-1]) + 5, 20.0]),
    )
    rmse = float(np.sqrt(np.mean((f(sigmas, *popt) - acc) ** 2)))
    return {"mu": float(math.exp(popt[1])), "a": float(popt[0]), "k": float(popt[2]), "rmse": rmse}
