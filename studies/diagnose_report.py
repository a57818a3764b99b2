"""The diagnose study's report: README.md and diagnose.png rendered from its results (``results.json``).

Every sentence with a number is generated from the results, so a re-run or ``--render`` updates
the text with the numbers.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from studies import gradient_diagnostics
from studies.common import fixed, pyplot, significant
from studies.perturbations import CLASSES


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    keys = list(results["sweeps"])
    rules = results["config"]["rules"]
    fig, axes = plt.subplots(4, len(keys), figsize=(3.3 * len(keys), 11), squeeze=False, sharey="row")
    for j, k in enumerate(keys):
        xs = np.arange(len(results["sweeps"][k]))
        labels = results["strength_labels"][k]
        diag = results["diagnostics"][k]
        s_train = results["train_strength"][k]
        i_train = results["sweeps"][k].index(s_train)
        col = axes[:, j]
        col[0].plot(xs, [d["cos_ste"] for d in diag], "o-", label="STE (HWA)")
        col[0].plot(xs, [d["cos_through"] for d in diag], "s--", label="through chip")
        col[0].axhline(rules["cos_min"], color="grey", lw=0.8, ls=":")
        col[0].set_title(f"{CLASSES[k].label}")
        col[1].semilogy(xs, [max(d["relvar_ste"], 1e-6) for d in diag], "o-", label="STE (HWA)")
        col[1].semilogy(xs, [max(min(d["relvar_through"], 1e6), 1e-6) for d in diag], "s--", label="through chip")
        col[1].axhline(rules["relvar_max"], color="grey", lw=0.8, ls=":")
        col[1].axhline(
            results["minibatch_relvar"]["checkpoint"], color="tab:green", lw=0.8, ls="-.", label="SGD minibatch"
        )
        col[2].plot(xs, [d["sens_weights"] for d in diag], "o-", label="weights")
        col[2].plot(xs, [d["sens_outputs"] for d in diag], "s--", label="output units")
        col[2].axhline(rules["sens_min"], color="grey", lw=0.8, ls=":")
        col[2].set_ylim(-0.05, 1.05)
        col[3].plot(xs, [r["test"] for r in results["plain_accuracy"][k]], "o-", label="plain model")
        col[3].plot(xs, results["hwa_accuracy"][k][k], "s-", label=f"HWA at {labels[i_train]}")
        if "none" in results["hwa_accuracy"]:
            col[3].plot(xs, results["hwa_accuracy"]["none"][k], "^:", color="grey", label="HWA recipe, ideal chip")
        col[3].axhline(results["acc_clean_test"], color="k", lw=0.8, ls=":", label="clean")
        col[3].set_ylim(0, 1.02)
        for ax in col:
            ax.axvline(i_train, color="tab:red", lw=0.8, alpha=0.4)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            ax.grid(alpha=0.3)
        col[3].set_xlabel(CLASSES[k].knob, fontsize=7)
    for i, name in enumerate(
        ("cosine to clean grad.", "rel. gradient variance", "sensitive fraction", "test accuracy")
    ):
        axes[i, 0].set_ylabel(name)
        axes[i, 0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{results['arch']}: gradient diagnostics vs HWA outcome per perturbation class "
        f"(K = {results['config']['draws']} chips; red line: HWA training strength)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _borderline(row: dict, rules: dict, margin: float = 0.05) -> bool:
    """True if every failing diagnostic misses its threshold by less than ``margin`` (relative)."""
    checks = [
        (row["cos_ste"], rules["cos_min"], True),
        (row["relvar_ste"], rules["relvar_max"], False),
        (row["sens_weights"], rules["sens_min"], True),
        (row["sens_outputs"], rules["sens_min"], True),
    ]
    failing = [(v, t, ge) for v, t, ge in checks if not (v >= t if ge else v <= t)]
    return bool(failing) and all(abs(v - t) < margin * t for v, t, _ in failing)


def notes(results: dict) -> list[str]:
    """One generated sentence per class: what the diagnostics and the training run say."""
    out, absorb, fix, disputed, none = [], [], [], [], []
    for r in results["table"]:
        head = f"- **{r['label']}** at {r['strength_label']}: "
        diag = (
            "the diagnostics pass"
            if r["diagnostics_compensable"]
            else "the diagnostics fail (" + "; ".join(r["diagnostics_reasons"]) + ")"
        )
        if not r["diagnostics_compensable"] and _borderline(r, results["config"]["rules"]):
            diag += ", narrowly: every failing metric is within 5 % of its threshold"
        spec = r["acc_clean"] - r["acc_hwa_clean"]
        if r["outcome"] == "no gap":
            out.append(
                head + f"{diag}; the plain model loses less than {100 * results['config']['rules']['min_gap']:g} pp "
                "even here, so there is nothing to compensate at the swept strengths."
            )
            none.append(r["label"])
            continue
        text = f"{diag}; HWA recovers {100 * r['recovered']:.0f} % of the {100 * r['gap']:.1f} pp gap"
        if not math.isnan(r["recovered_control"]):
            text += f" (recipe alone: {100 * r['recovered_control']:.0f} %)"
        if spec > 0.01:
            text += (
                f", but the HWA model loses {100 * spec:.1f} pp of clean accuracy ({r['acc_hwa_clean']:.3f}): "
                "it fits this distortion at this strength rather than becoming robust to it"
            )
        text += "." if r["agree"] else " — **disagreement**."
        out.append(head + text)
        if not r["agree"]:
            disputed.append(r["label"])
        elif r["diagnostics_compensable"]:
            absorb.append(r["label"])
        else:
            fix.append(r["label"])
    summary = [
        f"HWA absorbs (both agree): {', '.join(absorb) or 'none'}; needs the hardware fixed (both agree): "
        f"{', '.join(fix) or 'none'}; disagreement: {', '.join(disputed) or 'none'}; no gap at the swept "
        f"strengths: {', '.join(none) or 'none'}.",
        "",
    ]
    return summary + out


def markdown(results: dict, command: str) -> str:
    """The study's README.md from its results (``results.json``) and the command that made them."""
    return "\n".join(_head(results, command) + _method(results) + _sweep_tables(results) + _caveats(results))


def _head(results: dict, command: str) -> list[str]:
    """Title, set-up and the result table with its reading."""
    cfg = results["config"]
    lines = [
        "# Which non-idealities can hardware-aware training compensate?",
        "",
        "Generated by `studies/diagnose.py`; do not edit by hand.",
        "",
        f"- Command: `{command}`",
        f"- Runtime: {results['seconds'] / 60:.1f} min on {platform.machine()} ({os.cpu_count()} cores, shared), "
        f"{results['threads']} torch thread(s) "
        f"(plain training {results['timings']['plain_training_s']:.0f} s, diagnostics "
        f"{results['timings']['diagnostics_s'] + results['timings']['diagnostics_trained_s']:.0f} s, plain evaluation {results['timings']['evaluate_plain_s']:.0f} s, "
        f"HWA runs {results['timings']['hwa_training_s']:.0f} s); Python {platform.python_version()}, torch {torch.__version__}",
        f"- Model: `{results['arch']}` trained plainly ({cfg['plain_epochs']} epochs, `{results['arch']}-plain` recipe, "
        f"seed {cfg['seed']}), clean test accuracy {results['acc_clean_test']:.4f} (digits, 450 test images). "
        f"Diagnostics run on the same recipe trained for {cfg['diag_epochs']} epochs (training accuracy "
        f"{results['acc_checkpoint_train']:.2f}), where the clean gradient carries signal (see *Why a checkpoint*).",
        f'- Chips: for each class, `chipsim.get_profile("ideal", gdc="off", **fields)` with only that class on; '
        f"read out at 1 y (matters for read noise and drift). Accuracies are from the torch emulation HWA trains with "
        f"(`models.hwa`, the chip's own formulas), mean over {cfg['n_chips']} chip instances (same draws for every model).",
        f"- Diagnostics on a fixed batch of {cfg['batch']} training images, K = {cfg['draws']} chip instances per point, "
        f"loss = cross-entropy, gradients w.r.t. the analog weights of all layers.",
        f"- HWA check: the `{results['arch']}-hwa` recipe (`models.train.train`: starts from the plain model, distils from it, "
        f"noise ramp, per-channel weight clipping, learned DAC ranges), {cfg['hwa_epochs']} epochs, "
        f"{cfg['hwa_seeds']} seed(s), under one class alone at the *training strength*: the weakest sweep point at which "
        f"the plain model loses ≥ {100 * cfg['pick_gap']:g} pp on the validation split (else the strongest).",
        "",
        "## Result",
        "",
        "| class | trained at | cos (STE) | rel. var (STE) | sens. weights | sens. outputs | diagnostics say | "
        "clean | plain under class | HWA under class | recipe-only | gap recovered | training says | agree | HWA model, clean |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results["table"]:
        verdict = (
            "compensable"
            if r["diagnostics_compensable"]
            else "fix hardware (" + "; ".join(r["diagnostics_reasons"]) + ")"
        )
        outcome = {"closes": "closes", "open": "does not close", "no gap": "no gap to close"}[r["outcome"]]
        agree = {True: "yes", False: "**NO**", None: "–"}[r["agree"]]
        lines.append(
            f"| {r['label']} | {r['strength_label']} | {fixed(r['cos_ste'])} | {significant(r['relvar_ste'])} | {fixed(r['sens_weights'])} | "
            f"{fixed(r['sens_outputs'])} | {verdict} | {fixed(r['acc_clean'], 3)} | {fixed(r['acc_plain'], 3)} | {fixed(r['acc_hwa'], 3)} | "
            f"{fixed(r['acc_control'], 3)} | {fixed(100 * r['recovered'], 0) + ' %' if not math.isnan(r['recovered']) else '–'} | "
            f"{outcome} | {agree} | {fixed(r['acc_hwa_clean'], 3)} |"
        )
    return lines + [
        "",
        "![diagnostics](diagnose.png)",
        "",
        "*recipe-only*: the same HWA recipe trained on an ideal chip (no perturbation), evaluated under the class: "
        "what weight clipping, distillation and more epochs buy without training under the perturbation. "
        "*HWA model, clean*: the model trained under the class, evaluated without any perturbation (a drop below "
        "*clean* means it learned this particular distortion rather than robustness to it).",
        "",
        "## Reading the table",
        "",
        *notes(results),
        "",
    ]


def _method(results: dict) -> list[str]:
    """The decision rules and the definition of every metric."""
    cfg, rules = results["config"], results["config"]["rules"]
    return [
        "## Rules",
        "",
        f"- **Diagnostics say compensable** iff, at the training strength, cos(STE) ≥ {rules['cos_min']:g}, "
        f"relative variance (STE) ≤ {rules['relvar_max']:g} and both sensitivities ≥ {rules['sens_min']:g}.",
        f"- **Training closes the gap** iff HWA recovers ≥ {100 * rules['close_frac']:g} % of the gap: "
        f"(acc_HWA − acc_plain)/(acc_clean − acc_plain) ≥ {rules['close_frac']:g}, all under the class except acc_clean "
        f"(plain model, no perturbation), test split. A gap below {100 * rules['min_gap']:g} pp is *no gap*: nothing to "
        "predict, no agreement mark.",
        "- **agree** compares the two; **NO** marks a class where diagnostics and training disagree.",
        "- The thresholds were fixed before the runs: cos 0.9 keeps the mean update within ~25° of the clean one; "
        "rel. var 1 means a single chip's gradient carries at least as much signal as noise (plain SGD's own "
        "minibatch noise is of that order, see below); 0.5 means at least half of the gradient paths are alive.",
        "",
        "## Metrics",
        "",
        "Two gradients per chip instance (the same random draws for both):",
        "",
        "- **STE**: exactly the gradient HWA trains with (`models.hwa`, extended straight-through estimator): the noisy "
        "forward's value, the clean layer's gradient at the noisy activations. The perturbation itself is invisible to "
        "the backward pass, so this gradient cannot show degeneracy.",
        "- **through**: autograd through the chip's own perturbation model (`models.torch_chip.GradientMode.THROUGH_CHIP`: "
        "chipsim's device and periphery formulas on torch, value-identical to the trainer's noisy forward): stuck devices "
        "pass nothing, the DAC passes gradient only inside ±r, the ADC passes its derivative *in expectation over its own "
        "output noise* (`models.torch_chip.adc_expected_derivative`: ≈ 1 on a fine grid, ≈ 0 in the zero bin and in saturation, "
        "spikes at the thresholds of a coarse grid), drift and programming noise scale it. Noise amplitudes and the "
        "digital column scales (fixed at programming) are held constant.",
        "",
        "- **cos**: cosine between the mean of the K gradients and the clean gradient (consistency). Uses STE.",
        f"- **rel. var**: Σ_p Var_k(g_kp) / ‖mean_k g_k‖² (bounded variance). Uses STE. For scale: the clean gradient's "
        f"relative variance across minibatches of 64 (plain SGD's own noise) is {results['minibatch_relvar']['checkpoint']:.2g} "
        f"at the checkpoint.",
        f"- **sens. weights**: fraction of weights with an informative clean gradient (|g| > {cfg['tau']:g}·RMS of the "
        f"layer's clean gradient) whose *through* gradient is informative in one chip instance (|g| > {cfg['tau']:g}·RMS "
        "of that instance's layer gradient: a uniform rescaling, as drift without GDC produces, loses nothing; weights "
        "zeroed relative to the rest do), averaged over instances (a device stuck on a fraction p of chips counts 1 − p).",
        f"- **sens. outputs**: fraction of analog output units (every MVM output of every layer and sample) whose expected "
        f"ADC derivative is ≥ {cfg['gate_pass']:g}, mean over layers (1 where the class has no ADC).",
        f"- K = {cfg['draws']}: the mean's squared norm carries an extra tr(Σ)/K, so zero-mean noise of relative variance v "
        "gives cos ≈ 1/√(1 + v/K); values are reported as measured. A relative variance of 0 means every chip instance "
        "gives the same gradient (IR drop is deterministic; a fully dead ADC quantises the noise away).",
        "",
    ]


def _sweep_tables(results: dict) -> list[str]:
    """Every sweep point, and the diagnostics at the converged model."""
    rules = results["config"]["rules"]
    lines = [
        "## All sweep points",
        "",
        "| class | strength | cos STE | cos through | rel. var STE | rel. var through | sens. weights | sens. outputs | "
        "diagnostics | plain acc. | HWA acc. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for k in results["sweeps"]:
        for i, d in enumerate(results["diagnostics"][k]):
            ok, _ = gradient_diagnostics.diagnostic_verdict(
                d["cos_ste"], d["relvar_ste"], d["sens_weights"], d["sens_outputs"], gradient_diagnostics.Rules(**rules)
            )
            mark = " ◀" if d["strength"] == results["train_strength"][k] else ""
            lines.append(
                f"| {CLASSES[k].label} | {results['strength_labels'][k][i]}{mark} | {fixed(d['cos_ste'])} | {fixed(d['cos_through'])} | "
                f"{significant(d['relvar_ste'])} | {significant(d['relvar_through'])} | {fixed(d['sens_weights'])} | {fixed(d['sens_outputs'])} | "
                f"{'compensable' if ok else 'fix hardware'} | {fixed(results['plain_accuracy'][k][i]['test'], 3)} | "
                f"{fixed(results['hwa_accuracy'][k][k][i], 3)} |"
            )
    lines += [
        "",
        "◀ = training strength. *HWA acc.*: the model trained under the class at ◀, evaluated at every "
        "strength of its class.",
        "",
        "## Why a checkpoint",
        "",
        "Consistency is about the direction training moves in, so it is measured where the clean gradient has one. "
        f"At the converged model the clean gradient is close to zero: its relative variance across minibatches of "
        f"64 is {results['minibatch_relvar']['trained']:.2g} (vs {results['minibatch_relvar']['checkpoint']:.2g} at "
        "the checkpoint), and any systematic effect of a perturbation (e.g. the curvature term that noise adds to "
        "the expected loss, which is what HWA exploits) dominates the cosine. For reference, the same diagnostics "
        "at the converged model, at the training strengths:",
        "",
        "| class | strength | cos STE | rel. var STE | sens. weights | sens. outputs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for k in results["sweeps"]:
        d = results["diagnostics_trained"][k]
        lines.append(
            f"| {CLASSES[k].label} | {CLASSES[k].fmt(d['strength'])} | {fixed(d['cos_ste'])} | {significant(d['relvar_ste'])} | "
            f"{fixed(d['sens_weights'])} | {fixed(d['sens_outputs'])} |"
        )
    lines += ["", "## Sweeps", ""]
    for k in results["sweeps"]:
        lines.append(
            f"- **{CLASSES[k].label}**: {results['knobs'][k]}; strengths {', '.join(results['strength_labels'][k])}."
        )
    return lines


def _caveats(results: dict) -> list[str]:
    cfg = results["config"]
    return [
        "",
        "## Caveats",
        "",
        "- One small model on one small dataset; the sweeps' strong ends are far beyond the published chip "
        "(×1, 0.1 % faults, 8-bit ADC), and which strength gets trained is decided by the 5-pp rule, not by "
        "what a real chip shows.",
        "- Each HWA run trains at one strength and, for read noise and drift, one age (1 y, GDC off). "
        '"Closes" is judged at that point; the *HWA acc.* column shows what the model does elsewhere in its '
        "class, and *HWA model, clean* what it gives up without the perturbation.",
        f"- The diagnostics use the plain recipe's {cfg['diag_epochs']}-epoch checkpoint, the HWA runs start from the converged "
        "model: the diagnostics describe the gradient field of the class, not one particular fine-tuning run.",
        "- The *through* gradient's ADC term is a modelling choice (the derivative of the expected ADC output "
        "over the noise in front of it); without noise a quantiser's derivative is zero almost everywhere and "
        "any non-zero surrogate is a choice too.",
        "- Accuracies come from the torch emulation HWA trains with, not from the chipsim ONNX runtime that "
        "serves chips; both evaluate the same formulas.",
        "",
        "Per-layer sensitivities (layers: "
        + ", ".join(f"`{n}`" for n in results["layers"])
        + ") and every number above are in `results.json`.",
        "",
    ]


def write_report(results: dict, out: Path, command: str) -> None:
    """README.md, diagnose.png and results.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "diagnose.png")
    (out / "README.md").write_text(markdown(results, command))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
