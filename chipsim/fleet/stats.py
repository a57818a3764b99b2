"""Fleet statistics: a distribution over chips and the yield's Wilson score interval.

Pure functions of plain numbers; no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

#: Two-sided 95 %: z = Φ⁻¹(0.975) = 1.959963984540054.
Z95 = NormalDist().inv_cdf(0.975)
#: Percentiles reported for distributions over chips.
PERCENTILES = (5, 50, 95)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Newcombe 1998 method 3).

    ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``p̂ = successes/trials``.
    Unlike the Wald interval it stays inside [0, 1] and keeps close to nominal coverage for
    small n and p̂ near 0 or 1 (Brown, Cai & DasGupta 2001), which is where yields live.
    ``trials == 0`` gives the uninformative (0, 1).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: need 0 ≤ successes ≤ trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    n, p = float(trials), successes / trials
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # p̂ = 0 or 1 makes one bound exactly 0 or 1 analytically; clamp the rounding
    return max(0.0, centre - half), min(1.0, centre + half)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof = 1: the spread of the manufacturing population, 0 for
    one chip), min, max and the 5th/50th/95th percentiles (linear interpolation between order
    statistics, numpy's default, Hyndman & Fan type 7) of per-chip values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("distribution: no values")
    pct = np.percentile(v, PERCENTILES, method="linear")
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        **{f"p{q}": float(x) for q, x in zip(PERCENTILES, pct)},
    }


def yield_summary(values: Sequence[float], threshold: float) -> dict[str, float | int]:
    """Share of chips whose value meets ``>= threshold``, with its 95 % Wilson interval."""
    v = np.asarray(values, dtype=np.float64)
    meets = int(np.count_nonzero(v >= threshold))
    lo, hi = wilson_interval(meets, int(v.size))
    return {
        "meets": meets,
        "chips": int(v.size),
        "share": meets / v.size if v.size else 0.0,
        "ci95_low": lo,
        "ci95_high": hi,
    }
