"""The numbers of the hardening report (issue #18), derived from the raw per-run results alone
(so the report recomputes from its JSON): midpoint fits, pooled midpoints and chip accuracies
with bootstrap intervals, and a verdict per claim.

Intervals (95 %, percentile bootstrap, fixed seeds so the summary is a pure function of the raw):

- µ of one run: :func:`studies.noise_midpoint.fit_logistic`'s hierarchical bootstrap (noise
  seeds, then test images).
- µ of an arm (architecture × training mode): the geometric mean over training seeds; each
  replicate resamples the training seeds and draws one bootstrap µ of each.
- chip accuracy of an arm at an age: the mean over training seeds × chips; each replicate
  resamples the training seeds, then the chips of each. The test images are fixed (the same for
  every arm, so they shift every arm alike; their binomial spread is not in the interval).
- a claim "A is more robust than B": the ratio µ_A/µ_B (replicates of both arms drawn
  independently) and, on the chip, the accuracy difference A − B at :data:`CHIP_AGE` with GDC
  on. Verdict: interval entirely above 1 (above 0) → ``reproduced``; entirely below →
  ``reversed``; otherwise ``not reproduced``; an arm without runs → ``no data``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from studies.noise_midpoint import MidpointFitError, Sweep, fit_logistic

N_BOOT = 200
CI = 0.95
#: The age and GDC setting at which the chip verdicts compare arms.
CHIP_AGE, CHIP_GDC = "1 y", "gdc_on"

#: (id, claim, who makes it, arm A, arm B): "A is more robust than B". Arms are (arch, mode).
CLAIMS: tuple[tuple[str, str, str, tuple[str, str], tuple[str, str]], ...] = (
    (
        "qat-helps",
        "QAT with constant scaling is more robust than plain training",
        "seed",
        ("resnet", "qat-constant"),
        ("resnet", "plain"),
    ),
    (
        "noisy-beats-qat",
        "noisy training is more robust than constant-scale QAT",
        "seed",
        ("resnet", "noisy"),
        ("resnet", "qat-constant"),
    ),
    (
        "constant-beats-dynamic",
        "constant scaling is more robust than dynamic (per-batch) scaling",
        "seed (its choice of constant scales)",
        ("resnet", "qat-constant"),
        ("resnet", "qat-dynamic"),
    ),
    (
        "qat-after-noise",
        "QAT after noisy training adds robustness to noisy training",
        "issue #18",
        ("resnet", "noisy-then-qat"),
        ("resnet", "noisy"),
    ),
    (
        "skips-plain",
        "skip connections make the plain network more robust",
        "issue #18",
        ("resnet", "plain"),
        ("resnet-noskip", "plain"),
    ),
    (
        "skips-noisy",
        "skip connections make the noisy-trained network more robust",
        "issue #18",
        ("resnet", "noisy"),
        ("resnet-noskip", "noisy"),
    ),
)


def run_key(arch: str, mode: str, seed: int) -> str:
    return f"{arch}-{mode}-s{seed}"


def _interval(values: Sequence[float]) -> list[float]:
    if len(values) == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(values, [(1 - CI) / 2 * 100, (1 + CI) / 2 * 100])
    return [float(lo), float(hi)]


def verdict(ci: Sequence[float], null: float) -> str:
    """``reproduced`` / ``reversed`` / ``not reproduced`` for an interval against ``null``."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return "no data"
    if lo > null:
        return "reproduced"
    if hi < null:
        return "reversed"
    return "not reproduced"


def fit_run(raw: dict[str, Any], chance: float, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The logistic fit of one run's sweep, with its bootstrap µ replicates."""
    s = Sweep.from_json(raw["sweep"])
    try:
        f = fit_logistic(np.log(s.sigmas), s.correct, chance=chance, n_boot=n_boot, seed=0, ci=CI)
    except MidpointFitError as err:
        return {"error": str(err)}
    return {**f.to_json(), "boot_mu": [float(v) for v in f.boot_mu]}


def pooled_mu(fits: list[dict[str, Any]], rng: np.random.Generator, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Geometric mean µ over training seeds and its replicates (see the module docstring)."""
    # failed bootstrap fits are NaN in boot_mu (kept there for pairing): draw from the others
    finite = [np.asarray(f.get("boot_mu", []), float) for f in fits]
    ok = [(f, b[np.isfinite(b)]) for f, b in zip(fits, finite, strict=True) if "mu" in f and np.isfinite(b).any()]
    if not ok:
        return {"mu": math.nan, "mu_ci": [math.nan, math.nan], "boot_log_mu": []}
    logs = np.array([math.log(f["mu"]) for f, _ in ok])
    boots = [np.log(b) for _, b in ok]
    reps = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(ok), len(ok))
        reps.append(float(np.mean([boots[i][rng.integers(0, len(boots[i]))] for i in pick])))
    return {"mu": float(np.exp(logs.mean())), "mu_ci": _interval(np.exp(reps)), "boot_log_mu": reps}


def pooled_chip(
    tables: list[dict[str, dict[str, list[float]]]], rng: np.random.Generator, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """{gdc key: {age: {mean, ci, boot}}} over training seeds × chips."""
    out: dict[str, Any] = {}
    for gdc in tables[0]:
        out[gdc] = {}
        for age in tables[0][gdc]:
            per_seed = [np.asarray(t[gdc][age], float) for t in tables]
            reps = []
            for _ in range(n_boot):
                pick = rng.integers(0, len(per_seed), len(per_seed))
                reps.append(
                    float(np.mean([per_seed[i][rng.integers(0, len(per_seed[i]), len(per_seed[i]))] for i in pick]))
                )
            mean = float(np.mean(np.concatenate(per_seed)))
            out[gdc][age] = {"mean": mean, "ci": _interval(reps), "boot": reps}
    return out


def summarise_arm(runs: list[dict[str, Any]], chance: float, seed: int, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Everything the report says about one arm, from its runs' raw results."""
    rng = np.random.default_rng(seed)
    fits = {str(r["seed"]): fit_run(r, chance, n_boot) for r in runs}
    arm = {
        "seeds": [r["seed"] for r in runs],
        "fits": fits,
        "fp_accuracy": float(np.mean([r["fp_accuracy"] for r in runs])),
        **pooled_mu(list(fits.values()), rng, n_boot),
    }
    if all(r.get("chip") for r in runs):
        arm["chip"] = pooled_chip([r["chip"] for r in runs], rng, n_boot)
    return arm


def _claim(arms: dict[str, Any], cid: str, text: str, who: str, a: tuple, b: tuple) -> dict[str, Any]:
    ka, kb = "/".join(a), "/".join(b)
    row: dict[str, Any] = {"id": cid, "claim": text, "source": who, "a": ka, "b": kb}
    A, B = arms.get(ka), arms.get(kb)
    if A is None or B is None or not A["boot_log_mu"] or not B["boot_log_mu"]:
        return {**row, "ratio": math.nan, "ratio_ci": [math.nan] * 2, "verdict": "no data", "chip_verdict": "no data"}
    n = min(len(A["boot_log_mu"]), len(B["boot_log_mu"]))
    ratios = np.exp(np.asarray(A["boot_log_mu"][:n]) - np.asarray(B["boot_log_mu"][:n]))
    row.update(ratio=A["mu"] / B["mu"], ratio_ci=_interval(ratios))
    row["verdict"] = verdict(row["ratio_ci"], 1.0)
    if "chip" in A and "chip" in B:
        ca, cb = A["chip"][CHIP_GDC][CHIP_AGE], B["chip"][CHIP_GDC][CHIP_AGE]
        m = min(len(ca["boot"]), len(cb["boot"]))
        diff = np.asarray(ca["boot"][:m]) - np.asarray(cb["boot"][:m])
        row.update(chip_diff=ca["mean"] - cb["mean"], chip_diff_ci=_interval(diff))
        row["chip_verdict"] = verdict(row["chip_diff_ci"], 0.0)
    else:
        row.update(chip_diff=math.nan, chip_diff_ci=[math.nan] * 2, chip_verdict="no data")
    return row


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-a of two equally long sequences (pairs tied in either count 0)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]))
    return s / (n * (n - 1) / 2) if n > 1 else math.nan


def ranking(arms: dict[str, Any]) -> dict[str, Any]:
    """Per architecture: arms ordered by µ and by chip accuracy at CHIP_AGE (GDC on), and τ."""
    out = {}
    for arch in sorted({k.split("/")[0] for k in arms}):
        keys = [k for k in arms if k.split("/")[0] == arch and "chip" in arms[k] and not math.isnan(arms[k]["mu"])]
        mus = [arms[k]["mu"] for k in keys]
        chips = [arms[k]["chip"][CHIP_GDC][CHIP_AGE]["mean"] for k in keys]
        out[arch] = {
            "by_mu": [keys[i].split("/")[1] for i in np.argsort(mus)[::-1]],
            "by_chip": [keys[i].split("/")[1] for i in np.argsort(chips)[::-1]],
            "kendall_tau": kendall_tau(mus, chips),
        }
    return out


def summarise(raw: dict[str, dict[str, Any]], chance: float, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The whole summary from ``raw`` ({run key: raw result}) with ``n_boot`` bootstrap replicates;
    a pure function of them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(raw):
        r = raw[key]
        groups.setdefault(f"{r['arch']}/{r['mode']}", []).append(r)
    arms = {
        k: summarise_arm(sorted(v, key=lambda r: r["seed"]), chance, seed=i, n_boot=n_boot)
        for i, (k, v) in enumerate(sorted(groups.items()))
    }
    claims = [_claim(arms, *c) for c in CLAIMS]
    return {"arms": arms, "claims": claims, "ranking": ranking(arms)}


#: Bootstrap replicates: needed to compute the claims, left out of the written JSON (size).
REPLICATE_KEYS = ("boot", "boot_mu", "boot_log_mu")


def public(summary: Any) -> Any:
    """``summary`` without its bootstrap replicates (what the report's JSON holds)."""
    if isinstance(summary, dict):
        return {k: public(v) for k, v in summary.items() if k not in REPLICATE_KEYS}
    if isinstance(summary, list):
        return [public(v) for v in summary]
    return summary
