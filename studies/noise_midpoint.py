"""Robustness midpoint µ under activation noise: the sweep and the logistic fit with bootstrap.

The noise model of the hardening literature (issue #12, #18; Borras, Klein & Fröning, "Walking
Noise", ECML-PKDD 2024, arXiv:2212.10430): additive Gaussian noise of one *absolute* standard
deviation σ on every layer's output activations, the same σ everywhere, no other perturbation.
Accuracy is measured on a log-spaced grid of σ and fitted in log σ by

    acc(σ) = c + (a − c) / (1 + exp(k · (ln σ − ln µ)))

with the chance level ``c`` fixed (1/classes): ``a`` is the accuracy at σ → 0, µ the σ at which
accuracy has fallen halfway from ``a`` to chance (the *robustness midpoint*), ``k`` the slope in
ln σ (accuracy falls by (a − c)·k/4 per e-fold of σ at µ).

API (numpy/scipy only; :mod:`studies.activation_noise` builds ``model_fn`` for torch models)::

    s = sweep(model_fn, sigmas, seeds)          # model_fn(σ, seed) -> bool (N,) per image
    fit = fit_logistic(np.log(s.sigmas), s.correct, chance=0.1, n_boot=200)
    fit.mu, fit.mu_ci, fit.slope, fit.rmse, fit.r2

The bootstrap is hierarchical and paired: each replicate resamples the noise seeds and, inside,
the images (the same image indices at every σ, since the same images are read at every σ), then
refits. Its 2.5/97.5 percentiles are ``mu_ci``. Replicates whose fit fails are counted in
``n_failed`` and left out (a curve that never falls below halfway has no midpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: ``model_fn(sigma, seed)``: per-image correctness (bool, shape (N,)) of the model whose every
#: layer output carries Gaussian noise of absolute standard deviation ``sigma`` drawn from ``seed``.
ModelFn = Callable[[float, int], np.ndarray]


class MidpointFitError(ValueError):
    """The accuracies do not determine a midpoint (too few σ, or wrong shapes)."""


@dataclass(frozen=True)
class Sweep:
    """Per-image correctness ``correct`` (bool, (len(sigmas), len(seeds), N)) at each σ and seed."""

    sigmas: np.ndarray
    seeds: tuple[int, ...]
    correct: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy per σ and seed, (S, R), fractions."""
        return self.correct.mean(axis=2)

    def to_json(self) -> dict:
        """JSON-able form: correctness as packed bits (hex), 1 bit per image."""
        return {
            "sigmas": [float(s) for s in self.sigmas],
            "seeds": list(self.seeds),
            "n_images": int(self.correct.shape[2]),
            "correct_bits": np.packbits(self.correct, axis=2).tobytes().hex(),
        }

    @classmethod
    def from_json(cls, d: dict) -> Sweep:
        s, r, n = len(d["sigmas"]), len(d["seeds"]), int(d["n_images"])
        packed = np.frombuffer(bytes.fromhex(d["correct_bits"]), np.uint8).reshape(s, r, -1)
        correct = np.unpackbits(packed, axis=2, count=n).astype(bool)
        return cls(np.asarray(d["sigmas"], float), tuple(int(x) for x in d["seeds"]), correct)


def sweep(model_fn: ModelFn, sigmas: Sequence[float], seeds: Sequence[int], progress: bool = False) -> Sweep:
    """Run ``model_fn`` at every σ (absolute, in the units of the layer outputs) and seed."""
    sigmas = np.asarray(sigmas, float)
    if sigmas.ndim != 1 or len(sigmas) == 0 or np.any(sigmas <= 0):
        raise ValueError(f"sigmas: expected a non-empty 1-D list of positive σ, got {sigmas}")
    if len(seeds) == 0:
        raise ValueError("seeds: expected at least one noise seed")
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=len(sigmas) * len(seeds), desc="noise sweep", disable=not progress, leave=False) as bar:
        for s in sigmas:
            row = []
            for seed in seeds:
                c = np.asarray(model_fn(float(s), int(seed)), bool)
                if c.ndim != 1 or (row and c.shape != row[0].shape):
                    raise ValueError(f"model_fn: expected bool (N,) per image with one N, got shape {c.shape}")
                row.append(c)
                bar.update(1)
            rows.append(row)
    return Sweep(sigmas, tuple(int(x) for x in seeds), np.asarray(rows, bool))


def logistic(log_sigma: np.ndarray, a: float, log_mu: float, k: float, chance: float) -> np.ndarray:
    """``c + (a − c)/(1 + exp(k (ln σ − ln µ)))``: ``a`` at σ → 0, ``chance`` at σ → ∞."""
    return chance + (a - chance) / (1.0 + np.exp(np.clip(k * (np.asarray(log_sigma) - log_mu), -60, 60)))


@dataclass(frozen=True)
class LogisticFit:
    """The fit of one accuracy curve: ``mu`` (σ units), ``slope`` k (per e-fold of σ), ``top`` a,
    fit quality ``rmse`` (accuracy fraction) and ``r2``, the bootstrap interval ``mu_ci`` and
    ``slope_ci`` (NaN without bootstrap), replicates used / failed."""

    mu: float
    slope: float
    top: float
    chance: float
    rmse: float
    r2: float
    mu_ci: tuple[float, float] = (math.nan, math.nan)
    slope_ci: tuple[float, float] = (math.nan, math.nan)
    n_boot: int = 0
    n_failed: int = 0
    boot_mu: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("mu", "slope", "top", "chance", "rmse", "r2", "n_boot", "n_failed")}
        return {**d, "mu_ci": list(self.mu_ci), "slope_ci": list(self.slope_ci)}


def _fit_curve(log_sigma: np.ndarray, acc: np.ndarray, chance: float) -> tuple[float, float, float]:
    """Least squares (a, ln µ, k) of one mean curve; start values from the data (the grid point
    nearest halfway), bounds a ∈ [chance, 1], ln µ within 5 e-folds of the grid, k ∈ (0, 50]."""
    from scipy.optimize import curve_fit

    a0 = float(max(acc.max(), chance + 1e-6))
    half = chance + (a0 - chance) / 2
    lm0 = float(log_sigma[np.argmin(np.abs(acc - half))])
    lo, hi = float(log_sigma.min()), float(log_sigma.max())

    def f(ls, a, lm, k):
        return logistic(ls, a, lm, k, chance)

    popt, _ = curve_fit(
        f, log_sigma, acc, p0=[min(a0, 1.0), lm0, 2.0], bounds=([chance, lo - 5, 1e-3], [1.0, hi + 5, 50.0])
    )
    return float(popt[0]), float(popt[1]), float(popt[2])


def _mean_curve(acc: np.ndarray) -> np.ndarray:
    return acc.reshape(acc.shape[0], -1).mean(axis=1)


def _resample(acc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One paired replicate: seeds (axis 1) with replacement, then images (axis 2) with
    replacement, the same indices at every σ."""
    if acc.ndim >= 2:
        acc = acc[:, rng.integers(0, acc.shape[1], acc.shape[1])]
    if acc.ndim == 3:
        acc = acc[:, :, rng.integers(0, acc.shape[2], acc.shape[2])]
    return acc


def fit_logistic(
    log_sigma: Sequence[float],
    acc: np.ndarray,
    chance: float,
    n_boot: int = 0,
    seed: int = 0,
    ci: float = 0.95,
) -> LogisticFit:
    """Fit the logistic in ln σ to ``acc``: (S,) accuracies, (S, R) accuracies per noise seed, or
    (S, R, N) per-image correctness. With ``n_boot`` > 0 and per-seed or per-image data, ``mu_ci``
    and ``slope_ci`` are percentile intervals of the hierarchical paired bootstrap
    (``numpy.random.default_rng(seed)``). Raises :class:`MidpointFitError`."""
    log_sigma = np.asarray(log_sigma, float)
    acc = np.asarray(acc, float)
    if acc.ndim not in (1, 2, 3) or acc.shape[0] != len(log_sigma):
        raise MidpointFitError(f"acc: expected shape ({len(log_sigma)}, …) with ≤ 3 axes, got {acc.shape}")
    if len(log_sigma) < 4:
        raise MidpointFitError(f"log_sigma: a 3-parameter fit needs ≥ 4 σ, got {len(log_sigma)}")
    mean = _mean_curve(acc)
    try:
        a, lm, k = _fit_curve(log_sigma, mean, chance)
    except (RuntimeError, ValueError) as err:
        raise MidpointFitError(f"logistic fit failed: {err}") from err
    pred = logistic(log_sigma, a, lm, k, chance)
    ss_res = float(np.sum((pred - mean) ** 2))
    ss_tot = float(np.sum((mean - mean.mean()) ** 2))
    point = dict(
        mu=math.exp(lm),
        slope=k,
        top=a,
        chance=chance,
        rmse=math.sqrt(ss_res / len(mean)),
        r2=1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
    )
    if n_boot <= 0 or acc.ndim == 1:
        return LogisticFit(**point)
    rng = np.random.default_rng(seed)
    mus, ks, failed = [], [], 0
    for _ in range(n_boot):
        try:
            _, blm, bk = _fit_curve(log_sigma, _mean_curve(_resample(acc, rng)), chance)
        except (RuntimeError, ValueError):
            failed += 1
            continue
        mus.append(math.exp(blm))
        ks.append(bk)
    q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
    mu_ci = tuple(float(v) for v in np.percentile(mus, q)) if mus else (math.nan, math.nan)
    k_ci = tuple(float(v) for v in np.percentile(ks, q)) if ks else (math.nan, math.nan)
    return LogisticFit(**point, mu_ci=mu_ci, slope_ci=k_ci, n_boot=n_boot, n_failed=failed, boot_mu=np.asarray(mus))


def midpoint_difference(a: LogisticFit, b: LogisticFit, ci: float = 0.95) -> tuple[float, tuple[float, float]]:
    """µ_a / µ_b and a percentile interval of the ratio from the two fits' bootstrap replicates
    (independent models: replicates paired by index; both fits need ``n_boot`` > 0)."""
    n = min(len(a.boot_mu), len(b.boot_mu))
    if n == 0:
        raise MidpointFitError("midpoint_difference: both fits need bootstrap replicates (n_boot > 0)")
    ratio = a.boot_mu[:n] / b.boot_mu[:n]
    lo, hi = np.percentile(ratio, [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100])
    return a.mu / b.mu, (float(lo), float(hi))
