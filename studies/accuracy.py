"""The accuracy report: what the aged chip does to the zoo models (DESIGN §8).

    python -m studies.accuracy                      # regenerate reports/accuracy/ (README.md, PNGs, results.json)
    python -m studies.accuracy --chips 3 --skip-ste --out /tmp/report   # a quick look

Every accuracy here comes from the *serving path*: the exported ONNX file is compiled and
programmed by ``chipsim.compiler.program_onnx`` and run by ``chipsim.runtime.ChipRuntime`` —
no torch simulation. Three studies:

1. **Accuracy vs age** on the ``pcm`` profile at 1 s, 1 h, 1 d, 1 w, 30 d, 1 y, 10 y, GDC on and
   off, mean ± std over ``--chips`` chip instances (chip seed ``i``: its own programming noise,
   drift exponents and faults; read-out seed 0 and per-MVM noise seed 0 of each chip).
2. **Robustness midpoint µ** (after Borras, Klein & Fröning, "Walking Noise", ECML-PKDD 2024,
   arXiv:2212.10430 — the noise level at which accuracy falls halfway from its maximum to
   chance): the ``ideal`` profile plus additive
   Gaussian output noise of σ on every analog MVM (``out_noise = σ``, normalised units: 1 = one
   full-scale input times one full-scale weight), accuracy on a log grid of σ, and the fit
   ``acc(σ) = c + (a − c)/(1 + (σ/µ)^k)`` with ``c = 1/classes`` (chance) fixed.
3. **Extended STE vs gradients through the noise model** for the CNN: both train the
   ``cnn-hwa`` recipe from the same plain model, each in a fresh process (so peak memory is
   its own): seconds per step, peak resident memory above the process's baseline, bytes that
   autograd saves for the backward pass per step, and the final chip accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from chipsim import get_profile
from studies.common import AGE_SCHEDULE, REPORTS_DIR, YEAR_S, ZOO_DIR, ZooModel, mean_std, pyplot, read_zoo

OUT_DIR = REPORTS_DIR / "accuracy"
#: Additive output-noise grid for the robustness study, normalised units (log-spaced, 3 decades; 10 is the profile maximum).
SIGMAS = np.logspace(-2, 1, 16)
TARGET_PP = 1.0


# --------------------------------------------------------------------------- chip evaluation
def chip_accuracy(rt, x: np.ndarray, y: np.ndarray, age_s: float, gdc: bool, seed: int = 0) -> float:
    """Top-1 accuracy of one chip at one age (read-out seed 0, per-MVM noise ``seed``)."""
    logits = rt.run(x, age_s, read_seed=0, gdc=gdc, seed=seed)[0]
    return float((logits.argmax(1) == y).mean())


def age_study(model: ZooModel, n_chips: int, profile_name: str = "pcm", threads: int = 1) -> dict[str, Any]:
    """{gdc_on/gdc_off: {age label: [accuracy per chip]}} for one zoo model."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    profile = get_profile(profile_name)
    out: dict[str, dict[str, list[float]]] = {"gdc_on": {a: [] for a in AGE_SCHEDULE}, "gdc_off": {a: [] for a in AGE_SCHEDULE}}
    for chip_seed in range(n_chips):
        chip = program_onnx(model.onnx, profile, seed=chip_seed, chip_id=f"report-{chip_seed}")
        rt = ChipRuntime(chip, threads=threads)
        for label, age in AGE_SCHEDULE.items():
            for key, gdc in (("gdc_on", True), ("gdc_off", False)):
                out[key][label].append(chip_accuracy(rt, model.x, model.y, age, gdc))
    return out


def robustness_study(
    model: ZooModel, sigmas: np.ndarray = SIGMAS, repeats: int = 5, threads: int = 1
) -> list[list[float]]:
    """Accuracy per σ (rows) and per-MVM noise seed (columns) on the ``ideal`` profile with
    additive output noise σ (no other non-ideality, so σ is the only thing that varies)."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    accs = []
    for sigma in sigmas:
        chip = program_onnx(model.onnx, get_profile("ideal", out_noise=float(sigma)), seed=0, chip_id="mu")
        rt = ChipRuntime(chip, threads=threads)
        accs.append([chip_accuracy(rt, model.x, model.y, 0.0, False, seed=s) for s in range(repeats)])
    return accs


def logistic(sigma: np.ndarray, a: float, log_mu: float, k: float, chance: float) -> np.ndarray:
    """``c + (a − c)/(1 + (σ/µ)^k)``: ``a`` at σ → 0, chance ``c`` at σ → ∞, halfway at σ = µ."""
    return chance + (a - chance) / (1.0 + np.exp(k * (np.log(sigma) - log_mu)))


def fit_midpoint(sigmas: np.ndarray, acc: np.ndarray, chance: float) -> dict[str, float]:
    """Least-squares logistic fit in log σ; returns ``mu`` (the midpoint σ), ``a``, ``k``, ``rmse``.

    The start values come from the data (the σ grid point closest to halfway), so the fit does
    not depend on a lucky guess; ``a`` is bounded to [chance, 1] and ``k`` to (0, 20].
    """
    from scipy.optimize import curve_fit

    sigmas = np.asarray(sigmas, float)
    acc = np.asarray(acc, float)
    a0 = float(acc.max())
    half = chance + (a0 - chance) / 2
    mu0 = float(sigmas[np.argmin(np.abs(acc - half))])

    def f(s, a, log_mu, k):
        return logistic(s, a, log_mu, k, chance)

    popt, _ = curve_fit(f, sigmas, acc, p0=[a0, math.log(mu0), 2.0],
                        bounds=([chance, math.log(sigmas[0]) - 5, 1e-3], [1.0, math.log(sigmas[-1]) + 5, 20.0]))
    rmse = float(np.sqrt(np.mean((f(sigmas, *popt) - acc) ** 2)))
    return {"mu": float(math.exp(popt[1])), "a": float(popt[0]), "k": float(popt[2]), "rmse": rmse}


# --------------------------------------------------------------------------- STE vs through
class RssSampler:
    """Peak increase of this process's *current* resident memory while active: RSS read from
    ``/proc/self/statm`` every ``interval_s`` by a background thread, minus RSS on entry.

    ``ru_maxrss`` alone cannot isolate training: its high-water mark is usually set while torch
    and onnxruntime are imported, before a small model trains. Sampling misses peaks shorter than
    the interval; at 5 ms against steps of 40–100 ms, over thousands of steps, the largest
    recurring peak is caught. Without /proc (not Linux) it falls back to the ru_maxrss difference.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()

    def rss(self) -> int:
        if self._proc:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.base)


def _ste_worker(mode: str, init_state: dict, steps: int | None, out_q) -> None:  # pragma: no cover - subprocess
    """Train the cnn-hwa recipe with gradient ``mode`` (a ``GradientMode`` name) in this (fresh)
    process; report back."""
    import torch

    torch.set_num_threads(1)
    from models import hwa
    from models.export import build_onnx
    from models.train import RECIPES, train
    from models.zoo_models import build

    init_state = {k: torch.from_numpy(v) for k, v in init_state.items()}
    recipe = RECIPES["cnn-hwa"]
    recipe = replace(recipe, noise=replace(recipe.noise, mode=mode))
    teacher = build("cnn", recipe.seed)
    teacher.load_state_dict(init_state)
    # Bytes autograd keeps for backward, per step (peak over the first steps): the activation
    # memory that the extended STE avoids. Counted with saved-tensor hooks, storage-deduplicated.
    saved: dict[str, int] = {"cur": 0, "peak": 0, "steps": 0}
    seen: set[int] = set()

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved["cur"] += t.untyped_storage().nbytes()
        return t

    # Warm up what both modes share (sklearn import and data loading, torch's first kernels), so
    # the peak RSS increase measures training alone.
    from models.data import load_split

    load_split("train"), load_split("val")
    teacher(torch.rand(64, 1, 8, 8)).sum().backward()
    teacher.zero_grad(set_to_none=True)
    with RssSampler() as rss:
        res = train(recipe, init=init_state, teacher=teacher, progress=False, max_steps=steps, desc=f"cnn-hwa[{mode}]")
    probe_model = build("cnn", recipe.seed)
    probe_model.load_state_dict(init_state)
    hwa.calibrate_input_ranges(probe_model, torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    ctx = hwa.HwaContext(recipe.noise, torch.Generator().manual_seed(0))
    hwa.attach(probe_model, ctx)
    probe_model.train()
    x = torch.rand(recipe.batch_size, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        seen.clear()
        saved["cur"] = 0
        ctx.new_batch(1.0, YEAR_S)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = probe_model(x).logsumexp(1).mean()
        saved["peak"] = max(saved["peak"], saved["cur"])
        loss.backward()
    del probe_model, loss

    model_bytes, _ = build_onnx(res.model)
    out_q.put({
        "mode": mode, "steps": res.steps, "seconds": res.seconds, "seconds_per_step": res.seconds / max(1, res.steps),
        "rss_peak_increase_bytes": rss.increase, "rss_base_bytes": rss.base, "autograd_saved_bytes": saved["peak"],
        "onnx": model_bytes, "history": res.history,
    })


def ste_study(steps: int | None, n_chips: int, eval_x: np.ndarray, eval_y: np.ndarray) -> list[dict[str, Any]]:
    """Run both gradient modes, one fresh process each, and evaluate both results on chips."""
    import torch

    from models.export import onnx_logits
    from models.torch_chip import GradientMode
    from models.train import RECIPES, train

    torch.set_num_threads(1)
    plain = train(RECIPES["cnn-plain"], progress=False)
    # numpy, not tensors: torch would pass tensors to the child through shared memory
    init = {k: v.detach().numpy().copy() for k, v in plain.model.state_dict().items()}
    ctx = mp.get_context("spawn")
    results = []
    for mode in (GradientMode.STE, GradientMode.THROUGH_NOISE):
        q = ctx.Queue()
        p = ctx.Process(target=_ste_worker, args=(mode, init, steps, q))
        p.start()
        r = None
        while r is None:
            try:
                r = q.get(timeout=5)
            except queue.Empty:
                if not p.is_alive():
                    raise RuntimeError(f"STE study: the {mode!r} training process died (exit code {p.exitcode})") from None
        p.join()
        model_bytes = r.pop("onnx")
        r["fp_accuracy"] = float((onnx_logits(model_bytes, eval_x).argmax(1) == eval_y).mean())
        r["chip_1y_gdc"] = age_study_at(model_bytes, eval_x, eval_y, n_chips, YEAR_S)
        results.append(r)
    return results


def age_study_at(model_bytes: bytes, x: np.ndarray, y: np.ndarray, n_chips: int, age_s: float) -> list[float]:
    """Accuracy of ``n_chips`` pcm chips (seeds 0…) at ``age_s``, GDC on."""
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    out = []
    for chip_seed in range(n_chips):
        rt = ChipRuntime(program_onnx(model_bytes, get_profile("pcm"), seed=chip_seed), threads=1)
        out.append(chip_accuracy(rt, x, y, age_s, True))
    return out


# --------------------------------------------------------------------------- plots
def plot_ages(models: list[dict], ages: dict[str, dict], path: Path) -> None:
    plt = pyplot()

    archs = list(dict.fromkeys(m["arch"] for m in models))
    fig, axes = plt.subplots(1, len(archs), figsize=(5.2 * len(archs), 4.2), sharey=False)
    axes = np.atleast_1d(axes)
    t = np.array(list(AGE_SCHEDULE.values()))
    styles = {(False, "gdc_on"): ("tab:blue", "-"), (False, "gdc_off"): ("tab:blue", ":"),
              (True, "gdc_on"): ("tab:red", "-"), (True, "gdc_off"): ("tab:red", ":")}
    for ax, arch in zip(axes, archs):
        for m in (m for m in models if m["arch"] == arch):
            for key in ("gdc_on", "gdc_off"):
                acc = np.array([ages[m["name"]][key][a] for a in AGE_SCHEDULE]) * 100
                color, ls = styles[(m["hwa"], key)]
                ax.errorbar(t, acc.mean(1), yerr=acc.std(1), color=color, ls=ls, marker="o", ms=3, capsize=2,
                            label=f"{'HWA' if m['hwa'] else 'plain'}, GDC {'on' if key == 'gdc_on' else 'off'}")
            ax.axhline(m["fp_accuracy"] * 100, color=styles[(m["hwa"], "gdc_on")][0], lw=0.8, ls="--",
                       label=f"{'HWA' if m['hwa'] else 'plain'} FP")
        ax.axhline(10, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(t, list(AGE_SCHEDULE), rotation=45)
        ax.set_xlabel("age since programming")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{arch} on pcm chips (grey: chance)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    # a zoom on GDC on only, where the 1 pp target lives
    fig, axes = plt.subplots(1, len(archs), figsize=(5.2 * len(archs), 3.6))
    axes = np.atleast_1d(axes)
    for ax, arch in zip(axes, archs):
        for m in (m for m in models if m["arch"] == arch):
            acc = np.array([ages[m["name"]]["gdc_on"][a] for a in AGE_SCHEDULE]) * 100
            color = styles[(m["hwa"], "gdc_on")][0]
            ax.errorbar(t, acc.mean(1), yerr=acc.std(1), color=color, marker="o", ms=3, capsize=2,
                        label=f"{'HWA' if m['hwa'] else 'plain'} + GDC")
            ax.axhline(m["fp_accuracy"] * 100, color=color, lw=0.8, ls="--", label=f"{'HWA' if m['hwa'] else 'plain'} FP")
            if m["hwa"]:
                ax.axhspan(m["fp_accuracy"] * 100 - TARGET_PP, m["fp_accuracy"] * 100, color=color, alpha=0.08)
        ax.set_xscale("log")
        ax.set_xticks(t, list(AGE_SCHEDULE), rotation=45)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{arch}, GDC on (band: HWA FP − 1 pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path.with_name("accuracy_vs_age_gdc.png"), dpi=110)
    plt.close(fig)


def plot_robustness(models: list[dict], rob: dict[str, dict], chance: float, path: Path) -> None:
    plt = pyplot()

    archs = list(dict.fromkeys(m["arch"] for m in models))
    fig, axes = plt.subplots(1, len(archs), figsize=(5.2 * len(archs), 3.8))
    axes = np.atleast_1d(axes)
    fine = np.logspace(math.log10(SIGMAS[0]), math.log10(SIGMAS[-1]), 200)
    for ax, arch in zip(axes, archs):
        for m in (m for m in models if m["arch"] == arch):
            r = rob[m["name"]]
            acc = np.array(r["acc"]) * 100
            color = "tab:red" if m["hwa"] else "tab:blue"
            label = "HWA" if m["hwa"] else "plain"
            ax.errorbar(r["sigmas"], acc.mean(1), yerr=acc.std(1), fmt="o", ms=3, color=color, capsize=2)
            fit = r["fit"]
            ax.plot(fine, logistic(fine, fit["a"], math.log(fit["mu"]), fit["k"], chance) * 100, color=color,
                    label=f"{label}: µ = {fit['mu']:.3g}")
            ax.axvline(fit["mu"], color=color, ls=":", lw=0.8)
        ax.axhline(chance * 100, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("additive output noise σ per MVM (normalised units)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{arch}: robustness midpoint")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown
def _plain_of(models: list[dict]) -> dict[str, dict]:
    """{HWA model name: its plain counterpart's entry} where the zoo has one."""
    by = {m["name"]: m for m in models}
    return {m["name"]: by[p] for m in models if m["hwa"] and (p := m["name"].rsplit("-", 1)[0] + "-plain") in by}


def write_markdown(res: dict[str, Any], path: Path) -> None:
    """The report's README.md from its results (``results.json``)."""
    target, verdicts = _target_table(res)
    lines = _head_and_age_tables(res) + target + _robustness_section(res) + _ste_section(res)
    path.write_text("\n".join(lines + _verdicts_and_notes(res, verdicts)))


def _head_and_age_tables(res: dict[str, Any]) -> list[str]:
    models, ages = res["models"], res["ages"]
    lines = [
        "# Accuracy of the zoo on aged PCM chips",
        "",
        f"Generated by `python -m studies.accuracy` ({res['seconds']:.0f} s on {res['machine']}; "
        f"numbers in percent, mean ± std over {res['n_chips']} chip instances). Do not edit by hand.",
        "",
        "**How it is measured.** Each zoo ONNX file (`models/zoo/`) is compiled and programmed by "
        "`chipsim.compiler.program_onnx` onto a `pcm` chip and executed by `chipsim.runtime.ChipRuntime` — the "
        "serving path, not a torch simulation. A *chip instance* is one programming seed (0 … "
        f"{res['n_chips'] - 1}): its own programming noise, drift exponents and stuck-at faults; each is read at "
        "every age with read-out seed 0 and per-MVM noise seed 0. The eval set is the test split shipped beside each "
        f"model ({res['n_eval']} digits images, see `agedchip.split` in the metadata). GDC = the profile's global "
        "drift compensation (per tile); *off* = raw drifted conductances. FP = the ONNX model in floating point "
        "(onnxruntime), recorded in `agedchip.fp_accuracy`.",
        "",
        f"`pcm` profile: `{json.dumps(res['profile'], sort_keys=True)}`",
        "",
        "![accuracy vs age](accuracy_vs_age.png)",
        "",
        "![accuracy vs age, GDC on](accuracy_vs_age_gdc.png)",
        "",
    ]
    for key, title in (("gdc_on", "GDC on"), ("gdc_off", "GDC off")):
        lines += [f"## Accuracy vs age, {title}", "", "| model | FP | " + " | ".join(AGE_SCHEDULE) + " |",
                  "|---|---:|" + "---:|" * len(AGE_SCHEDULE)]
        for m in models:
            lines.append(f"| {m['name']} | {m['fp_accuracy'] * 100:.2f} | "
                         + " | ".join(mean_std(ages[m['name']][key][a]) for a in AGE_SCHEDULE) + " |")
        lines.append("")
    return lines


def _target_table(res: dict[str, Any]) -> tuple[list[str], list[tuple[str, bool, float, float]]]:
    """The 1-year target table, and per HWA model (name, met, gap to own FP, HWA − plain) in pp."""
    models, ages = res["models"], res["ages"]
    lines = ["## Target: HWA + GDC within 1.0 pp of FP at 1 y, and better than plain", "",
              "| model | FP (HWA) | HWA + GDC, 1 y | gap to own FP | gap to plain FP | plain + GDC, 1 y | HWA − plain | "
              "HWA, GDC off, 1 y | plain, GDC off, 1 y | met? |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    plain_of = _plain_of(models)
    verdicts = []
    for m in models:
        if not m["hwa"]:
            continue
        plain = plain_of.get(m["name"])
        h = np.mean(ages[m["name"]]["gdc_on"]["1 y"]) * 100
        gap = m["fp_accuracy"] * 100 - h
        if plain:
            p = np.mean(ages[plain["name"]]["gdc_on"]["1 y"]) * 100
            gap_p = plain["fp_accuracy"] * 100 - h
            diff = h - p
            ok = gap <= TARGET_PP and gap_p <= TARGET_PP and diff > 0
            pp = f"{p:.2f}"
            off_p = f"{np.mean(ages[plain['name']]['gdc_off']['1 y']) * 100:.2f}"
        else:
            gap_p, diff, ok, pp, off_p = float("nan"), float("nan"), gap <= TARGET_PP, "–", "–"
        verdicts.append((m["name"], ok, gap, diff))
        lines.append(f"| {m['name']} | {m['fp_accuracy'] * 100:.2f} | {h:.2f} | {gap:.2f} pp | {gap_p:.2f} pp | {pp} | "
                     f"{diff:+.2f} pp | {np.mean(ages[m['name']]['gdc_off']['1 y']) * 100:.2f} | {off_p} | "
                     f"{'yes' if ok else '**no**'} |")
    lines += ["", "Gaps are FP minus chip accuracy (positive = the chip loses accuracy). *met?* requires both gaps "
              f"≤ {TARGET_PP} pp and HWA above plain at 1 y with GDC. With {res['n_eval']} test images one image is "
              f"{100 / res['n_eval']:.2f} pp; the standard error of a {res['n_chips']}-chip mean is about std/"
              f"√{res['n_chips']}.", ""]
    return lines, verdicts


def _robustness_section(res: dict[str, Any]) -> list[str]:
    models, rob = res["models"], res["robustness"]
    lines = ["## Robustness midpoint µ", "",
              "Accuracy vs additive Gaussian noise σ added to every analog MVM output (`ideal` profile with "
              "`out_noise = σ`; normalised units, where 1 is a full-scale input times a full-scale weight, the same units "
              "as the chip's ADC output noise of 0.04), "
              f"{len(SIGMAS)} values of σ from {SIGMAS[0]:g} to {SIGMAS[-1]:.3g}, {res['robustness_repeats']} per-MVM noise "
              "seeds each, fitted with `acc(σ) = c + (a − c)/(1 + (σ/µ)^k)`, c = 10 % (chance). µ is where the accuracy "
              "is halfway between its maximum `a` and chance. Larger µ = more robust.", "",
              "![robustness](robustness.png)", "",
              "| model | µ (σ at half accuracy) | a (fitted max) | k (slope) | fit RMSE (pp) |", "|---|---:|---:|---:|---:|"]
    for m in models:
        f = rob[m["name"]]["fit"]
        lines.append(f"| {m['name']} | {f['mu']:.3f} | {f['a'] * 100:.2f} | {f['k']:.2f} | {f['rmse'] * 100:.2f} |")
    lines.append("")
    plain_of = _plain_of(models)
    pairs = [(m, plain_of.get(m["name"])) for m in models if m["hwa"]]
    lines += ["| architecture | µ plain | µ HWA | µ HWA / µ plain |", "|---|---:|---:|---:|"]
    for m, p in pairs:
        if p:
            mh, mp_ = rob[m["name"]]["fit"]["mu"], rob[p["name"]]["fit"]["mu"]
            lines.append(f"| {m['arch']} | {mp_:.3f} | {mh:.3f} | {mh / mp_:.2f}× |")
    lines.append("")
    return lines


def _ste_section(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if res.get("ste"):
        lines += ["## Extended STE vs gradients through the noise model (CNN)", "",
                  "Both runs train the `cnn-hwa` recipe from the same plain CNN, each in its own fresh process on one CPU "
                  "thread. *Extended STE*: the noisy forward runs under `no_grad` and enters as a detached delta. "
                  "*Through*: the same noise model stays in the autograd graph (DAC/ADC rounding as identity "
                  "straight-through). Peak RSS increase = the highest resident memory of the process during training "
                  "(sampled every 5 ms) minus its resident memory just before; autograd-saved bytes = storage that autograd keeps for the backward pass of one batch of "
                  "64 (counted with `torch.autograd.graph.saved_tensors_hooks`). Chip accuracy: pcm, 1 y, GDC on, "
                  f"{res['n_chips']} chips.", "",
                  "| gradient | steps | time per step (ms) | peak RSS increase (MiB) | autograd-saved per step (MiB) | FP | "
                  "chip, 1 y, GDC |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["ste"]:
            lines.append(f"| {'extended STE' if r['mode'] == 'ste' else 'through noise model'} | {r['steps']} | "
                         f"{r['seconds_per_step'] * 1000:.1f} | {r['rss_peak_increase_bytes'] / 2**20:.1f} | "
                         f"{r['autograd_saved_bytes'] / 2**20:.2f} | {r['fp_accuracy'] * 100:.2f} | {mean_std(r['chip_1y_gdc'])} |")
        lines.append("")
    return lines


def _verdicts_and_notes(res: dict[str, Any], verdicts: list[tuple[str, bool, float, float]]) -> list[str]:
    lines = ["## Verdict", ""]
    for name, ok, gap, diff in verdicts:
        lines.append(f"- **{name}**: {'meets' if ok else 'misses'} the target — {gap:.2f} pp below its FP accuracy at "
                     f"1 y with GDC, {diff:+.2f} pp against plain training.")
    lines += [
        "", "## Notes", "",
        "- Recipes (`models/train.py`, recorded in each file's `agedchip.recipe`): plain models train from scratch "
        "(AdamW, cosine schedule, ±1 px shifts); HWA models start from their plain model and train on the emulated "
        "pcm chip (noise ×1.5, faults ×10, age log-uniform 1 s … 10 y, GDC emulated, 5-epoch noise ramp, per-channel "
        "clipping at 2.5 σ, learned DAC ranges, distillation from the plain model). Model sizes were chosen during "
        "development from the torch emulation of the chip, looking at the validation *and* this test split (at width "
        "32 the transformer, and at 128-64 the MLP, lost about twice as much accuracy at 1 y), so the test split is "
        "not fully held out for that choice; HWA epochs and noise scales were compared on the validation split only "
        "(120 instead of 60 HWA epochs helped the CNN; noise ×1.0 or ×2.0 and longer runs did not change the MLP or "
        "transformer beyond the chip-to-chip spread).",
        "- HWA's advantage is largest without GDC (the network learns to tolerate the average conductance decay) "
        "and in µ; with GDC the remaining loss comes from the per-device spread of drift exponents and 1/f noise, "
        "which GDC cannot undo and HWA only partly absorbs.",
        f"- The smallest margin to the 1 pp target is {TARGET_PP - max(g for _, _, g, _ in verdicts):.2f} pp "
        f"({(TARGET_PP - max(g for _, _, g, _ in verdicts)) / (100 / res['n_eval']):.1f} test images): compare it "
        "with the chip-to-chip std in the tables before reading more into it.",
        "- Timings and memory come from a shared 2-core machine; compare the two rows with each other, not with "
        "other machines. The RSS increase includes allocator effects; the autograd-saved bytes are exact.",
    ]
    lines += ["", "## Reproduce", "", "```", "python -m models.build_zoo   # retrain and export the zoo (models/zoo/)",
              "python -m studies.accuracy      # this page, the PNGs and results.json",
              "python -m studies.accuracy --render-only   # re-render page and PNGs from results.json", "```", ""]
    return lines


# --------------------------------------------------------------------------- main
def run(zoo_dir: Path, out_dir: Path, n_chips: int, repeats: int, ste_steps: int | None, skip_ste: bool,
        threads: int = 1) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    models = read_zoo(zoo_dir)
    chance = 1.0 / 10
    ages, rob = {}, {}
    for m in tqdm(models, desc="accuracy vs age", unit="model"):
        ages[m.name] = age_study(m, n_chips, threads=threads)
    for m in tqdm(models, desc="robustness", unit="model"):
        acc = robustness_study(m, SIGMAS, repeats, threads=threads)
        rob[m.name] = {"sigmas": SIGMAS.tolist(), "acc": acc,
                          "fit": fit_midpoint(SIGMAS, np.mean(acc, axis=1), chance)}
    ste = None
    if not skip_ste:
        cnn = next(m for m in models if m.name == "cnn-hwa")
        ste = ste_study(ste_steps, n_chips, cnn.x, cnn.y)
    public = [dict(m.entry) for m in models]
    res = {
        "models": public, "ages": ages, "robustness": rob, "ste": ste, "n_chips": n_chips,
        "robustness_repeats": repeats, "n_eval": int(len(models[0].y)),
        "profile": get_profile("pcm").model_dump(), "age_seconds": AGE_SCHEDULE,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {threads} onnxruntime thread(s)",
        "seconds": time.perf_counter() - t0,
    }
    plot_ages(public, ages, out_dir / "accuracy_vs_age.png")
    plot_robustness(public, rob, chance, out_dir / "robustness.png")
    res["seconds"] = time.perf_counter() - t0
    write_markdown(res, out_dir / "README.md")
    (out_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.accuracy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=str(ZOO_DIR))
    ap.add_argument("--out", default=str(OUT_DIR))
    ap.add_argument("--chips", type=int, default=10, help="chip instances per model (default 10)")
    ap.add_argument("--repeats", type=int, default=5, help="per-MVM noise seeds per σ in the robustness study")
    ap.add_argument("--ste-steps", type=int, default=None, help="cut the STE comparison's training short")
    ap.add_argument("--skip-ste", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render-only", action="store_true", help="re-render README.md and PNGs from results.json")
    args = ap.parse_args(argv)
    if args.render_only:
        out = Path(args.out)
        res = json.loads((out / "results.json").read_text())
        plot_ages(res["models"], res["ages"], out / "accuracy_vs_age.png")
        plot_robustness(res["models"], res["robustness"], 0.1, out / "robustness.png")
        write_markdown(res, out / "README.md")
        print(f"re-rendered {out} from results.json")
        return
    res = run(Path(args.zoo), Path(args.out), args.chips, args.repeats, args.ste_steps, args.skip_ste, args.threads)
    print(f"report written to {args.out} in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
