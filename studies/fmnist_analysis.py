"""From cached cells to the study's tables: accuracies, Rasch et al.'s normalised accuracy,
robustness, the gaps between arms with paired bootstrap intervals, and the issue's targets.

Definitions (all accuracies on the Fashion-MNIST test images, chip = serving path):

- **accuracy**: mean over training seeds, chip instances and images.
- **normalised accuracy** (Rasch et al., "Hardware-aware training for large-scale and diverse
  deep learning inference workloads using in-memory computing-based accelerators", Nat. Commun.
  14:5282 (2023)): chip accuracy ÷ the same model's floating-point accuracy (the ONNX file under
  onnxruntime), as ``chipsim.modes.SloMetric.NORMALISED_ACCURACY`` defines it; 1 = no loss.
- **robustness** (issue #12): the model's own FP accuracy minus its chip accuracy (pp); smaller
  is more robust; it does not reward a higher FP accuracy, unlike raw accuracy.
- **gap to FP**: the plain model's FP accuracy (the floating-point reference) minus the chip
  accuracy (pp).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from studies.common import AGE_SCHEDULE
from studies.fmnist_eval import GDC_KEYS, NO_CURVE, Curve, TrainedModel, is_core
from studies.fmnist_stats import Estimate, Replicates, chip_mean, draw, fp_mean

MODES = ("plain", "recipe", "hwa")
#: The issue's targets (ResNet): thresholds in pp / %.
TARGET_GAP_1Y_PP = 1.0
TARGET_ACC_1D_PCT = 92.0


def _groups(models: Sequence[TrainedModel]) -> dict[tuple[str, str], list[TrainedModel]]:
    out: dict[tuple[str, str], list[TrainedModel]] = {}
    for m in models:
        out.setdefault((m.arch, m.mode), []).append(m)
    return {k: sorted(v, key=lambda m: m.seed) for k, v in sorted(out.items())}


def _estimates(models, cells, fp, ages, arms, rep: Replicates, curve: Curve = NO_CURVE):
    """({(arch, mode): FP Estimate}, {(arch, mode, arm, age, gdc): chip Estimate}, seeds per group)."""
    fps, chips, seeds = {}, {}, {}
    for (arch, mode), ms in _groups(models).items():
        s = [m.seed for m in ms]
        seeds[(arch, mode)] = s
        fps[(arch, mode)] = fp_mean(np.stack([fp[m.key] for m in ms]), s, rep)
        for arm in arms:
            for age in curve.ages_for(arch, arm, ages):
                for g in GDC_KEYS:
                    c = np.stack([cells[(m.key, arm, age, g)] for m in ms])
                    chips[(arch, mode, arm, age, g)] = chip_mean(c, s, rep)
    return fps, chips, seeds


def _rows(fps, chips, seeds) -> tuple[list[dict], list[dict]]:
    fp_rows = [{"arch": a, "mode": m, "seeds": seeds[(a, m)], "accuracy": e.summary()} for (a, m), e in fps.items()]
    rows = []
    for (arch, mode, arm, age, g), e in chips.items():
        own = fps[(arch, mode)]
        rows.append(
            {
                "arch": arch,
                "mode": mode,
                "arm": arm,
                "age": age,
                "gdc": g,
                "accuracy": e.summary(),
                "normalised": (e / own).summary(scale=1.0, digits=4),
                "robustness": (own - e).summary(),
            }
        )
    return fp_rows, rows


def _gap(kind: str, arch: str, age: str, gdc: str, arm: str, est: Estimate, definition: str, mode: str = "") -> dict:
    return {
        "kind": kind,
        "arch": arch,
        "mode": mode,
        "age": age,
        "gdc": gdc,
        "arm": arm,
        "definition": definition,
        "value": est.summary(),
    }


def _gaps(fps, chips, archs, arms) -> list[dict]:
    """Every gap whose cells exist: HWA vs FP and vs the controls at each age with max-scaling
    cells (the curve's ages included), CAWS vs max scaling where both arms were evaluated."""
    if "max" not in arms:  # every gap compares max-scaling cells
        return []
    out = []
    for arch in archs:
        have = {m for (a, m) in fps if a == arch}
        ages = sorted({k[3] for k in chips if k[0] == arch and k[2] == "max"}, key=AGE_SCHEDULE.__getitem__)

        def rob(m: str, arm: str, age: str, g: str, arch: str = arch) -> Estimate:
            return fps[(arch, m)] - chips[(arch, m, arm, age, g)]

        for age in ages:
            if {"plain", "hwa"} <= have:
                e = fps[(arch, "plain")] - chips[(arch, "hwa", "max", age, "on")]
                out.append(_gap("gap_to_fp", arch, age, "on", "max", e, "FP(plain) − chip(HWA + GDC)"))
            for g in GDC_KEYS:
                for ctrl in ("recipe", "plain"):
                    if {ctrl, "hwa"} <= have:
                        e = rob(ctrl, "max", age, g) - rob("hwa", "max", age, g)
                        out.append(
                            _gap(
                                f"robustness_vs_{ctrl}", arch, age, g, "max", e, f"robustness({ctrl}) − robustness(HWA)"
                            )
                        )
                for m in sorted(have, key=MODES.index):
                    if (arch, m, "caws", age, g) in chips:
                        e = chips[(arch, m, "caws", age, g)] - chips[(arch, m, "max", age, g)]
                        out.append(_gap("caws", arch, age, g, "caws", e, "chip(CAWS) − chip(max scaling)", mode=m))
    return out


def _find(gaps: list[dict], kind: str, arch: str, age: str, gdc: str) -> dict | None:
    return next(
        (g for g in gaps if g["kind"] == kind and g["arch"] == arch and g["age"] == age and g["gdc"] == gdc), None
    )


def targets(rows: list[dict], gaps: list[dict], arch: str = "resnet") -> list[dict]:
    """The issue's three targets for ``arch``, each met / missed / no data, with its numbers."""
    out = []
    g = _find(gaps, "gap_to_fp", arch, "1 y", "on")
    out.append(
        {
            "name": f"{arch} HWA + GDC at 1 y: upper 95 % bound of the gap to FP ≤ {TARGET_GAP_1Y_PP} pp",
            "value": g["value"] if g else None,
            "met": None if g is None else g["value"]["hi"] <= TARGET_GAP_1Y_PP,
        }
    )
    r = next(
        (r for r in rows if (r["arch"], r["mode"], r["arm"], r["age"], r["gdc"]) == (arch, "hwa", "max", "1 d", "on")),
        None,
    )
    out.append(
        {
            "name": f"{arch} HWA + GDC at 1 d: accuracy ≥ {TARGET_ACC_1D_PCT} %",
            "value": r["accuracy"] if r else None,
            "met": None if r is None else r["accuracy"]["mean"] >= TARGET_ACC_1D_PCT,
        }
    )
    g = _find(gaps, "robustness_vs_recipe", arch, "1 y", "off")
    out.append(
        {
            "name": f"{arch} at 1 y without GDC: HWA more robust than the recipe-only control, interval excludes 0",
            "value": g["value"] if g else None,
            "met": None if g is None else g["value"]["lo"] > 0,
        }
    )
    return out


def _gap_key(g: dict) -> tuple:
    return g["kind"], g["arch"], g["mode"], g["age"], g["gdc"], g["arm"]


def _pass(models, cells, fp, n_chips: int, ages, arms, n_boot: int, seed: int, curve):
    """(fp rows, chip rows, gaps) on one bootstrap draw over ``n_chips`` chips, every row and gap
    labelled with that count."""
    n_images = fp[models[0].key].shape[0]
    rep = draw(n_images, n_chips, sorted({m.seed for m in models}), n_boot, np.random.default_rng(seed))
    fps, chips, seeds = _estimates(models, cells, fp, ages, arms, rep, curve)
    fp_rows, rows = _rows(fps, chips, seeds)
    gaps = _gaps(fps, chips, [models[0].arch], arms)
    for r in rows + gaps:
        r["chips"] = n_chips
    return fp_rows, rows, gaps


def _analyse_arch(
    models: Sequence[TrainedModel], cells: dict, fp: dict, n_chips: int, n_extra: int, ages, arms, n_boot, seed, curve
) -> tuple[list[dict], list[dict], list[dict]]:
    """(fp rows, chip rows, gaps) of one architecture's models, on its own bootstrap replicates.
    When the other cells than the core ones (``is_core``) hold fewer chips (``n_extra``), the core
    rows and gaps come from the ``n_chips`` chips, and the rest from a second draw over the first
    ``n_extra`` chips, with the core cells cut to those chips, so that every gap stays paired."""
    if n_extra >= n_chips:
        return _pass(models, cells, fp, n_chips, ages, arms, n_boot, seed, curve)
    core_curve = curve if curve.every_chip else NO_CURVE  # the curve's ages are core cells then
    fp_rows, rows, gaps = _pass(models, cells, fp, n_chips, ages, arms[:1], n_boot, seed, core_curve)
    if n_extra == 0:
        return fp_rows, rows, gaps
    keys = {m.key for m in models}
    cut = {k: v[:n_extra] for k, v in cells.items() if k[0] in keys}
    _, x_rows, x_gaps = _pass(models, cut, fp, n_extra, ages, arms, n_boot, seed, curve)
    have = {_gap_key(g) for g in gaps}
    rows += [r for r in x_rows if not is_core(r["arm"], r["age"], arms, ages, curve)]
    gaps += [g for g in x_gaps if _gap_key(g) not in have]
    return fp_rows, rows, gaps


def analyse(
    models: Sequence[TrainedModel],
    cells: dict,
    fp: dict[str, np.ndarray],
    chips_used: Mapping[str, Sequence[int]],
    ages: Sequence[str],
    arms: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    curve: Curve = NO_CURVE,
    extra_used: Mapping[str, Sequence[int]] | None = None,
) -> dict:
    """The study's tables as JSON-able data (``rows``, ``fp``, ``gaps``, ``targets``). Every
    comparison stays within one architecture, so each architecture is bootstrapped over its own
    complete chips (``chips_used[arch]``; an architecture without any is left out), with the same
    bootstrap ``seed``. ``curve``: the ages beyond ``ages`` that some architectures' first arm
    was evaluated at (rows and gaps for them too). ``extra_used``: the chips of the cells other
    than the first arm's at ``ages`` (``fmnist_eval.complete_chips``), when fewer; every row and
    gap says how many chips it rests on (``chips``)."""
    fp_rows, rows, gaps = [], [], []
    for arch in sorted({m.arch for m in models}):
        ms = [m for m in models if m.arch == arch]
        if not chips_used.get(arch):
            continue
        n = len(chips_used[arch])
        n_extra = n if extra_used is None else len(extra_used[arch])
        f, r, g = _analyse_arch(ms, cells, fp, n, n_extra, ages, arms, n_boot, seed, curve)
        fp_rows += f
        rows += r
        gaps += g
    return {
        "fp": fp_rows,
        "rows": rows,
        "gaps": gaps,
        "targets": targets(rows, gaps, "resnet"),
        "n_boot": n_boot,
        "bootstrap_seed": seed,
    }
