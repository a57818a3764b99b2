"""Hierarchical paired bootstrap for the Fashion-MNIST study (numpy only).

Three sources of variation stand between a table entry and the truth it estimates: which test
images were drawn (10 000 of the garment distribution), which chip instances (programming noise,
drift exponents, faults) and which training runs (seeds). A replicate resamples all three, with
replacement, *once for the whole table*: training seeds (by seed value, shared by every mode of
an architecture: HWA seed s is fine-tuned from plain seed s), chip instances (by index: chip k is
programming seed k for every model) and images (by index, the same test images for every model).
Every quantity of the table and every gap between two of them is computed on the same replicate,
so differences are paired and their intervals are percentile intervals of paired differences
(Efron & Tibshirani 1993, ch. 13; hierarchical resampling of each level as in Davison & Hinkley
1997, §3.8, "resample at every stage"). A difference is *significant* when its 95 % interval
excludes 0.

Implementation: a replicate is three count vectors (seeds, chips, images) summing to their sizes;
the resampled mean of a (seeds, chips, images) array of correctness is the count-weighted mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CI = 0.95


@dataclass(frozen=True)
class Replicates:
    """``B`` bootstrap replicates: counts per image (N, B), per chip (K, B), per seed value {seed: (B,)}."""

    images: np.ndarray
    chips: np.ndarray
    seeds: dict[int, np.ndarray]

    @property
    def n(self) -> int:
        return self.images.shape[1]


def _counts(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """(n, b) float32: how often each of n units is drawn in each of b resamples of size n."""
    out = np.empty((n, b), np.float32)
    for j in range(b):
        out[:, j] = np.bincount(rng.integers(0, n, n), minlength=n)
    return out


def draw(n_images: int, n_chips: int, seeds: list[int], b: int, rng: np.random.Generator) -> Replicates:
    """``b`` replicates over ``n_images`` images, ``n_chips`` chips and the training ``seeds``."""
    s = _counts(len(seeds), b, rng)
    return Replicates(_counts(n_images, b, rng), _counts(n_chips, b, rng), {v: s[i] for i, v in enumerate(seeds)})


@dataclass(frozen=True)
class Estimate:
    """A point estimate (the full-sample value) and its bootstrap replicates."""

    value: float
    boot: np.ndarray

    def interval(self, ci: float = CI) -> tuple[float, float]:
        q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
        lo, hi = np.nanpercentile(self.boot, q)
        return float(lo), float(hi)

    def __sub__(self, other: Estimate) -> Estimate:
        return Estimate(self.value - other.value, self.boot - other.boot)

    def __truediv__(self, other: Estimate) -> Estimate:
        return Estimate(self.value / other.value, self.boot / other.boot)

    def summary(self, scale: float = 100.0, digits: int = 2) -> dict:
        """``{"mean", "lo", "hi"}`` × ``scale`` rounded to ``digits`` and ``significant`` (interval
        excludes 0): the JSON form the report prints."""
        lo, hi = self.interval()
        return {
            "mean": round(self.value * scale, digits),
            "lo": round(lo * scale, digits),
            "hi": round(hi * scale, digits),
            "significant": bool(lo > 0 or hi < 0),
        }


def _seed_weights(rep: Replicates, seeds: list[int]) -> np.ndarray:
    return np.stack([rep.seeds[s] for s in seeds])  # (S, B)


def chip_mean(correct: np.ndarray, seeds: list[int], rep: Replicates) -> Estimate:
    """Mean accuracy of ``correct`` (bool (S seeds, K chips, N images)) over seeds, chips and
    images, and its replicates. Seeds absent from a replicate's draw leave it undefined (NaN)."""
    s, k, n = correct.shape
    per_sk = correct.reshape(s * k, n).astype(np.float32) @ rep.images / n  # (S·K, B)
    ws = _seed_weights(rep, seeds)  # (S, B)
    num = np.einsum("skb,sb,kb->b", per_sk.reshape(s, k, -1), ws, rep.chips)
    den = ws.sum(axis=0) * k
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = num / den
    return Estimate(float(correct.mean()), boot)


def fp_mean(correct: np.ndarray, seeds: list[int], rep: Replicates) -> Estimate:
    """Mean floating-point accuracy of ``correct`` (bool (S seeds, N images)) and its replicates."""
    return chip_mean(correct[:, None, :], seeds, Replicates(rep.images, np.ones((1, rep.n), np.float32), rep.seeds))


def binomial_coverage(p: float, n: int, trials: int, b: int, seed: int) -> float:
    """Fraction of ``trials`` samples of ``n`` Bernoulli(p) images whose 95 % bootstrap interval
    (``b`` replicates, one seed, one chip) covers ``p`` (for the test of the interval)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        c = rng.random(n) < p
        rep = draw(n, 1, [0], b, rng)
        lo, hi = chip_mean(c[None, None, :], [0], rep).interval()
        hits += lo <= p <= hi
    return hits / trials
