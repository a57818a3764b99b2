"""On-chip training algorithms on pulsed devices: analog SGD and residual learning (numpy only).

Every optimiser here holds the state of one weight matrix and exposes the same small API, so a
layer of a network can later be trained with any of them:

- ``weights()`` — the effective weights to use in the forward and backward pass (a copy),
- ``step(grad, rng)`` — apply one gradient (``∂loss/∂weights``, same shape) with pulses,
- ``pulses_used`` — total pulses fired so far (the update cost), ``steps`` — steps taken.

Randomness (stochastic rounding, cycle-to-cycle noise, read noise) comes only from the
``numpy.random.Generator`` passed to ``step``; nothing is drawn at construction.

Algorithms:

- :class:`DigitalSGD` — float SGD, the reference.
- :class:`AnalogSGD` — ``Δ = −lr·grad`` written to the array by pulses. Its fixed point is biased
  towards the device's symmetric point by ``E|Δ|·G(w)`` (Wu et al. 2025, Thm. on Analog SGD;
  Gokmen & Haensch 2020), a bias that does not shrink with the learning rate.
- :class:`ResidualLearning` — two arrays, main ``W`` and residual ``P``; the network sees
  ``W̄ = W + γ·P``; ``P`` takes the gradient steps, and every ``transfer_every`` steps a noisy read
  of ``P`` is written into ``W`` by pulses (Tiki-Taka, Gokmen & Haensch 2020; residual learning,
  Wu et al. 2025, arXiv:2502.06309; the two-array, transfer-based scheme as used in
  Rasch et al., Nat. Commun. 15:7133, 2024). ``P`` is *zero-shifted*: the value used is the
  device state minus its symmetric point, so the asymmetric drift of ``P`` pulls it to 0 and,
  at the fixed point, ``P ≈ 0`` means the gradient at ``W̄`` is zero.
- :class:`ResidualLearningV2` — as above, with a digital low-pass buffer
  ``H ← (1−β)·H + β·P_read``; only entries with ``|H| ≥ dw_min`` of ``W``'s device are transferred
  (whole pulses) and then reset. Filters read noise and respects ``W``'s granularity
  (Wu et al. 2025, "residual learning v2").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from chipsim.pulsed import (
    PulsedDevice,
    _finite,
    _int_at_least,
    _non_negative,
    _positive,
    _require,
    apply_pulses,
    pulse_update,
)


@runtime_checkable
class AnalogOptimizer(Protocol):
    """State of one trainable weight matrix on (or off) the chip."""

    pulses_used: int
    steps: int

    def weights(self) -> np.ndarray:
        """Effective weights for forward/backward (weight units), a copy."""

    def step(self, grad: np.ndarray, rng: np.random.Generator) -> None:
        """Apply one gradient ``∂loss/∂weights`` (same shape as ``weights()``)."""


def _check_lr(name: str, value: float) -> float:
    return _positive(name, value)


def _check_grad(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    grad = np.asarray(grad, dtype=np.float64)
    _require(grad.shape == shape, "grad", f"must have shape {shape}", grad.shape)
    _require(bool(np.all(np.isfinite(grad))), "grad", "must be finite", "non-finite values")
    return grad


def _check_initial(name: str, w0: np.ndarray, device: PulsedDevice) -> np.ndarray:
    w0 = np.array(w0, dtype=np.float64, copy=True)
    ok = bool(np.all(np.isfinite(w0))) and bool(np.all((w0 >= device.w_min) & (w0 <= device.w_max)))
    _require(ok, name, f"must be finite and within [{device.w_min}, {device.w_max}]", "out-of-range values")
    return w0


def analog_sgd_update(
    w: np.ndarray, grad: np.ndarray, lr: float, device: PulsedDevice, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """One analog SGD step: write ``Δ = −lr·grad`` into the array at ``w`` by pulses.

    Returns ``(new weights, pulses fired)``. In expectation
    ``w ← w − lr·grad·F(w) − lr·|grad|·G(w)`` (Wu et al. 2025).
    """
    new_w, pulses = pulse_update(w, -lr * np.asarray(grad, dtype=np.float64), device, rng)
    return new_w, int(pulses.sum())


class DigitalSGD:
    """Floating-point SGD ``w ← w − lr·grad``: the reference the analog algorithms should match."""

    def __init__(self, w0: np.ndarray, lr: float) -> None:
        self.lr = _check_lr("lr", lr)
        w0 = np.array(w0, dtype=np.float64, copy=True)
        _require(bool(np.all(np.isfinite(w0))), "w0", "must be finite", "non-finite values")
        self._w = w0
        self.pulses_used = 0
        self.steps = 0

    def weights(self) -> np.ndarray:
        return self._w.copy()

    def step(self, grad: np.ndarray, rng: np.random.Generator) -> None:  # rng unused: noiseless
        self._w = self._w - self.lr * _check_grad(grad, self._w.shape)
        self.steps += 1


class AnalogSGD:
    """SGD whose every update is a pulse train on one array of ``device`` (in-memory SGD).

    ``lr`` in (weight units)² / loss unit, as for SGD. ``w0`` must lie within the device bounds.
    """

    def __init__(self, device: PulsedDevice, w0: np.ndarray, lr: float) -> None:
        _require(isinstance(device, PulsedDevice), "device", "must be a PulsedDevice", device)
        self.device = device
        self.lr = _check_lr("lr", lr)
        self._w = _check_initial("w0", w0, device)
        self.pulses_used = 0
        self.steps = 0

    def weights(self) -> np.ndarray:
        return self._w.copy()

    def step(self, grad: np.ndarray, rng: np.random.Generator) -> None:
        grad = _check_grad(grad, self._w.shape)
        self._w, pulses = analog_sgd_update(self._w, grad, self.lr, self.device, rng)
        self.pulses_used += pulses
        self.steps += 1


@dataclass(frozen=True)
class ResidualConfig:
    """Hyper-parameters of residual learning (Wu et al. 2025; Tiki-Taka, Gokmen & Haensch 2020).

    - ``lr`` (> 0): learning rate of the gradient step on ``P``, ``ΔP = −lr·∂loss/∂W̄``.
    - ``gamma`` (≥ 0, dimensionless): weight of ``P`` in the effective weights ``W̄ = W + γ·P``.
      ``gamma = 0`` is plain Tiki-Taka v1 (``P`` only accumulates gradients).
    - ``transfer_every`` (int ≥ 1): gradient steps between two transfers ``P → W``.
    - ``transfer_lr`` (> 0, dimensionless): v1 writes ``Δ_W = transfer_lr·P_read`` into ``W``.
      (v2 transfers ``H`` itself in whole pulses; its rate is set by ``beta``.)
    - ``beta`` in (0, 1]: v2 buffer update ``H ← (1−β)·H + β·P_read``. Starting from a reset,
      ``H`` grows by ≈ ``β·P`` per transfer, so ``β`` is v2's transfer rate; its stationary read-
      noise std is ``read_noise_std·sqrt(β/(2−β))``.
    - ``read_noise_std`` (≥ 0, weight units): Gaussian noise of each read-out of ``P``.
    - ``zero_shift``: represent ``P`` as device state minus the device's symmetric point (the
      default and the algorithm's assumption). ``False`` is for ablations only.
    """

    lr: float = 0.01
    gamma: float = 0.5
    transfer_every: int = 1
    # lr/8 for both: the least-squares study's empirical choice (W settles within ~2000 steps;
    # for v2 with read noise, a small beta keeps noise-driven threshold crossings rare).
    transfer_lr: float = 1.25e-3
    beta: float = 1.25e-3
    read_noise_std: float = 0.0
    zero_shift: bool = True

    def __post_init__(self) -> None:
        _check_lr("lr", self.lr)
        _non_negative("gamma", self.gamma)
        _int_at_least("transfer_every", self.transfer_every, 1)
        _check_lr("transfer_lr", self.transfer_lr)
        _require(0 < _finite("beta", self.beta) <= 1, "beta", "must be in (0, 1]", self.beta)
        _non_negative("read_noise_std", self.read_noise_std)
        _require(isinstance(self.zero_shift, bool), "zero_shift", "must be a bool", self.zero_shift)


class ResidualLearning:
    """Residual learning on two pulsed arrays (v1): ``W̄ = W + γ·P``.

    Per ``step(grad)`` with ``grad = ∂loss/∂W̄`` evaluated at ``weights()``:

    1. ``P ← P ⊕ (−lr·grad)`` — analog (pulsed) update of the residual array;
    2. every ``transfer_every`` steps: ``P_read = P + read_noise_std·ξ`` and
       ``W ← W ⊕ transfer_lr·P_read`` (pulsed update of the main array).

    ``⊕`` is :func:`chipsim.pulsed.pulse_update`. ``W`` starts at ``w0``; ``P`` starts at 0 (its
    device at the symmetric point). Why it removes the bias (Wu et al. 2025): ``W`` only stops
    moving when ``P ≈ 0``; at ``P = 0`` the residual device is at its symmetric point, where
    ``G = 0``, so the gradient noise no longer drags ``P`` and its drift is ``−lr·E[grad]·F(0)``,
    which vanishes only where the expected gradient at ``W̄`` does.
    """

    def __init__(self, device_w: PulsedDevice, device_p: PulsedDevice, w0: np.ndarray, config: ResidualConfig) -> None:
        _require(isinstance(device_w, PulsedDevice), "device_w", "must be a PulsedDevice", device_w)
        _require(isinstance(device_p, PulsedDevice), "device_p", "must be a PulsedDevice", device_p)
        _require(isinstance(config, ResidualConfig), "config", "must be a ResidualConfig", config)
        self.device_w, self.device_p, self.config = device_w, device_p, config
        self._w = _check_initial("w0", w0, device_w)
        # Zero shift: the residual value is (device state − w◇) so P = 0 sits where G = 0.
        self.p_offset = float(device_p.response.symmetric_point()) if config.zero_shift else 0.0
        _require(
            device_p.w_min < self.p_offset < device_p.w_max,
            "device_p",
            f"symmetric point must lie inside ({device_p.w_min}, {device_p.w_max}) for zero shifting",
            self.p_offset,
        )
        self._p_state = np.full(self._w.shape, self.p_offset)
        self.pulses_used = 0
        self.transfer_pulses = 0
        self.steps = 0

    @property
    def main(self) -> np.ndarray:
        """Main array ``W`` (weight units), a copy."""
        return self._w.copy()

    @property
    def residual(self) -> np.ndarray:
        """Residual ``P`` = device state − offset (weight units), a copy."""
        return self._p_state - self.p_offset

    def weights(self) -> np.ndarray:
        return self._w + self.config.gamma * (self._p_state - self.p_offset)

    def step(self, grad: np.ndarray, rng: np.random.Generator) -> None:
        grad = _check_grad(grad, self._w.shape)
        self._p_state, pulses = analog_sgd_update(self._p_state, grad, self.config.lr, self.device_p, rng)
        self.pulses_used += pulses
        self.steps += 1
        if self.steps % self.config.transfer_every == 0:
            self._transfer(rng)

    def read_residual(self, rng: np.random.Generator) -> np.ndarray:
        """One read-out of ``P`` with Gaussian read noise (weight units)."""
        p = self.residual
        if self.config.read_noise_std > 0:
            p = p + self.config.read_noise_std * rng.standard_normal(p.shape)
        return p

    def _transfer(self, rng: np.random.Generator) -> None:
        delta = self.config.transfer_lr * self.read_residual(rng)
        self._w, pulses = pulse_update(self._w, delta, self.device_w, rng)
        n = int(pulses.sum())
        self.pulses_used += n
        self.transfer_pulses += n


class ResidualLearningV2(ResidualLearning):
    """Residual learning v2: a digital buffer between the read-out of ``P`` and ``W``.

    At each transfer: ``H ← (1−β)·H + β·P_read``; where ``|H| ≥ dw_min`` (of ``device_w``) fire
    ``floor(|H|/dw_min)`` pulses (capped at ``max_pulses``) of sign ``sign(H)`` on ``W`` —
    deterministically, no stochastic rounding, so read noise that the buffer has averaged away
    cannot leak into ``W`` through rounding — and reset those entries of ``H`` to 0.
    ``transfer_lr`` is not used: the rate is ``β`` (see :class:`ResidualConfig`).
    """

    def __init__(self, device_w: PulsedDevice, device_p: PulsedDevice, w0: np.ndarray, config: ResidualConfig) -> None:
        super().__init__(device_w, device_p, w0, config)
        self._h = np.zeros_like(self._w)

    @property
    def buffer(self) -> np.ndarray:
        """Digital buffer ``H`` (weight units), a copy."""
        return self._h.copy()

    def _transfer(self, rng: np.random.Generator) -> None:
        beta = self.config.beta
        self._h = (1.0 - beta) * self._h + beta * self.read_residual(rng)
        dw = self.device_w.dw_min
        fire = np.abs(self._h) >= dw
        if not fire.any():
            return
        n = np.where(fire, np.minimum(np.floor(np.abs(self._h) / dw), self.device_w.max_pulses), 0).astype(np.int64)
        self._w = apply_pulses(self._w, n, self._h > 0, self.device_w, rng)
        self._h = np.where(fire, 0.0, self._h)
        pulses = int(n.sum())
        self.pulses_used += pulses
        self.transfer_pulses += pulses
