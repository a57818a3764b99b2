"""The least-squares recalibration study's problem and runs (:mod:`studies.recalibration_least_squares`
is the command): the data, the compared optimisers on soft-bounds pulsed devices, one run's
distance to the optimum over the steps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from tqdm.auto import tqdm

from chipsim.analog_training import (
    AnalogOptimizer,
    AnalogSGD,
    DigitalSGD,
    ResidualConfig,
    ResidualLearning,
    ResidualLearningV2,
)
from chipsim.pulsed import LinearStep, PulsedDevice, SoftBounds

# Problem size and noise: small enough for minutes on two cores, large enough (64 weights) that
# the distance is not dominated by a single weight.
N_SAMPLES, D_IN, D_OUT = 512, 16, 4
LABEL_NOISE = 0.3  # std of y noise → minibatch gradient noise at the optimum
BATCH = 4
W_STAR_RANGE = 0.5  # W* ~ U(-0.5, 0.5): well inside the device range [-1, 1]

# Device: 2001 nominal states on [-1, 1], 30 % multiplicative cycle-to-cycle noise per pulse.
DW_MIN, DW_MIN_STD = 1e-3, 0.3

# Algorithms. transfer_lr = lr/8 with gamma = 0.5 is an empirical choice (W settles within ~2000
# steps at lr = 0.01, mildly underdamped); beta = lr/8 gives v2 the same transfer rate (a reset
# buffer grows by ≈ beta·P per transfer) and keeps noise-driven threshold crossings rare.
LR = 0.01
GAMMA = 0.5
TRANSFER_EVERY = 1
LR_SWEEP = (0.04, 0.01, 0.0025)
ASYMMETRIES = (0.0, 0.25, 0.5, 1.0)
READ_NOISES = (0.1, 0.3)
STRONG = 1.0  # asymmetry of the comparison runs
SHIFTED_UP_DOWN = 0.2  # soft bounds with up_down = 0.2 → w◇ = 0.2 for the zero-shift ablation
RECORD_EVERY = 50
FINAL_FRACTION = 0.1  # "final distance" = mean over the last 10 % of recorded points (SGD noise)


@dataclass(frozen=True)
class LeastSquares:
    x: np.ndarray  # (n, d_in)
    y: np.ndarray  # (n, d_out)
    w_opt: np.ndarray  # (d_out, d_in), exact minimiser of the sampled loss

    def grad(self, w: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Minibatch gradient of ``mean ||w·x − y||²/2`` over rows ``idx``."""
        xb, yb = self.x[idx], self.y[idx]
        return (xb @ w.T - yb).T @ xb / len(idx)


def make_problem(seed: int) -> LeastSquares:
    rng = np.random.default_rng([seed, 0])
    x = rng.standard_normal((N_SAMPLES, D_IN))
    w_star = rng.uniform(-W_STAR_RANGE, W_STAR_RANGE, (D_OUT, D_IN))
    y = x @ w_star.T + LABEL_NOISE * rng.standard_normal((N_SAMPLES, D_OUT))
    w_opt = np.linalg.lstsq(x, y, rcond=None)[0].T
    return LeastSquares(x, y, w_opt)


class Algorithm(StrEnum):
    """The optimisers compared (``chipsim.analog_training``)."""

    DIGITAL = "digital"
    ANALOG_SGD = "analog_sgd"
    RESIDUAL_V1 = "rl_v1"
    RESIDUAL_V2 = "rl_v2"

    @property
    def label(self) -> str:
        return {"digital": "digital SGD", "analog_sgd": "analog SGD", "rl_v1": "residual v1", "rl_v2": "residual v2"}[
            self.value
        ]


@dataclass(frozen=True)
class RunSpec:
    algo: Algorithm
    asymmetry: float = STRONG
    lr: float = LR  # learning rate of the gradient step
    read_noise: float = 0.0
    zero_shift: bool = True
    up_down: float = 0.0

    @property
    def label(self) -> str:
        parts = [self.algo.label]
        if self.read_noise:
            parts.append(f"read σ={self.read_noise:g}")
        if self.up_down:
            parts.append(f"w◇={device_for(self).response.symmetric_point():.2g}")
        if not self.zero_shift:
            parts.append("no zero shift")
        return ", ".join(parts)


def device_for(spec: RunSpec) -> PulsedDevice:
    if spec.asymmetry == 0.0:
        response = LinearStep(up_down=spec.up_down)
    else:
        response = SoftBounds(1.0 / spec.asymmetry, 1.0 / spec.asymmetry, spec.up_down)
    return PulsedDevice(response, dw_min=DW_MIN, dw_min_std=DW_MIN_STD)


def build_optimizer(spec: RunSpec, w0: np.ndarray) -> AnalogOptimizer:
    if spec.algo == Algorithm.DIGITAL:
        return DigitalSGD(w0, spec.lr)
    device = device_for(spec)
    if spec.algo == Algorithm.ANALOG_SGD:
        return AnalogSGD(device, w0, spec.lr)
    config = ResidualConfig(
        lr=spec.lr,
        gamma=GAMMA,
        transfer_every=TRANSFER_EVERY,
        transfer_lr=spec.lr / 8,
        beta=spec.lr / 8,
        read_noise_std=spec.read_noise,
        zero_shift=spec.zero_shift,
    )
    cls = ResidualLearning if spec.algo == Algorithm.RESIDUAL_V1 else ResidualLearningV2
    return cls(device, device, w0, config)


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    steps: np.ndarray
    distance: np.ndarray
    pulses: int
    seconds: float

    @property
    def n_steps(self) -> int:
        return int(self.steps[-1])

    def final(self) -> float:
        k = max(1, int(len(self.distance) * FINAL_FRACTION))
        return float(self.distance[-k:].mean())

    def at_quarter(self) -> float:
        """Mean distance over the same-width window ending at a quarter of the run: comparing it
        with :meth:`final` shows whether 4× more steps still help."""
        k = max(1, int(len(self.distance) * FINAL_FRACTION))
        end = int(np.searchsorted(self.steps, self.n_steps // 4, side="right"))
        return float(self.distance[max(0, end - k) : end].mean())


def steps_for(spec: RunSpec, steps: int) -> int:
    """Runs with a smaller learning rate get proportionally more steps, so every run covers the
    same 'learning-rate × steps' horizon (a smaller lr is not penalised for converging slower)."""
    return int(round(steps * max(1.0, LR / spec.lr)))


def run_one(spec: RunSpec, problem: LeastSquares, steps: int, seed: int, index: int) -> RunResult:
    # Common random numbers: every run sees the same minibatch sequence; device noise differs.
    batch_rng = np.random.default_rng([seed, 1])
    device_rng = np.random.default_rng([seed, 2, index])
    opt = build_optimizer(spec, np.zeros_like(problem.w_opt))
    rec_steps, dist = [0], [float(np.linalg.norm(opt.weights() - problem.w_opt))]
    t0 = time.perf_counter()
    for k in tqdm(range(1, steps_for(spec, steps) + 1), desc=spec.label, leave=False, mininterval=0.5):
        idx = batch_rng.integers(0, len(problem.x), BATCH)
        opt.step(problem.grad(opt.weights(), idx), device_rng)
        if k % RECORD_EVERY == 0:
            rec_steps.append(k)
            dist.append(float(np.linalg.norm(opt.weights() - problem.w_opt)))
    return RunResult(spec, np.array(rec_steps), np.array(dist), opt.pulses_used, time.perf_counter() - t0)


def run_specs() -> list[RunSpec]:
    specs = [RunSpec(Algorithm.DIGITAL, 0.0)]
    for a in ASYMMETRIES:
        specs += [RunSpec(Algorithm.ANALOG_SGD, a), RunSpec(Algorithm.RESIDUAL_V1, a)]
    for sigma in READ_NOISES:
        specs += [RunSpec(Algorithm.RESIDUAL_V1, read_noise=sigma), RunSpec(Algorithm.RESIDUAL_V2, read_noise=sigma)]
    specs += [
        RunSpec(Algorithm.ANALOG_SGD, up_down=SHIFTED_UP_DOWN),
        RunSpec(Algorithm.RESIDUAL_V1, up_down=SHIFTED_UP_DOWN),
        RunSpec(Algorithm.RESIDUAL_V1, up_down=SHIFTED_UP_DOWN, zero_shift=False),
    ]
    for lr in LR_SWEEP:
        if lr != LR:
            specs += [
                RunSpec(Algorithm.DIGITAL, 0.0, lr=lr),
                RunSpec(Algorithm.ANALOG_SGD, lr=lr),
                RunSpec(Algorithm.RESIDUAL_V1, lr=lr),
            ]
    return specs
