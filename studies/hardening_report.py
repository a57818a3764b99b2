"""The hardening report's page and figure (issue #18), drawn from its JSON alone:
:func:`markdown` takes the JSON document and returns the page, so a test re-renders the committed
page from the committed JSON (an edited number fails)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from studies.common import fixed, md_row, significant
from studies.hardening_grid import MODES  # also the order of the arms in tables and plots
from studies.hardening_summary import CHIP_AGE, CHIP_GDC


def _ordered(arms: dict[str, Any]) -> list[str]:
    rank = {m: i for i, m in enumerate(MODES)}
    return sorted(arms, key=lambda k: (k.split("/")[0], rank.get(k.split("/")[1], len(MODES)), k))


def _ci(ci: list[float], fmt=significant) -> str:
    return "–" if any(math.isnan(v) for v in ci) else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _pct(x: float) -> str:
    return fixed(x * 100, 1)


def _pct_ci(ci: list[float]) -> str:
    return "–" if any(math.isnan(v) for v in ci) else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _mu_table(doc: dict[str, Any]) -> list[str]:
    arms = doc["summary"]["arms"]
    lines = [
        md_row(["arch", "training", "seeds", "FP test acc. %", "µ", "95 % CI", "µ per seed [CI] (rmse, R²)"]),
        md_row(["---", "---", "---:", "---:", "---:", "---", "---"]),
    ]
    for key in _ordered(arms):
        a = arms[key]
        per = []
        for s, f in a["fits"].items():
            if "mu" in f:
                per.append(
                    f"s{s}: {significant(f['mu'])} {_ci(f['mu_ci'])} ({fixed(f['rmse'], 3)}, {fixed(f['r2'], 3)})"
                )
            else:
                per.append(f"s{s}: no fit")
        arch, mode = key.split("/")
        lines.append(
            md_row(
                [
                    arch,
                    mode,
                    str(len(a["seeds"])),
                    _pct(a["fp_accuracy"]),
                    significant(a["mu"]),
                    _ci(a["mu_ci"]),
                    "; ".join(per),
                ]
            )
        )
    return lines


def _chip_table(doc: dict[str, Any]) -> list[str]:
    arms = {k: v for k, v in doc["summary"]["arms"].items() if "chip" in v}
    if not arms:
        return ["No chip evaluation in these results."]
    ages = list(next(iter(arms.values()))["chip"][CHIP_GDC])
    lines = []
    for gdc, title in (("gdc_on", "GDC on"), ("gdc_off", "GDC off")):
        lines += [f"**{title}** — accuracy % (mean over training seeds × chips [95 % CI])", ""]
        lines += [md_row(["arch", "training", *ages]), md_row(["---", "---", *["---:"] * len(ages)])]
        for key in _ordered(arms):
            cells = [f"{_pct(c['mean'])} {_pct_ci(c['ci'])}" for c in arms[key]["chip"][gdc].values()]
            lines.append(md_row([*key.split("/"), *cells]))
        lines.append("")
    return lines


def _claims_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        md_row(
            [
                "claim (A more robust than B)",
                "source",
                "A",
                "B",
                "µ_A/µ_B [95 % CI]",
                "verdict",
                f"chip A − B at {CHIP_AGE} (pp) [CI]",
                "on the chip",
            ]
        ),
        md_row(["---", "---", "---", "---", "---", "---", "---", "---"]),
    ]
    for c in doc["summary"]["claims"]:
        ratio = "–" if math.isnan(c["ratio"]) else f"{fixed(c['ratio'], 2)} {_ci(c['ratio_ci'], lambda v: fixed(v, 2))}"
        chip = (
            "–"
            if math.isnan(c.get("chip_diff", math.nan))
            else f"{fixed(c['chip_diff'] * 100, 1)} {_ci([v * 100 for v in c['chip_diff_ci']], lambda v: fixed(v, 1))}"
        )
        lines.append(
            md_row([c["claim"], c["source"], c["a"], c["b"], ratio, f"**{c['verdict']}**", chip, c["chip_verdict"]])
        )
    return lines


def _ranking(doc: dict[str, Any]) -> list[str]:
    lines = []
    for arch, r in doc["summary"]["ranking"].items():
        lines.append(
            f"- `{arch}`: by µ {' > '.join(r['by_mu']) or '–'}; on the chip ({CHIP_AGE}, GDC on) "
            f"{' > '.join(r['by_chip']) or '–'}; Kendall τ = {fixed(r['kendall_tau'], 2)}"
        )
    return lines


def _training_table(doc: dict[str, Any]) -> list[str]:
    """One row per arm: how its runs were trained (from each raw result's ``training`` record;
    results without one, from before it existed, are left out)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in doc["raw"].values():
        if r.get("training"):
            groups.setdefault(f"{r['arch']}/{r['mode']}", []).append(r)
    if not groups:
        return []
    lines = [
        md_row(
            [
                "arch",
                "training",
                "seeds",
                "layers (widths × blocks)",
                "weights",
                "epochs",
                "steps",
                "QAT delay",
                "σ train",
                "train s (mean)",
                "val. acc. % (mean)",
            ]
        ),
        md_row(["---"] * 3 + ["---"] + ["---:"] * 7),
    ]
    for arm in _ordered(groups):
        rs = sorted(groups[arm], key=lambda r: r["seed"])
        t = rs[0]["training"]
        ak = t["arch_kwargs"] or {}
        h = t.get("hardening") or {}
        qat = "qat" in arm.split("/")[1]
        lines.append(
            md_row(
                [
                    *arm.split("/"),
                    ", ".join(str(r["seed"]) for r in rs),
                    f"{ak.get('widths', 'default')} × {ak.get('blocks', 'default')}",
                    str(t["n_weights"]),
                    str(t["epochs"]),
                    str(t["steps"]),
                    fixed(h.get("qat_delay_fraction", 0), 2) if qat else "–",
                    fixed(h.get("train_sigma", 0), 2) if "noisy" in arm else "–",
                    fixed(float(np.mean([r["training"]["train_seconds"] for r in rs])), 0),
                    _pct(float(np.mean([r["training"]["val_fp"] for r in rs]))),
                ]
            )
        )
    return [
        "## Training",
        "",
        "Validation accuracy on the split carved from the training set (the test set is read only by this report). "
        "train s: wall seconds of the training process on the host it ran on; a resumed run counts only its last process.",
        "",
        *lines,
        "",
    ]


def markdown(doc: dict[str, Any]) -> str:
    """The report page for the JSON document ``doc`` (``config`` and ``summary``)."""
    cfg = doc["config"]
    head = [
        "# Hardening study (issue #18): QAT vs noisy training, skip connections, robustness midpoint",
        "",
        *([f"> **{cfg['label']}**", ""] if cfg.get("label") else []),
        f"Generated by `{cfg['command']}` from the training runs in `{cfg['runs']}`; every number below "
        "is recomputed from `hardening.json` (raw sweeps and chip accuracies) by `studies.hardening_summary`.",
        "",
        f"Test images: {cfg['n_images']} (noise sweep), {cfg['chip_images']} (chip). Noise: Gaussian, one "
        f"absolute σ on every crossbar output of the BatchNorm-folded model, {len(cfg['sigmas'])} σ from "
        f"{significant(cfg['sigmas'][0])} to {significant(cfg['sigmas'][-1])} (log grid) × {len(cfg['noise_seeds'])} "
        f"noise seeds; logistic fit in ln σ with chance {cfg['chance']} fixed. Chip: `{cfg['profile']}` profile, "
        f"{cfg['n_chips']} chips per model, ages 1 s … 10 y, GDC on and off (serving path).",
        "",
        *_training_table(doc),
        "## Robustness midpoint µ",
        "",
        "µ: the σ at which accuracy has fallen halfway from its noise-free value to chance; arm µ = geometric "
        "mean over training seeds, its interval a bootstrap over training seeds, noise seeds and test images.",
        "",
        *_mu_table(doc),
        "",
        "![accuracy vs σ and chip accuracy vs age](hardening.png)",
        "",
        "## The aged chip",
        "",
        *_chip_table(doc),
        "## Verdicts",
        "",
        "reproduced: the 95 % interval lies above 1 (µ) or above 0 (chip); reversed: below; otherwise not reproduced.",
        "",
        *_claims_table(doc),
        "",
        "Does the noise-model ranking survive device physics?",
        "",
        *_ranking(doc),
        "",
    ]
    return "\n".join(head)


def plot(doc: dict[str, Any], sweeps: dict[str, Any], path: Path) -> None:
    """Accuracy vs σ (mean over runs of an arm) and chip accuracy vs age (GDC on) per arm."""
    from studies.common import pyplot
    from studies.noise_midpoint import Sweep

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    arms = doc["summary"]["arms"]
    for i, key in enumerate(_ordered(arms)):
        arch, mode = key.split("/")
        runs = [Sweep.from_json(s) for k, s in sweeps.items() if k.startswith(f"{arch}-{mode}-s")]
        style = dict(color=f"C{MODES.index(mode) if mode in MODES else i}", ls="-" if arch == "resnet" else "--")
        if runs:
            acc = np.mean([r.accuracy.mean(axis=1) for r in runs], axis=0)
            ax1.semilogx(runs[0].sigmas, acc * 100, marker=".", label=key, **style)
        if "chip" in arms[key]:
            chip = arms[key]["chip"][CHIP_GDC]
            ax2.plot(range(len(chip)), [c["mean"] * 100 for c in chip.values()], marker="o", label=key, **style)
            ax2.set_xticks(range(len(chip)), list(chip))
    ax1.set(xlabel="activation noise σ", ylabel="test accuracy %", title="seed protocol: accuracy vs σ")
    ax2.set(xlabel="chip age", ylabel="test accuracy %", title=f"aged chip ({doc['config']['profile']}, GDC on)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
