"""The mean conductance decay of a layer at an age: predicted from the device constants, and
measured on a chip's read-out (issue #12's no-GDC analysis, ``studies.gdc_off_analysis``).

Drift (DESIGN §3.2; Joshi et al., Nat. Commun. 11:2473 (2020), Methods): a device programmed to
``G`` reads ``G·((t + t0)/t0)^−ν`` at age ``t``, with ``ν = |μ_ν(G) + σ_ν(G)·ξ|·drift_scale``,
ξ standard normal (``chipsim.programming.sample_nu``). A weight ``w`` (normalised, in [−1, 1])
is one device at ``|w|·g_max`` and one at 0, so a layer's outputs shrink by the |w|-weighted mean
of the devices' factors — what the GDC reference ``mean|w(t)|/mean|w_target|`` measures.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from chipsim.devices.base import DeviceModel


def log_age_ratio(device: DeviceModel, age_s: float) -> float:
    """``L = ln((t + t0)/t0)``, the log time ratio of the drift power law (t, t0 in s)."""
    return math.log((age_s + device.t0_s) / device.t0_s)


def expected_decay(mu: np.ndarray, sigma: np.ndarray, log_ratio: float, drift_scale: float = 1.0) -> np.ndarray:
    """``E[exp(−k·|X|)]``, ``X ~ N(μ, σ²)``, ``k = drift_scale·L``: the mean factor
    ``E[((t+t0)/t0)^−ν]`` of devices whose ν is the folded normal of the chip. Closed form:
    ``e^(−kμ + k²σ²/2)·Φ(μ/σ − kσ) + e^(kμ + k²σ²/2)·Φ(−μ/σ − kσ)`` (the two half-lines of X)."""
    mu = np.asarray(mu, np.float64)
    sigma = np.asarray(sigma, np.float64)
    k = drift_scale * log_ratio
    half = k * k * sigma * sigma / 2
    pos = np.exp(-k * mu + half) * ndtr(mu / sigma - k * sigma)
    neg = np.exp(k * mu + half) * ndtr(-mu / sigma - k * sigma)
    return pos + neg


def predicted_decay(w_norm: np.ndarray, device: DeviceModel, age_s: float, drift_scale: float = 1.0) -> float:
    """The |w|-weighted mean of :func:`expected_decay` over a layer's normalised target weights:
    the layer's analytic mean conductance decay at ``age_s`` (programming noise and the
    devices at 0 µS ignored; dimensionless)."""
    a = np.abs(np.asarray(w_norm, np.float64)).ravel()
    a = a[a > 0]
    mu, sigma = device.drift_nu_stats(a * device.g_max_us)
    d = expected_decay(mu, sigma, log_age_ratio(device, age_s), drift_scale)
    return float((a * d).sum() / a.sum())


def naive_decay(w_norm: np.ndarray, device: DeviceModel, age_s: float, drift_scale: float = 1.0) -> float:
    """``((t + t0)/t0)^−ν̄`` with ν̄ the |w|-weighted mean μ_ν of the layer: the one-exponent
    estimate (ignores the spread of ν, which raises the mean factor by Jensen's inequality)."""
    a = np.abs(np.asarray(w_norm, np.float64)).ravel()
    a = a[a > 0]
    mu, _ = device.drift_nu_stats(a * device.g_max_us)
    nu_bar = float((a * mu).sum() / a.sum()) * drift_scale
    return math.exp(-nu_bar * log_age_ratio(device, age_s))


def measured_decay(baselines: np.ndarray, alphas: np.ndarray, tiles: list[tuple[int, int]]) -> float:
    """A layer's decay as its GDC measures it: per tile ``current = baseline/α``, combined over
    the tiles weighted by their rows (the mean over the layer's weights). Dimensionless."""
    rows = np.array([b - a for a, b in tiles], np.float64)
    base = np.asarray(baselines, np.float64).reshape(-1)
    current = base / np.asarray(alphas, np.float64).reshape(-1)
    return float((rows * current).sum() / (rows * base).sum())


def chip_decays(chip, readout, mode: str = "exact") -> dict[str, float]:
    """Per analog layer (keyed by its weight initializer's name) the decay the chip's read-out
    measures: ``exact`` (noise-free mean|w(t)|/mean|w_target|) or ``global`` (the identity read
    through the noisy periphery, 1/α of GDC)."""
    from chipsim.compiler.plan import load_plans

    out = {}
    for plan, layer, lr in zip(load_plans(chip), chip.layers, readout.layers):
        if mode == "exact":
            out[plan.weight_name] = measured_decay(layer.gdc_baseline_exact, lr.alpha_exact, layer.tiles)
        else:
            out[plan.weight_name] = measured_decay(layer.gdc_baseline, lr.alpha_global, layer.tiles)
    return out
