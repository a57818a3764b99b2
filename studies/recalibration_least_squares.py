"""Least-squares study of on-chip recalibration: analog SGD vs residual learning on pulsed devices.

Regenerates ``reports/recalibration/least_squares.md`` and ``least_squares.png``::

    python -m studies.recalibration_least_squares [--seed 0] [--steps 20000] [--out DIR | --replace]

Problem: ``Y = X·W*ᵀ + noise`` with fixed seed, ``W*`` inside the device range; minibatch SGD on
``loss = ||W·x − y||² / 2`` (per-sample mean). The label noise makes minibatch gradients noisy at
the optimum, which is exactly what lets the asymmetric drift ``E|Δ|·G(w)`` of a pulsed device bias
analog SGD (Wu et al. 2025, arXiv:2502.06309). Distances are measured to the exact least-squares
optimum ``W_opt`` of the sampled data (``numpy.linalg.lstsq``), so zero is reachable.

Devices: soft bounds (Gokmen & Haensch 2020) with ``tau_max = tau_min = 1/a``; ``a`` is the
asymmetry (``G(w) = a·w``), ``a = 0`` is the ideal symmetric linear device. All algorithms are in
``chipsim.analog_training``; this file only sets up runs, plots and writes the report.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

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
from models import outputs
from studies.common import pyplot

DEFAULT_OUT = outputs.REPO / "reports" / "recalibration"

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


# --------------------------------------------------------------------------- outputs


def _find(results: list[RunResult], **fields: object) -> RunResult:
    base = RunSpec(Algorithm(fields.pop("algo")))
    want = replace(base, **fields)
    return next(r for r in results if r.spec == want)


def plot(results: list[RunResult], path: Path) -> None:
    plt = pyplot()
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(ASYMMETRIES)))

    def curve(ax, r: RunResult, **kw: object) -> None:
        # Log x from the first record: the plateau over decades of steps is the point.
        ax.plot(r.steps[1:], r.distance[1:], lw=1, **kw)

    ax = axes[0]
    curve(ax, _find(results, algo=Algorithm.DIGITAL, asymmetry=0.0), color="black", label="digital SGD")
    for a, c in zip(ASYMMETRIES, colors):
        curve(ax, _find(results, algo=Algorithm.ANALOG_SGD, asymmetry=a), color=c, label=f"analog SGD, a={a:g}")
        curve(
            ax, _find(results, algo=Algorithm.RESIDUAL_V1, asymmetry=a), color=c, ls="--", label=f"residual v1, a={a:g}"
        )
    ax.set_title(f"(a) asymmetry sweep, lr={LR:g}")

    ax = axes[1]
    curve(ax, _find(results, algo=Algorithm.DIGITAL, asymmetry=0.0), color="black", label="digital SGD")
    curve(ax, _find(results, algo=Algorithm.ANALOG_SGD), color="tab:red", label="analog SGD")
    curve(ax, _find(results, algo=Algorithm.RESIDUAL_V1), color="tab:blue", label="residual v1")
    for sigma, ls in zip(READ_NOISES, ("--", ":")):
        for algo, c in ((Algorithm.RESIDUAL_V1, "tab:blue"), (Algorithm.RESIDUAL_V2, "tab:green")):
            r = _find(results, algo=algo, read_noise=sigma)
            curve(ax, r, color=c, ls=ls, label=r.spec.label)
    r = _find(results, algo=Algorithm.RESIDUAL_V1, up_down=SHIFTED_UP_DOWN, zero_shift=False)
    curve(ax, r, color="tab:orange", label=r.spec.label)
    ax.set_title(f"(b) soft bounds a={STRONG:g}: read noise, zero shift")

    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("‖W̄ − W_opt‖_F")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if ax is axes[0] else 1, loc="upper right")

    ax = axes[2]
    lrs = np.array(sorted(LR_SWEEP))
    for algo, c in (
        (Algorithm.DIGITAL, "black"),
        (Algorithm.ANALOG_SGD, "tab:red"),
        (Algorithm.RESIDUAL_V1, "tab:blue"),
    ):
        asym = 0.0 if algo == Algorithm.DIGITAL else STRONG
        finals = [_find(results, algo=algo, asymmetry=asym, lr=float(lr)).final() for lr in lrs]
        label = RunSpec(algo).label + ("" if algo == Algorithm.DIGITAL else f", a={STRONG:g}")
        ax.plot(lrs, finals, "o-", color=c, label=label)
    ref = _find(results, algo=Algorithm.DIGITAL, asymmetry=0.0).final()
    ax.plot(lrs, ref * np.sqrt(lrs / LR), color="gray", ls=":", label="∝ √lr (SGD noise floor)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("learning rate (steps ∝ 1/lr)")
    ax.set_ylabel("final ‖W̄ − W_opt‖_F")
    ax.set_title("(c) final distance vs learning rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cmp(x: float, y: float) -> str:
    return "lower than" if x < y else "not lower than"


def reading(results: list[RunResult]) -> list[str]:
    """The conclusions, phrased from the measured numbers (so a regression shows up in the text)."""
    asgd = {a: _find(results, algo=Algorithm.ANALOG_SGD, asymmetry=a) for a in ASYMMETRIES}
    rl = {a: _find(results, algo=Algorithm.RESIDUAL_V1, asymmetry=a).final() for a in ASYMMETRIES}
    dig = _find(results, algo=Algorithm.DIGITAL, asymmetry=0.0).final()
    lrs = sorted(LR_SWEEP)
    sweep = {
        algo: [
            _find(results, algo=algo, asymmetry=0.0 if algo == Algorithm.DIGITAL else STRONG, lr=lr).final()
            for lr in lrs
        ]
        for algo in (Algorithm.DIGITAL, Algorithm.ANALOG_SGD, Algorithm.RESIDUAL_V1)
    }
    finals = [asgd[a].final() for a in ASYMMETRIES]
    grows = all(x < y for x, y in zip(finals, finals[1:]))
    strong = asgd[STRONG]
    out = [
        f"- Analog SGD's final distance {'grows' if grows else 'does NOT grow monotonically'} with the asymmetry: "
        + ", ".join(f"a={a:g}: {asgd[a].final():.3f}" for a in ASYMMETRIES)
        + f" (digital SGD: {dig:.3f}). At a={STRONG:g} it is {strong.at_quarter():.3f} after a quarter of the run "
        f"and {strong.final():.3f} at the end, and over lr = "
        + ", ".join(f"{lr:g}" for lr in lrs)
        + " it is "
        + ", ".join(f"{x:.3f}" for x in sweep[Algorithm.ANALOG_SGD])
        + ": more steps and a smaller learning rate do not remove it (the drift E|Δ|·G(w) scales with the "
        "update itself, so its balance point does not depend on lr).",
        "- Residual learning v1 stays near the digital-SGD noise floor at every asymmetry: "
        + ", ".join(f"a={a:g}: {rl[a]:.3f}" for a in ASYMMETRIES)
        + ". Over the same learning rates it reaches "
        + ", ".join(f"{x:.3f}" for x in sweep[Algorithm.RESIDUAL_V1])
        + " (digital SGD: "
        + ", ".join(f"{x:.3f}" for x in sweep[Algorithm.DIGITAL])
        + "): the remaining distance is SGD noise, which shrinks like √lr, so it goes to zero with the learning "
        "rate. (W̄ = W + γ·P moves by γ·lr·grad on the fast path, which is why v1 can sit below digital SGD at "
        "the same lr.)",
    ]
    for sigma in READ_NOISES:
        v1 = _find(results, algo=Algorithm.RESIDUAL_V1, read_noise=sigma).final()
        v2 = _find(results, algo=Algorithm.RESIDUAL_V2, read_noise=sigma).final()
        out.append(
            f"- Read noise σ={sigma:g} on P: v1 {v1:.3f}, v2 {v2:.3f} — v2 (filtered, thresholded transfer) "
            f"is {_cmp(v2, v1)} v1."
        )
    shifted = _find(results, algo=Algorithm.RESIDUAL_V1, up_down=SHIFTED_UP_DOWN).final()
    unshifted = _find(results, algo=Algorithm.RESIDUAL_V1, up_down=SHIFTED_UP_DOWN, zero_shift=False).final()
    asgd_shifted = _find(results, algo=Algorithm.ANALOG_SGD, up_down=SHIFTED_UP_DOWN).final()
    wsym = device_for(RunSpec(Algorithm.RESIDUAL_V1, up_down=SHIFTED_UP_DOWN)).response.symmetric_point()
    out.append(
        f"- Device with w◇ = {wsym:.2g}: residual v1 with zero shift {shifted:.3f}, without {unshifted:.3f} "
        f"(analog SGD {asgd_shifted:.3f}) — zero shifting P is what lets residual learning remove the bias."
    )
    return out


def markdown(
    results: list[RunResult], args: argparse.Namespace, command: str, seconds: float, w_opt_norm: float
) -> str:
    device = device_for(RunSpec(Algorithm.ANALOG_SGD))
    lines = [
        "# Recalibration study: least squares on pulsed devices",
        "",
        "Generated by `studies/recalibration_least_squares.py`; do not edit by hand.",
        "",
        f"- Command: `{command}`",
        f"- Seed: {args.seed} (data: `default_rng([seed, 0])`; minibatches: `[seed, 1]`, the same sequence in "
        "every run; device noise: `[seed, 2, run index]`)",
        f"- Runtime: {seconds:.0f} s on {platform.machine()} "
        f"(Python {platform.python_version()}, numpy {np.__version__})",
        f"- Problem: X ∈ R^{N_SAMPLES}×{D_IN} standard normal, W* ∈ U(±{W_STAR_RANGE})^{D_OUT}×{D_IN}, "
        f"label noise σ={LABEL_NOISE}, minibatch {BATCH}, start W = 0, {args.steps} steps at lr ≥ {LR:g} and "
        f"{args.steps}·{LR:g}/lr steps below; distance to the exact least-squares optimum, "
        f"‖W_opt‖_F = {w_opt_norm:.3f}",
        "- Device: soft bounds τ_max = τ_min = 1/a (a = asymmetry, G(w) = a·w; a = 0 is the ideal linear device), "
        f"dw_min = {device.dw_min:g} ({device.n_states} states on [{device.w_min:g}, {device.w_max:g}]), "
        f"cycle-to-cycle noise {device.dw_min_std:g}·dw_min ({device.c2c}), ≤ {device.max_pulses} pulses per update",
        f"- Residual learning: W̄ = W + γ·P, γ = {GAMMA}, transfer every {TRANSFER_EVERY} step, "
        "transfer_lr = lr/8 (v1), β = lr/8 (v2), P zero-shifted unless stated",
        f"- 'final' = mean of ‖W̄ − W_opt‖_F over the last {FINAL_FRACTION:.0%} of the run (recorded every "
        f"{RECORD_EVERY} steps; single runs are noisy at the ±10 % level); 'at ¼' = the same-width window ending "
        "at a quarter of the run.",
        "",
        "| run | asymmetry a | lr | steps | dist. at ¼ | final dist. | final / ‖W_opt‖ | pulses / step / weight |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    n_weights = D_IN * D_OUT
    for r in results:
        s = r.spec
        pulses = f"{r.pulses / (r.n_steps * n_weights):.2f}" if s.algo != Algorithm.DIGITAL else "–"
        lines.append(
            f"| {s.label} | {s.asymmetry:g} | {s.lr:g} | {r.n_steps} | {r.at_quarter():.4f} | {r.final():.4f} | "
            f"{r.final() / w_opt_norm:.3f} | {pulses} |"
        )
    lines += ["", "## Reading", "", *reading(results), "", "![distance vs steps](least_squares.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20000)
    outputs.add_arguments(parser, DEFAULT_OUT)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.steps < 4 * RECORD_EVERY:
        parser.error(f"--steps must be at least {4 * RECORD_EVERY}")
    command = " ".join(["python -m studies.recalibration_least_squares", *map(shlex.quote, argv)])

    t0 = time.perf_counter()
    problem = make_problem(args.seed)
    specs = run_specs()
    results = [
        run_one(spec, problem, args.steps, args.seed, i)
        for i, spec in enumerate(tqdm(specs, desc="recalibration runs"))
    ]
    seconds = time.perf_counter() - t0

    args.out = outputs.output_dir(
        "recalibration_least_squares", DEFAULT_OUT, args.out, args.replace, ("least_squares.md", "least_squares.png")
    )
    plot(results, args.out / "least_squares.png")
    md = markdown(results, args, command, seconds, float(np.linalg.norm(problem.w_opt)))
    (args.out / "least_squares.md").write_text(md, encoding="utf-8")
    print(f"wrote {args.out / 'least_squares.md'} and {args.out / 'least_squares.png'} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
