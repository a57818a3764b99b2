"""The least-squares recalibration study's figure and Markdown report, from its runs
(:mod:`studies.recalibration_least_squares_runs`)."""

from __future__ import annotations

import argparse
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np

from studies.common import pyplot
from studies.recalibration_least_squares_runs import (
    ASYMMETRIES,
    BATCH,
    D_IN,
    D_OUT,
    FINAL_FRACTION,
    GAMMA,
    LABEL_NOISE,
    LR,
    LR_SWEEP,
    N_SAMPLES,
    READ_NOISES,
    RECORD_EVERY,
    SHIFTED_UP_DOWN,
    STRONG,
    TRANSFER_EVERY,
    W_STAR_RANGE,
    Algorithm,
    RunResult,
    RunSpec,
    device_for,
)


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
