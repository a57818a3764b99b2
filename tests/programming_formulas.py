"""The DESIGN §3.2–3.5 formulas re-typed for the programming and read-out tests (independent of
chipsim), their closed forms, and the test matrices they are checked on. Conductances in µS
(``G_MAX``), ages in seconds."""

from __future__ import annotations

import math

import numpy as np

G_MAX = 25.0


HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0


# ---------------------------------------------------------------- closed forms (independent)
def sigma_prog(g):
    return 0.26348 + 1.9650 * g - 1.1731 * g * g


def Phi(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def phi(x):
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def folded_normal(mu: float, sd: float) -> tuple[float, float]:
    """Mean and std of |X|, X ~ N(mu, sd²) (ν = |μ_ν + σ_ν·ξ|)."""
    m = sd * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sd * sd)) + mu * (1 - 2 * float(Phi(-mu / sd)))
    return m, math.sqrt(mu * mu + sd * sd - m * m)


def lognormal_drift_factor(mu: float, sd: float, age: float) -> float:
    """E[exp(−νL)] = exp(−μL + σ²L²/2) when the fold is negligible (μ/σ ≥ 6)."""
    L = math.log((age + 20.0) / 20.0)
    return math.exp(-mu * L + 0.5 * sd * sd * L * L)


def read_rel_std(g_prog: float, age: float) -> float:
    q = min(0.0088 / max(g_prog**0.65, 1e-3), 0.2)
    return q * math.sqrt(math.log((age + 20.0 + 250e-9) / 500e-9))


def clipped_normal_matrix(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal(shape), -2.5, 2.5).astype(np.float32)
