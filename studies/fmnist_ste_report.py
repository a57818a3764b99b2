"""Statistics and page of the Fashion-MNIST STE study (:mod:`studies.fmnist_ste`): every number of
the page is computed here from the runs' raw results, stored in ``results.json`` and printed from
it (``tests/test_fmnist_ste.py`` re-derives each from the runs).

Costs (seconds per step, memory) are compared per seed: seed ``s`` of both modes ran one after
the other (interleaved), so the ratio through-noise / STE of seed ``s`` is paired. With ``S`` seeds
the report gives the per-seed ratios, their median and range, and the exact two-sided sign test
of "ratio = 1": p = 2·2^-S when every seed lies on one side (else p ≥ 2·(S+1)·2^-S), so a cost
difference needs ≥ 6 seeds on one side to be significant at 5 % (3 seeds: p = 0.25 at best).
Chip accuracy: the paired hierarchical bootstrap of :mod:`studies.fmnist_stats` over seeds, chip
instances and test images (chip ``k`` is programming seed ``k`` for both modes).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from models.torch_chip import GradientMode
from studies.fmnist_stats import chip_mean, draw, fp_mean

MIB = 2**20
#: (key of a run's result, label, factor to the printed unit, digits)
COSTS = (
    ("cpu_s_per_step", "CPU ms/step", 1e3, 1),
    ("wall_s_per_step", "wall ms/step", 1e3, 1),
    ("rss_peak_increase_bytes", "peak RSS increase (MiB)", 1 / MIB, 1),
    ("autograd_saved_bytes", "autograd-saved (MiB/step)", 1 / MIB, 2),
)
LABELS = {GradientMode.STE: "extended STE", GradientMode.THROUGH_NOISE: "through the noise model"}


def sign_test_p(diffs: list[float]) -> float:
    """Exact two-sided sign test of median 0 for paired differences (ties dropped)."""
    d = [x for x in diffs if x != 0]
    n, k = len(d), sum(x > 0 for x in d)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _spread(values: list[float], factor: float, digits: int) -> dict:
    return {
        "median": round(statistics.median(values) * factor, digits),
        "min": round(min(values) * factor, digits),
        "max": round(max(values) * factor, digits),
    }


def _by_mode(runs: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        out.setdefault(r["mode"], {})[r["seed"]] = r
    return out


def analyse(runs: list[dict], ages: list[str], n_boot: int, seed: int = 0) -> dict:
    """Per-mode spreads, paired cost ratios and accuracy gaps of ``runs`` (each with ``bits``:
    per-image correctness, ``fp`` (N,) and per age (K, N), as bool arrays)."""
    ste, thr = str(GradientMode.STE), str(GradientMode.THROUGH_NOISE)
    by = _by_mode(runs)
    seeds = sorted(set(by[ste]) & set(by[thr]))
    per_mode = {}
    for mode in (ste, thr):
        rs = [by[mode][s] for s in seeds]
        row = {k: _spread([r[k] for r in rs], f, d) for k, _, f, d in COSTS}
        row["fp"] = _spread([r["fp_accuracy"] for r in rs], 100, 2)
        for age in ages:
            row[age] = _spread([float(np.mean(r["chip_accuracy"][age])) for r in rs], 100, 2)
        per_mode[mode] = row
    ratios = {}
    for k, *_ in COSTS:
        per_seed = [by[thr][s][k] / by[ste][s][k] for s in seeds]
        p = sign_test_p([x - 1 for x in per_seed])
        ratios[k] = {
            "per_seed": [round(x, 3) for x in per_seed],
            **_spread(per_seed, 1, 3),
            "sign_p": round(p, 4),
            "significant": p < 0.05,
        }
    rng = np.random.default_rng(seed)
    n_chips, n_images = np.asarray(runs[0]["bits"][ages[0]]).shape
    rep = draw(n_images, n_chips, seeds, n_boot, rng)
    gaps = {}
    for age in ages:
        est = {m: chip_mean(np.stack([by[m][s]["bits"][age] for s in seeds]), seeds, rep) for m in (ste, thr)}
        gaps[age] = (est[thr] - est[ste]).summary()
    fp = {m: fp_mean(np.stack([by[m][s]["bits"]["fp"] for s in seeds]), seeds, rep) for m in (ste, thr)}
    gaps["fp"] = (fp[thr] - fp[ste]).summary()
    return {"seeds": seeds, "per_mode": per_mode, "ratios": ratios, "gaps": gaps}


# --------------------------------------------------------------------------- the page
def _fmt(s: dict, digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def _header(meta: dict) -> list[str]:
    m = meta
    epochs = m["max_steps"] / m["steps_per_epoch"]
    full_steps = m["full_epochs"] * m["steps_per_epoch"]
    if m["max_steps"] >= full_steps:
        length = (
            f"**Full length.** Each run fine-tunes the plain `{m['arch']}` model (`{m['teacher']}`) "
            f"with HWA for the recipe's full {m['full_epochs']} epochs ({full_steps} optimiser steps of "
            f"{m['batch_size']} images, {m['train_images']} training images): the accuracies are those "
            f"of finished HWA models. The noise ramps up linearly over the first {m['ramp_steps']} steps."
        )
    else:
        length = (
            f"**Reduced length.** Each run fine-tunes the plain `{m['arch']}` model (`{m['teacher']}`) "
            f"with HWA for {m['max_steps']} optimiser steps of {m['batch_size']} images, that is "
            f"{epochs:.2f} epochs of the {m['train_images']} training images, instead of the recipe's full "
            f"{m['full_epochs']} epochs ({full_steps} steps). The costs per "
            "step are those of the full run; the accuracies are those of a model stopped early, not of a "
            "finished HWA model. The noise ramps up linearly over the recipe's first "
            f"{m['ramp_steps']} steps: at the last step it is at "
            f"{min(1.0, m['max_steps'] / max(1, m['ramp_steps'])):.0%} of full strength."
        )
    return [
        "# Extended STE vs gradients through the noise model: the Fashion-MNIST ResNet",
        "",
        length,
        "",
        f"Seeds {', '.join(str(s) for s in m['seeds'])} (HWA seed: data order and chip draws; the "
        "plain start is the same), one fresh process per run; within one study process the runs are "
        "interleaved (STE s0, through-noise s0, STE s1, …), and study processes for other seeds or modes "
        "(`--seeds`, `--modes`) may run beside it on the same cache. Chip accuracy: "
        f"{m['chips']} `{m['profile']}` chips per model (programming seed k), GDC on, on the first "
        f"{m['images']} Fashion-MNIST test images (reported only; nothing is chosen on them), "
        "through `chipsim.compiler.program_onnx` + `chipsim.runtime.ChipRuntime`.",
        "",
        f"Command: `{m['command']}`. Absolute times are from a shared, loaded host: indicative only; "
        "the ratios are paired per seed.",
        "",
    ]


def _resumed_note(runs: list[dict]) -> str:
    """A sentence naming the runs that were trained in more than one process (resumed), or ""."""
    resumed = [f"{r['mode']} s{r['seed']} ({r['segments']} processes)" for r in runs if r.get("segments", 1) > 1]
    if not resumed:
        return ""
    return (
        " Resumed after an interruption: " + ", ".join(resumed) + "; their time per step pools the "
        "timed steps of every process, their peak RSS increase is the largest process's."
    )


def render_markdown(res: dict) -> str:
    """The page (README.md) from ``results.json``'s content."""
    meta, a = res["meta"], res["analysis"]
    modes = list(a["per_mode"])
    lines = _header(meta)
    lines += [
        "## Cost and accuracy per gradient mode (median [min, max] over seeds)",
        "",
        "| | " + " | ".join(LABELS[GradientMode(m)] + f" (`{m}`)" for m in modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    rows = [(k, label, d) for k, label, _, d in COSTS] + [("fp", "FP accuracy (%)", 2)]
    rows += [(age, f"chip accuracy at {age}, GDC on (%, mean over chips)", 2) for age in meta["ages"]]
    for k, label, d in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(a["per_mode"][m][k], d) for m in modes) + " |")
    lines += [
        "",
        "## Cost ratio through-noise / STE, paired per seed",
        "",
        "| | per seed | median [min, max] | sign test p | significant |",
        "|---|---|---|---|---|",
    ]
    for k, label, _, _ in COSTS:
        r = a["ratios"][k]
        per = ", ".join(f"{x:.3f}" for x in r["per_seed"])
        sig = "yes" if r["significant"] else "no"
        lines.append(f"| {label} | {per} | {_fmt(r, 3)} | {r['sign_p']:.4f} | {sig} |")
    lines += [
        "",
        "Time per step: median over the timed steps of a run of the interval between consecutive "
        f"optimiser-step ends (the first {meta['warmup_steps']} steps and any interval spanning an "
        "epoch's end left out); CPU = `time.process_time`, wall = `time.perf_counter`. Peak RSS "
        "increase: `studies.gradient_cost.RssSampler` over the whole training call (which starts with the "
        "DAC-range calibration forward of 1 024 training images, the same in both modes). Autograd-saved: bytes kept "
        "for backward by one training forward (saved-tensor hooks, storage-deduplicated). "
        "Significant: exact two-sided sign test over seeds, p < 0.05." + _resumed_note(res["runs"]),
        "",
        "## Accuracy difference through-noise − STE (pp, 95 % paired bootstrap interval)",
        "",
        "| | difference | 95 % interval | significant |",
        "|---|---|---|---|",
    ]
    for key in [*meta["ages"], "fp"]:
        g = a["gaps"][key]
        label = "FP accuracy" if key == "fp" else f"chip accuracy at {key}, GDC on"
        sig = "yes" if g["significant"] else "no"
        lines.append(f"| {label} | {g['mean']:+.2f} | [{g['lo']:+.2f}, {g['hi']:+.2f}] | {sig} |")
    lines += [
        "",
        f"Intervals: {meta['n_boot']} replicates of `studies.fmnist_stats` (seeds, chips and test "
        "images resampled once per replicate for both modes); significant when the interval "
        "excludes 0.",
        "",
    ]
    return "\n".join(lines)
