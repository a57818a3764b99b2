"""Which chip non-idealities can hardware-aware training compensate, and which need the hardware fixed?

    python -m models.diagnose cnn                          # full study → reports/diagnose/
    python -m models.diagnose mlp --quick --out /tmp/diag  # a fast, coarse run

For each of the six perturbation classes of DESIGN §3.3 (read noise, variability, drift, stuck-at
faults, IR drop, ADC discretisation) the command builds chipsim profiles with *only that class*
switched on (``chipsim.get_profile("ideal", gdc="off", **fields)``) over a sweep of strengths and

1. measures three gradient diagnostics (DESIGN §8, :mod:`models.diagnostics`) of the plain
   (floating-point trained) model on a fixed batch of digits, over K chip instances:
   gradient expectation consistency and relative gradient variance of the HWA gradient
   (the trainer's extended straight-through estimator, ``models.hwa``), and the fraction of
   weights and analog output units through which the hardware lets gradient pass at all
   (the gradient *through* the perturbation model, see below);
2. checks the prediction: evaluates the plain model under each strength, trains with the HWA
   recipe (``models.train.train``) under each class alone at a strength where the plain model
   loses accuracy, and asks whether HWA recovers at least half of the gap;
3. writes ``README.md`` (tables), ``diagnose.png`` and ``results.json`` into ``--out``.

Two gradients per chip instance, the same draws for both:

* **STE** — exactly what HWA trains with (``models.hwa``, ``mode="ste"``): the value of the
  noisy forward, the gradient of the clean layer evaluated at the noisy activations. Used for
  consistency and variance: that is the update HWA follows.
* **through** — autograd through the chip's own perturbation model (chipsim's device and
  periphery formulas on torch): stuck devices pass no gradient, the DAC clips, the ADC passes its
  expected derivative over its own output noise (:func:`models.diagnostics.adc_expected_derivative`:
  zero in dead zones and saturation), drift and programming noise scale it. Noise *amplitudes*
  (their dependence on the weights is a zero-mean term) and the digital column scales (fixed at
  programming, DESIGN §3.1) are held constant. Used for sensitivity: the STE bypasses the
  perturbation in the backward pass, so only this gradient can show degeneracy.

The accuracies are measured in the torch emulation of the chip that HWA trains with (the same
formulas as chipsim's runtime), not on the ONNX runtime: this is a training study.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import copy
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chipsim import get_profile
from chipsim.mapping import column_scales, pair_targets_us, tile_bounds
from chipsim.periphery import adc, dac, ir_drop_delta, output_noise_std
from chipsim.profiles import ChipProfile
from models import diagnostics as D
from models import hwa as H
from models import train as T
from models.data import load_split

DEFAULT_OUT = Path("reports/diagnose")
YEAR_S = H.YEAR_S


# --------------------------------------------------------------------------- perturbation classes
@dataclass(frozen=True)
class PerturbationClass:
    """One of the six classes of DESIGN §3.3: which profile fields a strength ``s`` sets."""

    key: str
    label: str
    knob: str
    strengths: tuple[float, ...]
    fields: Callable[[float], dict]
    fmt: Callable[[float], str]
    #: The noise ramp of HWA scales the strength (False: the class is applied at full strength
    #: from the first step, as the trainer does with quantisation).
    ramp: bool = True
    age_s: float = YEAR_S

    def profile(self, s: float) -> ChipProfile:
        """The chipsim profile with only this class on, at strength ``s`` (GDC off)."""
        return get_profile("ideal", gdc="off", **self.fields(s))


def _adc_fields(levels: float) -> dict:
    return dict(out_levels=int(levels), out_bound=10.0, out_noise=0.04, in_clip=True)


def _adc_fmt(levels: float) -> str:
    n = int(levels)
    return f"{n} st. ({math.log2(n + 2):.3g} b)" if n > 1 else "1 st. (1 b)"


#: The sweeps run from harmless to destructive for the digits models; ``1`` is the chip as
#: published (DESIGN §3.2/§3.3) where the class has a published strength.
CLASSES: dict[str, PerturbationClass] = {c.key: c for c in (
    PerturbationClass(
        "read_noise", "read noise", "×(1/f read_noise_scale, w_noise/0.0175), at 1 y",
        (0.5, 1.0, 2.0, 4.0, 8.0),
        lambda s: dict(read_noise_scale=s, w_noise=0.0175 * s), lambda s: f"×{s:g}"),
    PerturbationClass(
        "variability", "variability", "×prog_noise_scale, d2d_sigma = 0.02·s",
        (0.5, 1.0, 2.0, 4.0, 8.0),
        lambda s: dict(prog_noise_scale=s, d2d_sigma=min(1.0, 0.02 * s)), lambda s: f"×{s:g}"),
    PerturbationClass(
        "drift", "drift (no GDC)", "×drift_scale (ν), read at 1 y, GDC off",
        (0.25, 0.5, 1.0, 2.0, 4.0),
        lambda s: dict(drift_scale=s), lambda s: f"×{s:g}"),
    PerturbationClass(
        "stuck", "stuck-at faults", "p = p_stuck_reset + p_stuck_set (4:1)",
        (0.001, 0.01, 0.03, 0.1, 0.3, 1.0),
        lambda s: dict(p_stuck_reset=0.8 * s, p_stuck_set=0.2 * s), lambda s: f"{100 * s:g} %"),
    PerturbationClass(
        "ir_drop", "IR drop", "×ir_drop (1 = standard model)",
        (1.0, 3.0, 10.0, 30.0, 100.0),
        lambda s: dict(ir_drop=s), lambda s: f"×{s:g}"),
    PerturbationClass(
        "adc", "ADC discretisation", "out_levels steps on ±10 (+ out_noise 0.04, DAC clip)",
        (254, 62, 14, 6, 2, 1),
        _adc_fields, _adc_fmt, ramp=False),
)}

#: HWA's recipe on an unperturbed chip: separates what the recipe itself (weight clipping,
#: distillation, more epochs) buys from what training *under the perturbation* buys.
CONTROL = PerturbationClass("none", "none (control)", "ideal chip", (0.0,), lambda s: {}, lambda s: "–")


# --------------------------------------------------------------------------- HWA context per class
def context_class(pc: PerturbationClass, strength: float) -> type[H.HwaContext]:
    """An :class:`models.hwa.HwaContext` whose chip is ``pc`` at ``strength`` at a fixed age.

    ``models.hwa.HwaContext`` draws its profile from a preset name and the config's scales; the
    study needs arbitrary profiles, so this subclass overrides ``new_batch`` (the trainer's noise
    ramp ρ ∈ [0, 1] becomes strength ρ·s for ramped classes). ``built`` counts instances, so the
    caller can check that the trainer really used it.
    """

    class_strength = float(strength)

    class ClassContext(H.HwaContext):
        built = 0

        def __post_init__(self) -> None:
            type(self).built += 1
            super().__post_init__()

        def new_batch(self, strength: float, age_s: float | None = None) -> None:
            self.strength = float(strength)  # the trainer's ramp
            self.age_s = pc.age_s
            self.profile = pc.profile(class_strength * self.strength if pc.ramp else class_strength)
            self.np_rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=self.generator)))

    ClassContext.__name__ = f"ClassContext[{pc.key}={strength:g}]"
    return ClassContext


def make_context(pc: PerturbationClass, strength: float, seed: int) -> H.HwaContext:
    cls = context_class(pc, strength)
    return cls(H.HwaConfig(profile="ideal", gdc=False, mode="ste"), torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def trainer_context(ctx_cls: type[H.HwaContext]) -> Iterator[None]:
    """Make ``models.train.train`` build ``ctx_cls`` instead of ``models.hwa.HwaContext``.

    The trainer takes its chip from a preset name (``HwaConfig.profile``); a ``ChipProfile`` (or
    overrides) in ``HwaConfig`` would make this unnecessary. Fails loudly if the trainer stops
    building its context through ``models.hwa.HwaContext``.
    """
    original = H.HwaContext
    before = ctx_cls.built  # type: ignore[attr-defined]
    H.HwaContext = ctx_cls  # type: ignore[misc]
    try:
        yield
    finally:
        H.HwaContext = original  # type: ignore[misc]
    if ctx_cls.built == before:  # type: ignore[attr-defined]
        raise RuntimeError("models.train.train did not build its HWA context through models.hwa.HwaContext; "
                           "models/diagnose.py must be updated to inject the per-class chip")


# --------------------------------------------------------------------------- gradient through the chip
class _Pass(torch.autograd.Function):
    """Value ``value`` (exactly), gradient ``gate ⊙ upstream`` into ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate if gate is not None else torch.empty(0))
        ctx.has_gate = gate is not None
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (gate,) = ctx.saved_tensors
        return (grad * gate.to(grad.dtype) if ctx.has_gate else grad), None, None


def through_age_weights(
    weight: torch.Tensor, profile: ChipProfile, age_s: float, generator: torch.Generator, np_rng: np.random.Generator
) -> H.AgedWeights:
    """``models.hwa.age_weights`` (same draws, same values) with the digital column scale held
    constant: it is set once at programming, so a fully stuck column informs no weight. (The
    trainer's ``conductances_at`` already holds the 1/f noise amplitude constant.)"""
    g_max = profile.device_model.g_max_us
    s = column_scales(weight).detach()
    w_norm = weight / s
    g_target = pair_targets_us(w_norm, g_max)
    draws = H.DeviceDraws.draw(tuple(g_target.shape), generator, weight.dtype)
    g_prog, nu, _ = H.program_devices(g_target, profile, draws)
    g_t = H.conductances_at(g_prog, nu, profile, age_s, draws.read)
    w_prog = (g_prog[0] - g_prog[1]) / g_max
    w_t = (g_t[0] - g_t[1]) / g_max
    tiles = tile_bounds(weight.shape[0], profile.tile_rows)
    alpha = H.gdc_alpha(w_prog, w_t, tiles, profile, np_rng, w_target=w_norm)
    return H.AgedWeights(w_t=w_t, w_prog=w_prog, col_scale=s, tiles=tiles, alpha=alpha)


def adc_active(profile: ChipProfile) -> bool:
    return profile.out_levels > 0 or profile.out_bound > 0


def through_matmul(
    x: torch.Tensor, aged: H.AgedWeights, input_range: torch.Tensor, profile: ChipProfile, draws: H.MvmDraws,
    gates: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``models.hwa.analog_matmul`` (same value, same order of operations) with the gradient
    through the periphery: the DAC passes the gradient inside ±r (0 where it clips, quantisation
    as identity), IR drop is differentiated, the noise amplitude is constant, and the ADC passes
    its expected derivative over the Gaussian noise in front of it (per-MVM weight read noise and
    output noise, σ per output from ``chipsim.periphery.output_noise_std``), appended to ``gates``."""
    r = input_range.detach()
    clip = getattr(profile, "in_clip", True)
    if clip or profile.in_levels > 0:
        with torch.no_grad():
            x_val = dac(x, r, profile.in_levels, clip)
        mask = (x.detach().abs() <= r) if clip else None
        x_dac = _Pass.apply(x / r, x_val, mask)
    else:
        x_dac = x / r  # what dac() computes for an ideal DAC
    needs_noise = profile.w_noise > 0 or profile.out_noise > 0
    y = None
    for k, (a, b) in enumerate(aged.tiles):
        w = aged.w_t[a:b]
        xk = x_dac[:, a:b]
        yk = xk @ w
        if profile.ir_drop > 0:
            yk = yk + ir_drop_delta(xk, w, profile.ir_drop)
        std = None
        if needs_noise:
            with torch.no_grad():
                std = output_noise_std(xk, w, profile.w_noise, profile.out_noise)
        if adc_active(profile):
            with torch.no_grad():
                noisy = yk + std * draws.draws[k] if std is not None else yk
                value = adc(noisy, profile.out_bound, profile.out_levels)
                gate = D.adc_expected_derivative(yk, std if std is not None else 0.0, profile.out_bound,
                                                 profile.out_levels)
            if gates is not None:
                gates.append(gate)
            yk = _Pass.apply(yk, value, gate)
        elif std is not None:
            yk = yk + std * draws.draws[k]
        yk = aged.alpha[k] * yk
        y = yk if y is None else y + yk
    return y * (r * aged.col_scale)


def through_layer(m: H.AnalogLayer, x: torch.Tensor, ctx: H.HwaContext, gates: list[torch.Tensor] | None) -> torch.Tensor:
    """One analog layer's forward through the chip in ``ctx``, consuming ``ctx.generator`` in the
    order of ``AnalogLayer._noisy`` (device draws, then MVM draws), so a generator reset to the
    same state gives the same chip instance as the trainer's noisy forward."""
    rows = m._to_rows(x)
    w = m.chip_weight()
    aged = through_age_weights(w, ctx.profile, ctx.age_s, ctx.generator, ctx.np_rng)
    draws = H.MvmDraws.draw(rows.shape[0], w.shape[1], len(aged.tiles), ctx.generator, rows.dtype)
    y = through_matmul(rows, aged, m.input_range, ctx.profile, draws, gates)
    return m._from_rows(y, x)


@contextlib.contextmanager
def through_hooks(model: nn.Module, ctx: H.HwaContext, gates: dict[str, list[torch.Tensor]]) -> Iterator[None]:
    """Replace every analog layer's output by :func:`through_layer` (model detached from HWA)."""
    handles = []
    H.attach(model, None)
    for name, m in H.analog_layers(model):
        def hook(mod, inputs, output, name=name):
            return through_layer(mod, inputs[0], ctx, gates.setdefault(name, []))
        handles.append(m.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- diagnostics of one setting
def analog_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for _, m in H.analog_layers(model)]


def clean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    H.attach(model, None)
    model.eval()
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, analog_weights(model))]


@dataclass
class Diagnostics:
    """The diagnostics of one class at one strength (K draws)."""

    cos_ste: float
    relvar_ste: float
    cos_through: float
    relvar_through: float
    sens_weights: float
    sens_outputs: float
    sens_weights_layers: list[float]
    sens_outputs_layers: list[float]
    #: max |logits(STE forward) − logits(through forward)| over draws: both must be the same chip.
    forward_mismatch: float


def diagnose_setting(
    model: nn.Module, pc: PerturbationClass, strength: float, x: torch.Tensor, y: torch.Tensor,
    g_clean: list[torch.Tensor], draws: int, seed: int, tau: float = D.TAU_W, gate_pass: float = D.GATE_PASS,
    bar=None,
) -> Diagnostics:
    """K chip instances of ``pc`` at ``strength``: per instance the STE gradient (the trainer's
    forward) and the through gradient of the same instance."""
    ctx = make_context(pc, strength, seed)
    weights = analog_weights(model)
    ste, through, mismatch = [], [], 0.0
    out_pass: dict[str, list[float]] = {}
    model.train()  # analog layers run their noisy path in training mode (no dropout/BN in the zoo)
    try:
        for _ in range(draws):
            ctx.new_batch(1.0)
            state, np_state = ctx.generator.get_state(), copy.deepcopy(ctx.np_rng)
            H.attach(model, ctx)
            logits = model(x)
            ste.append([g.detach() for g in torch.autograd.grad(F.cross_entropy(logits, y), weights)])
            ctx.generator.set_state(state)
            ctx.np_rng = np_state
            gates: dict[str, list[torch.Tensor]] = {}
            with through_hooks(model, ctx, gates):
                logits_t = model(x)
            through.append([g.detach() for g in torch.autograd.grad(F.cross_entropy(logits_t, y), weights)])
            mismatch = max(mismatch, float((logits.detach() - logits_t.detach()).abs().max()))
            for name, gs in gates.items():
                if gs:
                    out_pass.setdefault(name, []).append(
                        float(sum(D.pass_fraction(g, gate_pass) * g.numel() for g in gs) / sum(g.numel() for g in gs)))
            if bar is not None:
                bar.update(1)
    finally:
        H.attach(model, None)
        model.eval()
    ste_flat = torch.stack([D.flatten(g) for g in ste])
    thr_flat = torch.stack([D.flatten(g) for g in through])
    clean_flat = D.flatten(g_clean)
    sens_w, sens_w_layers = D.weight_sensitivity(through, g_clean, tau)
    names = [n for n, _ in H.analog_layers(model)]
    out_layers = [float(np.mean(out_pass[n])) if n in out_pass else 1.0 for n in names]
    return Diagnostics(
        cos_ste=D.consistency(ste_flat, clean_flat),
        relvar_ste=D.relative_variance(ste_flat),
        cos_through=D.consistency(thr_flat, clean_flat),
        relvar_through=D.relative_variance(thr_flat),
        sens_weights=sens_w,
        sens_outputs=float(np.mean(out_layers)),
        sens_weights_layers=sens_w_layers,
        sens_outputs_layers=out_layers,
        forward_mismatch=mismatch,
    )


def minibatch_relative_variance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> float:
    """Reference scale for the relative variance: the clean gradient's relative variance across
    disjoint minibatches of the training batch size (the noise plain SGD already lives with)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    grads = [D.flatten(clean_gradient(model, x[perm[i:i + batch]], y[perm[i:i + batch]]))
             for i in range(0, len(x) - batch + 1, batch)]
    return D.relative_variance(torch.stack(grads))


# --------------------------------------------------------------------------- accuracy under a class
@torch.no_grad()
def accuracy_under(model: nn.Module, pc: PerturbationClass, strength: float, x: torch.Tensor, y: torch.Tensor,
                   n_chips: int, seed: int) -> tuple[float, float]:
    """(mean, std) accuracy over ``n_chips`` chip instances of ``pc`` at ``strength``, in the HWA
    torch emulation (the trainer's own noisy forward). The same seed gives the same draws for
    every model of the same architecture (paired comparisons)."""
    ctx = make_context(pc, strength, seed)
    H.attach(model, ctx)
    model.train()
    accs = []
    try:
        for _ in range(n_chips):
            ctx.new_batch(1.0)
            accs.append(float((model(x).argmax(1) == y).float().mean()))
    finally:
        H.attach(model, None)
        model.eval()
    return float(np.mean(accs)), float(np.std(accs))


# --------------------------------------------------------------------------- the study
@dataclass
class StudyConfig:
    arch: str = "cnn"
    plain_epochs: int = 60
    #: The diagnostics run on the plain recipe trained for this many epochs (its own cosine
    #: schedule): a model in the middle of learning, where the clean gradient carries signal. At
    #: the converged model the clean gradient is ≈ 0 (buried in minibatch noise) and cosines to
    #: it are arbitrary; those are measured too, at the training strengths, for reference.
    diag_epochs: int = 3
    hwa_epochs: int = 30
    hwa_seeds: int = 2
    draws: int = 16
    batch: int = 256
    n_chips: int = 10
    seed: int = 0
    #: Training strength = the weakest sweep strength at which the plain model loses ≥ pick_gap
    #: accuracy on the validation split (else the strongest).
    pick_gap: float = 0.05
    classes: tuple[str, ...] = tuple(CLASSES)
    #: Per-class sweep overrides (tests, --quick).
    strengths: dict[str, tuple[float, ...]] = field(default_factory=dict)
    rules: D.Rules = field(default_factory=D.Rules)
    tau: float = D.TAU_W
    gate_pass: float = D.GATE_PASS
    max_steps: int | None = None
    progress: bool = True
    control: bool = True

    def sweep(self, key: str) -> tuple[float, ...]:
        return tuple(self.strengths.get(key, CLASSES[key].strengths))


QUICK = dict(plain_epochs=30, hwa_epochs=12, hwa_seeds=1, draws=6, n_chips=4, batch=128)


def _tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    s = load_split(split)
    return torch.from_numpy(s.x), torch.from_numpy(s.y)


def run_study(cfg: StudyConfig) -> dict:
    """Run everything; returns the JSON-able results (no files written)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    x_tr, y_tr = _tensors("train")
    x_va, y_va = _tensors("val")
    x_te, y_te = _tensors("test")
    pick = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.batch]
    xb, yb = x_tr[pick], y_tr[pick]
    timings: dict[str, float] = {}

    # 1. the user's model: plain (floating-point) training; and a partly trained one
    t0 = time.perf_counter()
    plain_recipe = replace(T.RECIPES[f"{cfg.arch}-plain"], epochs=cfg.plain_epochs, seed=cfg.seed)
    plain = T.train(plain_recipe, progress=cfg.progress, desc=f"{cfg.arch}-plain",
                    max_steps=cfg.max_steps).model
    early = T.train(replace(plain_recipe, epochs=cfg.diag_epochs), progress=cfg.progress,
                    desc=f"{cfg.arch}-plain {cfg.diag_epochs} ep", max_steps=cfg.max_steps).model
    timings["plain_training_s"] = time.perf_counter() - t0
    acc_clean_te = T.accuracy(plain, x_te, y_te)
    acc_clean_va = T.accuracy(plain, x_va, y_va)

    # 2. diagnostics over every class and strength
    t0 = time.perf_counter()
    g_early = clean_gradient(early, xb, yb)
    rv_sgd = {"checkpoint": minibatch_relative_variance(early, x_tr, y_tr, plain_recipe.batch_size, cfg.seed),
              "trained": minibatch_relative_variance(plain, x_tr, y_tr, plain_recipe.batch_size, cfg.seed)}
    settings = [(k, s) for k in cfg.classes for s in cfg.sweep(k)]
    diag: dict[str, list[dict]] = {k: [] for k in cfg.classes}

    def run_diag(model: nn.Module, g_clean: list[torch.Tensor], k: str, s: float, bar) -> dict:
        bar.set_postfix_str(f"{k} {CLASSES[k].fmt(s)}")
        d = diagnose_setting(model, CLASSES[k], s, xb, yb, g_clean, cfg.draws, cfg.seed + 1, cfg.tau, cfg.gate_pass, bar)
        if d.forward_mismatch > 1e-3:
            raise RuntimeError(f"{k} at {s}: the through forward left the trainer's chip instance "
                               f"(|Δlogits| = {d.forward_mismatch:.3g}); models.hwa changed?")
        return {"strength": s, **asdict(d)}

    with tqdm(total=len(settings) * cfg.draws, desc="diagnostics", unit="draw", disable=not cfg.progress) as bar:
        for k, s in settings:
            diag[k].append(run_diag(early, g_early, k, s, bar))
    timings["diagnostics_s"] = time.perf_counter() - t0

    # 3. the plain model under every setting; pick the training strengths on the validation split
    t0 = time.perf_counter()
    plain_acc: dict[str, list[dict]] = {k: [] for k in cfg.classes}
    for k, s in tqdm(settings, desc="evaluate plain", disable=not cfg.progress):
        va = accuracy_under(plain, CLASSES[k], s, x_va, y_va, cfg.n_chips, cfg.seed + 2)
        te = accuracy_under(plain, CLASSES[k], s, x_te, y_te, cfg.n_chips, cfg.seed + 3)
        plain_acc[k].append({"strength": s, "val": va[0], "test": te[0], "test_std": te[1]})
    train_strength = {}
    for k in cfg.classes:
        chosen = cfg.sweep(k)[-1]
        for row in plain_acc[k]:
            if acc_clean_va - row["val"] >= cfg.pick_gap:
                chosen = row["strength"]
                break
        train_strength[k] = chosen
    timings["evaluate_plain_s"] = time.perf_counter() - t0

    # 3b. reference: the same diagnostics at the converged model, at the training strengths
    t0 = time.perf_counter()
    g_plain = clean_gradient(plain, xb, yb)
    diag_trained: dict[str, dict] = {}
    with tqdm(total=len(cfg.classes) * cfg.draws, desc="diagnostics (trained)", unit="draw",
              disable=not cfg.progress) as bar:
        for k in cfg.classes:
            diag_trained[k] = run_diag(plain, g_plain, k, train_strength[k], bar)
    timings["diagnostics_trained_s"] = time.perf_counter() - t0

    # 4. HWA under each class alone (and the control: the same recipe on an ideal chip)
    t0 = time.perf_counter()
    runs = [(k, CLASSES[k], train_strength[k]) for k in cfg.classes]
    if cfg.control:
        runs.append(("none", CONTROL, 0.0))
    hwa_acc: dict[str, list[dict]] = {}
    hwa_seconds: dict[str, float] = {}
    for key, pc, s in tqdm(runs, desc="HWA per class", disable=not cfg.progress):
        per_seed: list[dict[str, list[float]]] = []
        t_run = time.perf_counter()
        for j in range(cfg.hwa_seeds):
            recipe = replace(T.RECIPES[f"{cfg.arch}-hwa"], epochs=cfg.hwa_epochs, seed=cfg.seed + 10 + j,
                             ramp_epochs=max(1, round(cfg.hwa_epochs / 6)),
                             noise=H.HwaConfig(profile="ideal", gdc=False, mode="ste"))
            with trainer_context(context_class(pc, s)):
                res = T.train(recipe, init=plain.state_dict(), teacher=plain if recipe.distill > 0 else None,
                              progress=cfg.progress, desc=f"hwa {key} {pc.fmt(s)}", max_steps=cfg.max_steps)
            for name, p in plain.named_parameters():  # the trainer froze its teacher
                p.requires_grad_(not name.endswith("input_range"))
            model = res.model
            accs: dict[str, list[float]] = {}
            for k in cfg.classes:  # every model is evaluated on every sweep point of its own class;
                # the control on all classes
                if key != "none" and k != key:
                    continue
                accs[k] = [accuracy_under(model, CLASSES[k], s2, x_te, y_te, cfg.n_chips, cfg.seed + 3)[0]
                           for s2 in cfg.sweep(k)]
            accs["clean"] = [T.accuracy(model, x_te, y_te)]
            per_seed.append(accs)
        hwa_seconds[key] = time.perf_counter() - t_run
        hwa_acc[key] = {k: [float(v) for v in np.mean([p[k] for p in per_seed], axis=0)] for k in per_seed[0]}
    timings["hwa_training_s"] = time.perf_counter() - t0

    # 5. verdicts
    rows = []
    for k in cfg.classes:
        pc = CLASSES[k]
        s = train_strength[k]
        i = list(cfg.sweep(k)).index(s)
        d = diag[k][i]
        ok, why = D.diagnostic_verdict(d["cos_ste"], d["relvar_ste"], d["sens_weights"], d["sens_outputs"], cfg.rules)
        a_plain = plain_acc[k][i]["test"]
        a_hwa = hwa_acc[k][k][i]
        frac, outcome = D.gap_recovered(acc_clean_te, a_plain, a_hwa, cfg.rules)
        a_ctrl = hwa_acc["none"][k][i] if cfg.control else float("nan")
        frac_ctrl = D.gap_recovered(acc_clean_te, a_plain, a_ctrl, cfg.rules)[0] if cfg.control else float("nan")
        trained = outcome == "closes" if outcome != "no gap" else None
        rows.append({
            "class": k, "label": pc.label, "strength": s, "strength_label": pc.fmt(s),
            "cos_ste": d["cos_ste"], "relvar_ste": d["relvar_ste"], "sens_weights": d["sens_weights"],
            "sens_outputs": d["sens_outputs"], "diagnostics_compensable": ok, "diagnostics_reasons": why,
            "acc_clean": acc_clean_te, "acc_plain": a_plain, "acc_hwa": a_hwa, "acc_control": a_ctrl,
            "acc_hwa_clean": hwa_acc[k]["clean"][0],
            "gap": acc_clean_te - a_plain, "recovered": frac, "recovered_control": frac_ctrl,
            "outcome": outcome, "agree": None if trained is None else (trained == ok),
        })
    seconds = time.perf_counter() - t_start
    return {
        "arch": cfg.arch, "config": _config_json(cfg), "seconds": seconds, "timings": timings,
        "threads": torch.get_num_threads(), "acc_clean_test": acc_clean_te, "acc_clean_val": acc_clean_va,
        "acc_checkpoint_train": T.accuracy(early, x_tr, y_tr),
        "minibatch_relvar": rv_sgd, "layers": [n for n, _ in H.analog_layers(plain)],
        "sweeps": {k: list(cfg.sweep(k)) for k in cfg.classes},
        "strength_labels": {k: [CLASSES[k].fmt(s) for s in cfg.sweep(k)] for k in cfg.classes},
        "knobs": {k: CLASSES[k].knob for k in cfg.classes},
        "diagnostics": diag, "diagnostics_trained": diag_trained, "plain_accuracy": plain_acc, "train_strength": train_strength,
        "hwa_accuracy": hwa_acc, "hwa_seconds": hwa_seconds, "table": rows,
    }


def _config_json(cfg: StudyConfig) -> dict:
    d = asdict(cfg)
    d["classes"] = list(cfg.classes)
    d["strengths"] = {k: list(v) for k, v in cfg.strengths.items()}
    return d


# --------------------------------------------------------------------------- report
def _f(x: float, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{nd}f}"


def _g(x: float) -> str:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return "∞" if math.isinf(x) else "–"
    return f"{x:.2g}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        col[1].axhline(results["minibatch_relvar"]["checkpoint"], color="tab:green", lw=0.8, ls="-.", label="SGD minibatch")
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
    for i, name in enumerate(("cosine to clean grad.", "rel. gradient variance", "sensitive fraction", "test accuracy")):
        axes[i, 0].set_ylabel(name)
        axes[i, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{results['arch']}: gradient diagnostics vs HWA outcome per perturbation class "
                 f"(K = {results['config']['draws']} chips; red line: HWA training strength)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _borderline(row: dict, rules: dict, margin: float = 0.05) -> bool:
    """True if every failing diagnostic misses its threshold by less than ``margin`` (relative)."""
    checks = [(row["cos_ste"], rules["cos_min"], True), (row["relvar_ste"], rules["relvar_max"], False),
              (row["sens_weights"], rules["sens_min"], True), (row["sens_outputs"], rules["sens_min"], True)]
    failing = [(v, t, ge) for v, t, ge in checks if not (v >= t if ge else v <= t)]
    return bool(failing) and all(abs(v - t) < margin * t for v, t, _ in failing)


def notes(results: dict) -> list[str]:
    """One generated sentence per class: what the diagnostics and the training run say."""
    out, absorb, fix, disputed, none = [], [], [], [], []
    for r in results["table"]:
        head = f"- **{r['label']}** at {r['strength_label']}: "
        diag = ("the diagnostics pass" if r["diagnostics_compensable"]
                else "the diagnostics fail (" + "; ".join(r["diagnostics_reasons"]) + ")")
        if not r["diagnostics_compensable"] and _borderline(r, results["config"]["rules"]):
            diag += ", narrowly: every failing metric is within 5 % of its threshold"
        spec = r["acc_clean"] - r["acc_hwa_clean"]
        if r["outcome"] == "no gap":
            out.append(head + f"{diag}; the plain model loses less than {100 * results['config']['rules']['min_gap']:g} pp "
                       "even here, so there is nothing to compensate at the swept strengths.")
            none.append(r["label"])
            continue
        text = f"{diag}; HWA recovers {100 * r['recovered']:.0f} % of the {100 * r['gap']:.1f} pp gap"
        if not math.isnan(r["recovered_control"]):
            text += f" (recipe alone: {100 * r['recovered_control']:.0f} %)"
        if spec > 0.01:
            text += (f", but the HWA model loses {100 * spec:.1f} pp of clean accuracy ({r['acc_hwa_clean']:.3f}): "
                     "it fits this distortion at this strength rather than becoming robust to it")
        text += "." if r["agree"] else " — **disagreement**."
        out.append(head + text)
        if not r["agree"]:
            disputed.append(r["label"])
        elif r["diagnostics_compensable"]:
            absorb.append(r["label"])
        else:
            fix.append(r["label"])
    summary = [f"HWA absorbs (both agree): {', '.join(absorb) or 'none'}; needs the hardware fixed (both agree): "
               f"{', '.join(fix) or 'none'}; disagreement: {', '.join(disputed) or 'none'}; no gap at the swept "
               f"strengths: {', '.join(none) or 'none'}.", ""]
    return summary + out


def markdown(results: dict, command: str) -> str:
    cfg, rules = results["config"], results["config"]["rules"]
    lines = [
        "# Which non-idealities can hardware-aware training compensate?", "",
        "Generated by `models/diagnose.py`; do not edit by hand.", "",
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
        f"- Chips: for each class, `chipsim.get_profile(\"ideal\", gdc=\"off\", **fields)` with only that class on; "
        f"read out at 1 y (matters for read noise and drift). Accuracies are from the torch emulation HWA trains with "
        f"(`models.hwa`, the chip's own formulas), mean over {cfg['n_chips']} chip instances (same draws for every model).",
        f"- Diagnostics on a fixed batch of {cfg['batch']} training images, K = {cfg['draws']} chip instances per point, "
        f"loss = cross-entropy, gradients w.r.t. the analog weights of all layers.",
        f"- HWA check: the `{results['arch']}-hwa` recipe (`models.train.train`: starts from the plain model, distils from it, "
        f"noise ramp, per-channel weight clipping, learned DAC ranges), {cfg['hwa_epochs']} epochs, "
        f"{cfg['hwa_seeds']} seed(s), under one class alone at the *training strength*: the weakest sweep point at which "
        f"the plain model loses ≥ {100 * cfg['pick_gap']:g} pp on the validation split (else the strongest).",
        "",
        "## Result", "",
        "| class | trained at | cos (STE) | rel. var (STE) | sens. weights | sens. outputs | diagnostics say | "
        "clean | plain under class | HWA under class | recipe-only | gap recovered | training says | agree | HWA model, clean |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results["table"]:
        verdict = "compensable" if r["diagnostics_compensable"] else "fix hardware (" + "; ".join(r["diagnostics_reasons"]) + ")"
        outcome = {"closes": "closes", "open": "does not close", "no gap": "no gap to close"}[r["outcome"]]
        agree = {True: "yes", False: "**NO**", None: "–"}[r["agree"]]
        lines.append(
            f"| {r['label']} | {r['strength_label']} | {_f(r['cos_ste'])} | {_g(r['relvar_ste'])} | {_f(r['sens_weights'])} | "
            f"{_f(r['sens_outputs'])} | {verdict} | {_f(r['acc_clean'], 3)} | {_f(r['acc_plain'], 3)} | {_f(r['acc_hwa'], 3)} | "
            f"{_f(r['acc_control'], 3)} | {_f(100 * r['recovered'], 0) + ' %' if not math.isnan(r['recovered']) else '–'} | "
            f"{outcome} | {agree} | {_f(r['acc_hwa_clean'], 3)} |")
    lines += [
        "", "![diagnostics](diagnose.png)", "",
        "*recipe-only*: the same HWA recipe trained on an ideal chip (no perturbation), evaluated under the class: "
        "what weight clipping, distillation and more epochs buy without training under the perturbation. "
        "*HWA model, clean*: the model trained under the class, evaluated without any perturbation (a drop below "
        "*clean* means it learned this particular distortion rather than robustness to it).", "",
        "## Reading the table", "",
        *notes(results), "",
        "## Rules", "",
        f"- **Diagnostics say compensable** iff, at the training strength, cos(STE) ≥ {rules['cos_min']:g}, "
        f"relative variance (STE) ≤ {rules['relvar_max']:g} and both sensitivities ≥ {rules['sens_min']:g}.",
        f"- **Training closes the gap** iff HWA recovers ≥ {100 * rules['close_frac']:g} % of the gap: "
        f"(acc_HWA − acc_plain)/(acc_clean − acc_plain) ≥ {rules['close_frac']:g}, all under the class except acc_clean "
        f"(plain model, no perturbation), test split. A gap below {100 * rules['min_gap']:g} pp is *no gap*: nothing to "
        "predict, no agreement mark.",
        "- **agree** compares the two; **NO** marks a class where diagnostics and training disagree.",
        "- The thresholds were fixed before the runs: cos 0.9 keeps the mean update within ~25° of the clean one; "
        "rel. var 1 means a single chip's gradient carries at least as much signal as noise (plain SGD's own "
        "minibatch noise is of that order, see below); 0.5 means at least half of the gradient paths are alive.", "",
        "## Metrics", "",
        "Two gradients per chip instance (the same random draws for both):", "",
        "- **STE**: exactly the gradient HWA trains with (`models.hwa`, extended straight-through estimator): the noisy "
        "forward's value, the clean layer's gradient at the noisy activations. The perturbation itself is invisible to "
        "the backward pass, so this gradient cannot show degeneracy.",
        "- **through**: autograd through the chip's own perturbation model (chipsim's device and periphery formulas on "
        "torch, value-identical to the trainer's noisy forward): stuck devices pass nothing, the DAC passes gradient only "
        "inside ±r, the ADC passes its derivative *in expectation over its own output noise* "
        "(`models.diagnostics.adc_expected_derivative`: ≈ 1 on a fine grid, ≈ 0 in the zero bin and in saturation, "
        "spikes at the thresholds of a coarse grid), drift and programming noise scale it. Noise amplitudes and the "
        "digital column scales (fixed at programming) are held constant.", "",
        f"- **cos**: cosine between the mean of the K gradients and the clean gradient (consistency). Uses STE.",
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
        "gives the same gradient (IR drop is deterministic; a fully dead ADC quantises the noise away).", "",
        "## All sweep points", "",
        "| class | strength | cos STE | cos through | rel. var STE | rel. var through | sens. weights | sens. outputs | "
        "diagnostics | plain acc. | HWA acc. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for k in results["sweeps"]:
        for i, d in enumerate(results["diagnostics"][k]):
            ok, _ = D.diagnostic_verdict(d["cos_ste"], d["relvar_ste"], d["sens_weights"], d["sens_outputs"], D.Rules(**rules))
            mark = " ◀" if d["strength"] == results["train_strength"][k] else ""
            lines.append(
                f"| {CLASSES[k].label} | {results['strength_labels'][k][i]}{mark} | {_f(d['cos_ste'])} | {_f(d['cos_through'])} | "
                f"{_g(d['relvar_ste'])} | {_g(d['relvar_through'])} | {_f(d['sens_weights'])} | {_f(d['sens_outputs'])} | "
                f"{'compensable' if ok else 'fix hardware'} | {_f(results['plain_accuracy'][k][i]['test'], 3)} | "
                f"{_f(results['hwa_accuracy'][k][k][i], 3)} |")
    lines += ["", "◀ = training strength. *HWA acc.*: the model trained under the class at ◀, evaluated at every "
              "strength of its class.", "",
              "## Why a checkpoint", "",
              "Consistency is about the direction training moves in, so it is measured where the clean gradient has one. "
              f"At the converged model the clean gradient is close to zero: its relative variance across minibatches of "
              f"64 is {results['minibatch_relvar']['trained']:.2g} (vs {results['minibatch_relvar']['checkpoint']:.2g} at "
              "the checkpoint), and any systematic effect of a perturbation (e.g. the curvature term that noise adds to "
              "the expected loss, which is what HWA exploits) dominates the cosine. For reference, the same diagnostics "
              "at the converged model, at the training strengths:", "",
              "| class | strength | cos STE | rel. var STE | sens. weights | sens. outputs |",
              "|---|---|---:|---:|---:|---:|"]
    for k in results["sweeps"]:
        d = results["diagnostics_trained"][k]
        lines.append(f"| {CLASSES[k].label} | {CLASSES[k].fmt(d['strength'])} | {_f(d['cos_ste'])} | {_g(d['relvar_ste'])} | "
                     f"{_f(d['sens_weights'])} | {_f(d['sens_outputs'])} |")
    lines += ["", "## Sweeps", ""]
    for k in results["sweeps"]:
        lines.append(f"- **{CLASSES[k].label}**: {results['knobs'][k]}; strengths {', '.join(results['strength_labels'][k])}.")
    lines += ["", "## Caveats", "",
              "- One small model on one small dataset; the sweeps' strong ends are far beyond the published chip "
              "(×1, 0.1 % faults, 8-bit ADC), and which strength gets trained is decided by the 5-pp rule, not by "
              "what a real chip shows.",
              "- Each HWA run trains at one strength and, for read noise and drift, one age (1 y, GDC off). "
              "\"Closes\" is judged at that point; the *HWA acc.* column shows what the model does elsewhere in its "
              "class, and *HWA model, clean* what it gives up without the perturbation.",
              f"- The diagnostics use the plain recipe's {cfg['diag_epochs']}-epoch checkpoint, the HWA runs start from the converged "
              "model: the diagnostics describe the gradient field of the class, not one particular fine-tuning run.",
              "- The *through* gradient's ADC term is a modelling choice (the derivative of the expected ADC output "
              "over the noise in front of it); without noise a quantiser's derivative is zero almost everywhere and "
              "any non-zero surrogate is a choice too.",
              "- Accuracies come from the torch emulation HWA trains with, not from the chipsim ONNX runtime that "
              "serves chips; both evaluate the same formulas.", "",
              "Per-layer sensitivities (layers: " + ", ".join(f"`{n}`" for n in results["layers"]) +
              ") and every number above are in `results.json`.", ""]
    return "\n".join(lines)


def write_report(results: dict, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "diagnose.png")
    (out / "README.md").write_text(markdown(results, command))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(a for a in ("mlp", "cnn", "transformer")), help="zoo architecture")
    ap.add_argument("--quick", action="store_true", help=f"coarse, fast smoke run ({QUICK}); too short for meaningful verdicts")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--draws", type=int, default=None, help="chip instances K per diagnostic point (default 16)")
    ap.add_argument("--hwa-epochs", type=int, default=None)
    ap.add_argument("--hwa-seeds", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma-separated subset of " + ",".join(CLASSES))
    ap.add_argument("--render", action="store_true",
                    help="only re-render README.md and diagnose.png from OUT/results.json (no runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: small kernels gain nothing from more, and a shared machine makes them spin)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise SystemExit(f"--classes: unknown {unknown}; known: {list(CLASSES)}")
    cfg = StudyConfig(arch=args.model, seed=args.seed, classes=classes, **(QUICK if args.quick else {}))
    for name in ("draws", "hwa_epochs", "hwa_seeds"):
        if getattr(args, name) is not None:
            cfg = replace(cfg, **{name: getattr(args, name)})
    if args.render:
        results = json.loads((args.out / "results.json").read_text())
        write_report(results, args.out, results["command"])
        print(f"re-rendered {args.out}/README.md and diagnose.png from results.json")
        return
    results = run_study(cfg)
    results["command"] = "python -m models.diagnose " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    write_report(results, args.out, results["command"])
    print(f"wrote {args.out}/README.md, diagnose.png, results.json in {results['seconds'] / 60:.1f} min")
    for r in results["table"]:
        print(f"{r['label']:>20} @ {r['strength_label']:<14} diagnostics: "
              f"{'compensable' if r['diagnostics_compensable'] else 'fix hardware':<12} training: {r['outcome']:<8} "
              f"agree: {r['agree']}")


if __name__ == "__main__":
    main()
