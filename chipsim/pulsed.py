"""Pulsed update of resistive devices: response functions and pulse trains (numpy only).

A resistive device is not written like a float. Each programming pulse moves the weight by
``dw_min · q±(w)``: ``q+`` for a potentiation pulse, ``q−`` for a depression pulse, both depending
on the current weight ``w`` (the *response function*). Weights here are in normalised weight
units (the device range ``[w_min, w_max]``, by default ``[-1, 1]``); ``dw_min`` is in the same
units and is the nominal size of one pulse (the granularity of the device).

Splitting ``q±`` into a symmetric part ``F`` and an asymmetric part ``G`` (Wu et al. 2025, their
"analog update"; the symmetric point itself is from Gokmen & Haensch 2020)::

    F(w) = (q+(w) + q−(w)) / 2        G(w) = (q−(w) − q+(w)) / 2
    q+ = F − G                        q− = F + G

an update that asks for ``Δ`` moves the weight, in expectation, by ``Δ·F(w) − |Δ|·G(w)``. The
second term does not depend on the sign of ``Δ``: noisy updates that average to zero still drag
the weight towards the *symmetric point* ``w◇`` where ``G(w◇) = 0`` (``q+ = q−``). That drift is
what biases plain analog SGD and what residual learning (``chipsim.analog_training``) removes.

Sources:
  - T. Gokmen, W. Haensch, "Algorithm for training neural networks on resistive device arrays",
    Front. Neurosci. 14:103 (2020) — symmetric point, soft-bounds devices, Tiki-Taka.
  - M. J. Rasch et al., "Fast and robust analog in-memory deep neural network training",
    Nat. Commun. 15:7133 (2024) — pulsed two-array training, device presets.
  - Z. Wu, Q. Xiao, T. Gokmen, O. Fagbohungbe, T. Chen, "Analog in-memory training on general
    non-ideal resistive elements: the impact of response functions", NeurIPS 2025,
    arXiv:2502.06309 — the F/G decomposition and residual learning.
  - IBM aihwkit (github.com/IBM/aihwkit), ``ConstantStepDevice``, ``LinearStepDevice``,
    ``SoftBoundsDevice``, ``ExpStepDevice``, ``PowStepDevice`` — the public reference models that
    the presets below follow in spirit (parameterisations are simplified, not identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

C2C_MODES = ("multiplicative", "additive")


def _require(ok: bool, name: str, message: str, value: object) -> None:
    """Raise ``ValueError`` naming the offending field (the repo-wide validation style)."""
    if not ok:
        raise ValueError(f"{name}: {message}, got {value!r}")


def _finite(name: str, value: float) -> float:
    _require(
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool),
        name,
        "must be a real number",
        value,
    )
    _require(math.isfinite(float(value)), name, "must be finite", value)
    return float(value)


def _positive(name: str, value: float, message: str = "must be > 0") -> float:
    _require(_finite(name, value) > 0, name, message, value)
    return float(value)


def _non_negative(name: str, value: float) -> float:
    _require(_finite(name, value) >= 0, name, "must be >= 0", value)
    return float(value)


def _int_at_least(name: str, value: int, low: int) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
    _require(ok, name, f"must be an integer >= {low}", value)
    return int(value)


# --------------------------------------------------------------------------- response functions


@runtime_checkable
class Response(Protocol):
    """A response function: relative step sizes of potentiation and depression pulses."""

    def q_up(self, w: np.ndarray) -> np.ndarray:
        """Relative size (≥ 0, dimensionless) of a potentiation pulse at weight ``w``."""

    def q_down(self, w: np.ndarray) -> np.ndarray:
        """Relative size (≥ 0, dimensionless) of a depression pulse at weight ``w``."""

    def symmetric_point(self) -> float:
        """The weight ``w◇`` where ``q+(w◇) = q−(w◇)`` (weight units)."""


def symmetric_part(response: Response, w: np.ndarray) -> np.ndarray:
    """``F(w) = (q+(w) + q−(w)) / 2`` — scales the signed part of an update (Wu et al. 2025)."""
    w = np.asarray(w, dtype=np.float64)
    return 0.5 * (response.q_up(w) + response.q_down(w))


def asymmetric_part(response: Response, w: np.ndarray) -> np.ndarray:
    """``G(w) = (q−(w) − q+(w)) / 2`` — the sign-independent drift towards ``w◇`` (Wu et al. 2025)."""
    w = np.asarray(w, dtype=np.float64)
    return 0.5 * (response.q_down(w) - response.q_up(w))


def bisect_symmetric_point(response: Response, lo: float, hi: float, tol: float = 1e-13) -> float:
    """Numerical ``w◇`` on ``[lo, hi]`` by bisection of ``q+ − q−``.

    Needs ``q+ − q−`` to change sign on the interval (it is decreasing for every preset here:
    potentiation weakens and depression strengthens as ``w`` grows). Pure numpy, no scipy.
    """

    def diff(x: float) -> float:
        arr = np.array([x], dtype=np.float64)
        return float(response.q_up(arr)[0] - response.q_down(arr)[0])

    d_lo, d_hi = diff(lo), diff(hi)
    if d_lo == 0.0:
        return float(lo)
    if d_hi == 0.0:
        return float(hi)
    if (d_lo > 0) == (d_hi > 0):
        raise ValueError(f"symmetric_point: q+ - q- does not change sign on [{lo}, {hi}]")
    for _ in range(200):  # 200 halvings reach float64 resolution from any finite interval
        mid = 0.5 * (lo + hi)
        d_mid = diff(mid)
        if d_mid == 0.0 or hi - lo < tol:
            return float(mid)
        if (d_mid > 0) == (d_lo > 0):
            lo, d_lo = mid, d_mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))


@dataclass(frozen=True)
class LinearStep:
    """Linear-step response (aihwkit ``LinearStepDevice``; ``ConstantStepDevice`` when slopes are 0).

    ``q+(w) = 1 + up_down − slope_up·w``,   ``q−(w) = 1 − up_down + slope_down·w``

    (clipped at 0: a pulse never moves the weight the wrong way). ``up_down`` is a constant
    up/down imbalance, the slopes make the step shrink towards the bound the pulse moves to.
    Symmetric point: ``w◇ = 2·up_down / (slope_up + slope_down)``; with both slopes 0 every ``w`` is
    symmetric if ``up_down = 0`` (``w◇ = 0`` is returned) and none is otherwise (``ValueError``).
    The default (all zero) is the ideal, symmetric device.
    """

    slope_up: float = 0.0
    slope_down: float = 0.0
    up_down: float = 0.0

    def __post_init__(self) -> None:
        _non_negative("slope_up", self.slope_up)
        _non_negative("slope_down", self.slope_down)
        _require(abs(_finite("up_down", self.up_down)) < 1, "up_down", "must be in (-1, 1)", self.up_down)

    def q_up(self, w: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 + self.up_down - self.slope_up * np.asarray(w, dtype=np.float64), 0.0)

    def q_down(self, w: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 - self.up_down + self.slope_down * np.asarray(w, dtype=np.float64), 0.0)

    def symmetric_point(self) -> float:
        slopes = self.slope_up + self.slope_down
        if slopes == 0.0:
            if self.up_down == 0.0:
                return 0.0
            raise ValueError(f"up_down: a constant-step device with up_down={self.up_down} has no symmetric point")
        return 2.0 * self.up_down / slopes


@dataclass(frozen=True)
class SoftBounds:
    """Soft-bounds response (Gokmen & Haensch 2020, eq. 4; aihwkit ``SoftBoundsDevice``).

    ``q+(w) = (1 + up_down)·(1 − w/tau_max)``,   ``q−(w) = (1 − up_down)·(1 + w/tau_min)``

    (clipped at 0). The step vanishes at ``w = tau_max`` going up and at ``w = −tau_min`` going
    down; ``tau_min`` is the *magnitude* of that lower saturation point (positive). Smaller
    ``tau`` = stronger asymmetry: ``G(w) = w/tau`` for ``tau_max = tau_min = tau``, ``up_down = 0``.
    Symmetric point (set ``q+ = q−``):
    ``w◇ = 2·up_down / ((1 + up_down)/tau_max + (1 − up_down)/tau_min)``, 0 when ``up_down = 0``.
    """

    tau_max: float = 1.0
    tau_min: float = 1.0
    up_down: float = 0.0

    def __post_init__(self) -> None:
        _positive("tau_max", self.tau_max)
        _positive("tau_min", self.tau_min, "must be > 0 (magnitude of the lower bound)")
        _require(abs(_finite("up_down", self.up_down)) < 1, "up_down", "must be in (-1, 1)", self.up_down)

    def q_up(self, w: np.ndarray) -> np.ndarray:
        return np.maximum((1.0 + self.up_down) * (1.0 - np.asarray(w, dtype=np.float64) / self.tau_max), 0.0)

    def q_down(self, w: np.ndarray) -> np.ndarray:
        return np.maximum((1.0 - self.up_down) * (1.0 + np.asarray(w, dtype=np.float64) / self.tau_min), 0.0)

    def symmetric_point(self) -> float:
        a = self.up_down
        return 2.0 * a / ((1.0 + a) / self.tau_max + (1.0 - a) / self.tau_min)


@dataclass(frozen=True)
class ExpStep:
    """Exponential-step response (after aihwkit ``ExpStepDevice``, without its affine input map).

    ``q+(w) = max(0, 1 − a_up·exp(gamma_up·w))``,   ``q−(w) = max(0, 1 − a_down·exp(−gamma_down·w))``

    The step collapses exponentially as the weight approaches the bound it is pushed to, the
    shape measured on many ReRAM/ECRAM devices. ``a_*`` in (0, 1) so that ``q(0) > 0``.
    Symmetric point, analytic where neither side is clipped:
    ``w◇ = ln(a_down / a_up) / (gamma_up + gamma_down)``.
    """

    a_up: float = 0.2
    a_down: float = 0.2
    gamma_up: float = 1.0
    gamma_down: float = 1.0

    def __post_init__(self) -> None:
        _require(0 < _finite("a_up", self.a_up) < 1, "a_up", "must be in (0, 1)", self.a_up)
        _require(0 < _finite("a_down", self.a_down) < 1, "a_down", "must be in (0, 1)", self.a_down)
        _positive("gamma_up", self.gamma_up)
        _positive("gamma_down", self.gamma_down)

    def q_up(self, w: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 - self.a_up * np.exp(self.gamma_up * np.asarray(w, dtype=np.float64)), 0.0)

    def q_down(self, w: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 - self.a_down * np.exp(-self.gamma_down * np.asarray(w, dtype=np.float64)), 0.0)

    def symmetric_point(self) -> float:
        return math.log(self.a_down / self.a_up) / (self.gamma_up + self.gamma_down)


@dataclass(frozen=True)
class PowStep:
    """Power-step response (after aihwkit ``PowStepDevice``, simplified).

    ``q+(w) = (1 − w/tau_max)^gamma_up``,   ``q−(w) = (1 + w/tau_min)^gamma_down``

    on ``(−tau_min, tau_max)``, 0 beyond (the bases are clipped at 0). ``gamma = 1`` is soft
    bounds; ``gamma > 1`` saturates harder. With ``gamma_up ≠ gamma_down`` the equation
    ``q+ = q−`` has no closed form, so ``symmetric_point`` is found **numerically** by bisection on
    ``(−tau_min, tau_max)`` (``q+ − q−`` falls monotonically from > 0 to < 0 there), to 1e-13.
    """

    tau_max: float = 1.0
    tau_min: float = 1.0
    gamma_up: float = 1.0
    gamma_down: float = 1.0

    def __post_init__(self) -> None:
        _positive("tau_max", self.tau_max)
        _positive("tau_min", self.tau_min, "must be > 0 (magnitude of the lower bound)")
        _positive("gamma_up", self.gamma_up)
        _positive("gamma_down", self.gamma_down)

    def q_up(self, w: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 - np.asarray(w, dtype=np.float64) / self.tau_max, 0.0) ** self.gamma_up

    def q_down(self, w: np.ndarray) -> np.ndarray:
        return np.maximum(1.0 + np.asarray(w, dtype=np.float64) / self.tau_min, 0.0) ** self.gamma_down

    def symmetric_point(self) -> float:
        return bisect_symmetric_point(self, -self.tau_min, self.tau_max)


RESPONSES: dict[str, type] = {
    "linear_step": LinearStep,
    "soft_bounds": SoftBounds,
    "exp_step": ExpStep,
    "pow_step": PowStep,
}


# --------------------------------------------------------------------------- device and updates


@dataclass(frozen=True)
class PulsedDevice:
    """A pulsed resistive device: response function, granularity, noise and bounds.

    - ``dw_min`` (weight units): nominal change of one pulse; ``|Δ|/dw_min`` pulses realise ``Δ``.
    - ``dw_min_std`` (dimensionless, relative to ``dw_min``): cycle-to-cycle noise of every pulse.
      ``c2c="multiplicative"`` (default): step ``= dw_min·q(w)·(1 + dw_min_std·ξ)`` — the noise
      scales with the response, so a saturated device (q = 0) stays put.
      ``c2c="additive"``: step ``= dw_min·(q(w) + dw_min_std·ξ)`` — the noise is present even at
      saturation. ``ξ ~ N(0, 1)``, drawn independently for every pulse.
    - ``w_min < w_max`` (weight units): hard bounds, the weight is clipped after every pulse.
    - ``max_pulses``: most pulses one update may fire (the pulse-train length of the periphery,
      aihwkit's ``desired_bl`` is 31); larger requests are truncated (``|Δ|`` saturates at
      ``max_pulses·dw_min``), as on hardware.
    """

    response: Response = field(default_factory=LinearStep)
    dw_min: float = 1e-3
    dw_min_std: float = 0.0
    w_min: float = -1.0
    w_max: float = 1.0
    max_pulses: int = 31
    c2c: str = "multiplicative"

    def __post_init__(self) -> None:
        ok = isinstance(self.response, Response)
        _require(ok, "response", "must implement q_up, q_down and symmetric_point", self.response)
        _finite("w_min", self.w_min)
        _finite("w_max", self.w_max)
        _require(self.w_min < self.w_max, "w_max", f"must be > w_min={self.w_min}", self.w_max)
        dw = _finite("dw_min", self.dw_min)
        _require(0 < dw <= (self.w_max - self.w_min) / 2, "dw_min", "must be in (0, (w_max - w_min)/2]", self.dw_min)
        _non_negative("dw_min_std", self.dw_min_std)
        _int_at_least("max_pulses", self.max_pulses, 1)
        _require(self.c2c in C2C_MODES, "c2c", f"must be one of {C2C_MODES}", self.c2c)

    @property
    def n_states(self) -> int:
        """Nominal number of distinguishable states, ``(w_max − w_min)/dw_min + 1`` (at q = 1)."""
        return int(round((self.w_max - self.w_min) / self.dw_min)) + 1

    def clip(self, w: np.ndarray) -> np.ndarray:
        return np.clip(w, self.w_min, self.w_max)


class PulseUpdate(NamedTuple):
    """Result of one pulsed update: new weights (weight units) and pulses fired per device."""

    weights: np.ndarray
    pulses: np.ndarray  # int64, same shape as weights; .sum() is the pulse cost


def pulse_counts(delta: np.ndarray, device: PulsedDevice, rng: np.random.Generator) -> np.ndarray:
    """Pulses that realise ``|Δ|``: stochastic rounding of ``|Δ|/dw_min``, capped at ``max_pulses``.

    Stochastic rounding (``floor`` plus one more with probability equal to the fraction) makes
    the expected count exactly ``|Δ|/dw_min``, so updates smaller than one pulse still act on
    average — but each realised update is a whole number of pulses (real granularity).
    """
    n_exact = np.abs(np.asarray(delta, dtype=np.float64)) / device.dw_min
    n = np.floor(n_exact)
    n += rng.random(n.shape) < (n_exact - n)
    return np.minimum(n, device.max_pulses).astype(np.int64)


def apply_pulses(
    w: np.ndarray, n: np.ndarray, up: np.ndarray, device: PulsedDevice, rng: np.random.Generator
) -> np.ndarray:
    """Fire ``n`` pulses (potentiation where ``up``) at every device; returns the new weights.

    Each pulse uses ``q±`` at the weight *reached by the previous pulse*, so a long train feels
    the response curve bend. The loop runs over pulse index (at most ``max_pulses``), vectorised
    across devices; devices whose train has finished drop out of the active set.
    """
    w_new = np.array(w, dtype=np.float64, copy=True).reshape(-1)
    n = np.asarray(n).reshape(-1)
    up = np.broadcast_to(np.asarray(up, dtype=bool), np.shape(w)).reshape(-1)
    active = np.flatnonzero(n > 0)
    k = 0
    while active.size:
        wa = w_new[active]
        ua = up[active]
        q = np.where(ua, device.response.q_up(wa), device.response.q_down(wa))
        if device.dw_min_std > 0:
            xi = rng.standard_normal(active.size)
            if device.c2c == "multiplicative":
                q = q * (1.0 + device.dw_min_std * xi)
            else:
                q = q + device.dw_min_std * xi
        step = device.dw_min * q
        # Clip per pulse: a device at its bound stays there, later pulses start from the bound.
        w_new[active] = np.clip(np.where(ua, wa + step, wa - step), device.w_min, device.w_max)
        k += 1
        active = active[n[active] > k]
    return w_new.reshape(np.shape(w))


def pulse_update(w: np.ndarray, delta: np.ndarray, device: PulsedDevice, rng: np.random.Generator) -> PulseUpdate:
    """Realise the requested change ``delta`` (weight units) on devices at ``w`` with pulse trains.

    Sign of ``delta`` picks potentiation or depression; ``|delta|/dw_min`` (stochastically rounded,
    capped at ``max_pulses``) pulses are fired, each moving the weight by ``dw_min·q±(w)`` with
    cycle-to-cycle noise, clipped to ``[w_min, w_max]``. In expectation this is
    :func:`expected_update` up to second order in ``dw_min`` (Wu et al. 2025, analog update).
    ``w`` must already lie within the bounds.
    """
    w = np.asarray(w, dtype=np.float64)
    delta = np.broadcast_to(np.asarray(delta, dtype=np.float64), w.shape)
    n = pulse_counts(delta, device, rng)
    return PulseUpdate(apply_pulses(w, n, delta > 0, device, rng), n)


def expected_update(w: np.ndarray, delta: np.ndarray, device: PulsedDevice) -> np.ndarray:
    """Mean-field update ``w + Δ·F(w) − |Δ|·G(w)`` (Wu et al. 2025), clipped to the bounds.

    ``|Δ|`` is first capped at ``max_pulses·dw_min`` like the pulse train. Equivalent to
    ``w + Δ·q+(w)`` for ``Δ > 0`` and ``w + Δ·q−(w)`` for ``Δ < 0``. It is exact, in expectation,
    for trains of at most one pulse with a response linear in ``w``; longer trains differ by
    ``O(n²·dw_min²·|q·q'|)``, which :func:`pulse_update` resolves pulse by pulse.
    """
    w = np.asarray(w, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    cap = device.max_pulses * device.dw_min
    delta = np.clip(delta, -cap, cap)
    f = symmetric_part(device.response, w)
    g = asymmetric_part(device.response, w)
    return device.clip(w + delta * f - np.abs(delta) * g)
