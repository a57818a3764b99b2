"""Which chip non-idealities can hardware-aware training compensate, and which need the hardware fixed?

    python -m studies.diagnose cnn                          # full study → reports/diagnose/
    python -m studies.diagnose mlp --quick --out /tmp/diag  # a fast, coarse run

For each of the six perturbation classes of DESIGN §3.3 (read noise, variability, drift, stuck-at
faults, IR drop, ADC discretisation; :mod:`studies.perturbations`) the command builds chipsim
profiles with *only that class* switched on (``chipsim.get_profile("ideal", gdc="off", **fields)``)
over a sweep of strengths and

1. measures three gradient diagnostics (DESIGN §8, :mod:`studies.gradient_diagnostics`) of the plain
   (floating-point trained) model on a fixed batch of digits, over K chip instances:
   gradient expectation consistency and relative gradient variance of the HWA gradient
   (the trainer's extended straight-through estimator, ``models.hwa``), and the fraction of
   weights and analog output units through which the hardware lets gradient pass at all
   (the gradient *through* the perturbation model, see below);
2. checks the prediction: evaluates the plain model under each strength, trains with the HWA
   recipe (``models.train.train``) under each class alone at a strength where the plain model
   loses accuracy, and asks whether HWA recovers at least half of the gap;
3. writes ``README.md`` (tables), ``diagnose.png`` and ``results.json`` into ``--out``
   (:mod:`studies.diagnose_report`).

Two gradients per chip instance, the same draws for both:

* **STE** — exactly what HWA trains with (``GradientMode.STE``): the value of the noisy forward,
  the gradient of the clean layer evaluated at the noisy activations. Used for consistency and
  variance: that is the update HWA follows.
* **through** — ``GradientMode.THROUGH_CHIP``: autograd through the chip's own perturbation model
  (chipsim's device and periphery formulas on torch): stuck devices pass no gradient, the DAC
  clips, the ADC passes its expected derivative over its own output noise
  (:func:`models.torch_chip.adc_expected_derivative`: zero in dead zones and saturation), drift and
  programming noise scale it. Noise *amplitudes* (their dependence on the weights is a zero-mean
  term) and the digital column scales (fixed at programming, DESIGN §3.1) are held constant. Used
  for sensitivity: the STE bypasses the perturbation in the backward pass, so only this gradient
  can show degeneracy.

The accuracies are measured in the torch emulation of the chip that HWA trains with (the same
formulas as chipsim's runtime), not on the ONNX runtime: this is a training study.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import outputs
from models.data import load_split
from models.hwa import ChipSchedule, HwaConfig, HwaContext, analog_layers, attach
from models.torch_chip import GradientMode
from models.train import RECIPES, Recipe, accuracy, emulated_accuracy, train
from studies import gradient_diagnostics
from studies.diagnose_report import write_report
from studies.perturbations import CLASSES, CONTROL, PerturbationClass

DEFAULT_OUT = outputs.REPO / "reports" / "diagnose"


# --------------------------------------------------------------------------- the chip of a class
def class_schedule(pc: PerturbationClass, strength: float) -> ChipSchedule:
    """The chip ``pc`` at ``strength``, read at the class's age. The trainer's noise ramp
    ρ ∈ [0, 1] becomes strength ρ·s for ramped classes (quantisation is not ramped)."""
    return ChipSchedule(profile_at=lambda ramp: pc.profile(strength * ramp if pc.ramp else strength), age_s=pc.age_s)


def make_context(pc: PerturbationClass, strength: float, seed: int) -> HwaContext:
    """An HWA context whose every batch is a fresh chip instance of ``pc`` at ``strength``."""
    return HwaContext(
        HwaConfig(profile="ideal", gdc=False, mode=GradientMode.STE),
        torch.Generator().manual_seed(seed),
        schedule=class_schedule(pc, strength),
    )


# --------------------------------------------------------------------------- diagnostics of one setting
def analog_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for _, m in analog_layers(model)]


def clean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    attach(model, None)
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


def _gradient(
    model: nn.Module, ctx: HwaContext, mode: GradientMode, x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, gradient w.r.t. ``weights``) of the cross-entropy through the chip of ``ctx``."""
    ctx.config = replace(ctx.config, mode=mode)
    logits = model(x)
    return logits.detach(), [g.detach() for g in torch.autograd.grad(F.cross_entropy(logits, y), weights)]


def diagnose_setting(
    model: nn.Module,
    pc: PerturbationClass,
    strength: float,
    x: torch.Tensor,
    y: torch.Tensor,
    g_clean: list[torch.Tensor],
    draws: int,
    seed: int,
    tau: float = gradient_diagnostics.TAU_W,
    gate_pass: float = gradient_diagnostics.GATE_PASS,
    bar=None,
) -> Diagnostics:
    """K chip instances of ``pc`` at ``strength``: per instance the STE gradient (the trainer's
    forward) and the through gradient of the same instance (the generators are rewound)."""
    ctx = make_context(pc, strength, seed)
    weights = analog_weights(model)
    names = {m: n for n, m in analog_layers(model)}
    ste, through, mismatch = [], [], 0.0
    out_pass: dict[str, list[float]] = {}
    model.train()  # analog layers run their noisy path in training mode (no dropout/BN in the zoo)
    attach(model, ctx)
    try:
        for _ in range(draws):
            ctx.new_batch(1.0)
            state, np_state = ctx.generator.get_state(), copy.deepcopy(ctx.np_rng)
            logits, g = _gradient(model, ctx, GradientMode.STE, x, y, weights)
            ste.append(g)
            ctx.generator.set_state(state)
            ctx.np_rng = np_state
            ctx.adc_gates = {}
            logits_t, g = _gradient(model, ctx, GradientMode.THROUGH_CHIP, x, y, weights)
            through.append(g)
            mismatch = max(mismatch, float((logits - logits_t).abs().max()))
            for layer, gs in ctx.adc_gates.items():
                if gs:
                    out_pass.setdefault(names[layer], []).append(
                        float(
                            sum(gradient_diagnostics.pass_fraction(g, gate_pass) * g.numel() for g in gs)
                            / sum(g.numel() for g in gs)
                        )
                    )
            ctx.adc_gates = None
            if bar is not None:
                bar.update(1)
    finally:
        attach(model, None)
        model.eval()
    ste_flat = torch.stack([gradient_diagnostics.flatten(g) for g in ste])
    thr_flat = torch.stack([gradient_diagnostics.flatten(g) for g in through])
    clean_flat = gradient_diagnostics.flatten(g_clean)
    sens_w, sens_w_layers = gradient_diagnostics.weight_sensitivity(through, g_clean, tau)
    out_layers = [float(np.mean(out_pass[n])) if n in out_pass else 1.0 for n in names.values()]
    return Diagnostics(
        cos_ste=gradient_diagnostics.consistency(ste_flat, clean_flat),
        relvar_ste=gradient_diagnostics.relative_variance(ste_flat),
        cos_through=gradient_diagnostics.consistency(thr_flat, clean_flat),
        relvar_through=gradient_diagnostics.relative_variance(thr_flat),
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
    grads = [
        gradient_diagnostics.flatten(clean_gradient(model, x[perm[i : i + batch]], y[perm[i : i + batch]]))
        for i in range(0, len(x) - batch + 1, batch)
    ]
    return gradient_diagnostics.relative_variance(torch.stack(grads))


def accuracy_under(
    model: nn.Module, pc: PerturbationClass, strength: float, x: torch.Tensor, y: torch.Tensor, n_chips: int, seed: int
) -> tuple[float, float]:
    """(mean, std) accuracy over ``n_chips`` chip instances of ``pc`` at ``strength``, in the HWA
    torch emulation (the trainer's own noisy forward). The same seed gives the same draws for
    every model of the same architecture (paired comparisons)."""
    return emulated_accuracy(model, x, y, make_context(pc, strength, seed), n_chips)


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
    rules: gradient_diagnostics.Rules = field(default_factory=gradient_diagnostics.Rules)
    tau: float = gradient_diagnostics.TAU_W
    gate_pass: float = gradient_diagnostics.GATE_PASS
    max_steps: int | None = None
    progress: bool = True
    control: bool = True

    def sweep(self, key: str) -> tuple[float, ...]:
        return tuple(self.strengths.get(key, CLASSES[key].strengths))

    def settings(self) -> list[tuple[str, float]]:
        """Every (class, strength) of the sweeps."""
        return [(k, s) for k in self.classes for s in self.sweep(k)]


QUICK = dict(plain_epochs=30, hwa_epochs=12, hwa_seeds=1, draws=6, n_chips=4, batch=128)


@dataclass
class _Data:
    """The digits splits as tensors, and the fixed training batch the diagnostics run on."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    x_te: torch.Tensor
    y_te: torch.Tensor
    xb: torch.Tensor
    yb: torch.Tensor

    @classmethod
    def load(cls, batch: int, seed: int) -> _Data:
        tr, va, te = (load_split(s) for s in ("train", "val", "test"))
        x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
        pick = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:batch]
        return cls(
            x_tr,
            y_tr,
            torch.from_numpy(va.x),
            torch.from_numpy(va.y),
            torch.from_numpy(te.x),
            torch.from_numpy(te.y),
            x_tr[pick],
            y_tr[pick],
        )


def _diagnose(
    cfg: StudyConfig, data: _Data, model: nn.Module, g_clean: list[torch.Tensor], k: str, s: float, bar
) -> dict:
    """The diagnostics of class ``k`` at strength ``s``, as a results row."""
    bar.set_postfix_str(f"{k} {CLASSES[k].fmt(s)}")
    d = diagnose_setting(
        model, CLASSES[k], s, data.xb, data.yb, g_clean, cfg.draws, cfg.seed + 1, cfg.tau, cfg.gate_pass, bar
    )
    if d.forward_mismatch > 1e-3:
        raise RuntimeError(
            f"{k} at {s}: the through forward left the trainer's chip instance "
            f"(|Δlogits| = {d.forward_mismatch:.3g}); models.hwa changed?"
        )
    return {"strength": s, **asdict(d)}


def _evaluate_plain(cfg: StudyConfig, data: _Data, plain: nn.Module, tqdm) -> dict[str, list[dict]]:
    """The plain model under every setting: validation and test accuracy."""
    plain_acc: dict[str, list[dict]] = {k: [] for k in cfg.classes}
    for k, s in tqdm(cfg.settings(), desc="evaluate plain", disable=not cfg.progress):
        va = accuracy_under(plain, CLASSES[k], s, data.x_va, data.y_va, cfg.n_chips, cfg.seed + 2)
        te = accuracy_under(plain, CLASSES[k], s, data.x_te, data.y_te, cfg.n_chips, cfg.seed + 3)
        plain_acc[k].append({"strength": s, "val": va[0], "test": te[0], "test_std": te[1]})
    return plain_acc


def _training_strengths(cfg: StudyConfig, plain_acc: dict[str, list[dict]], acc_clean_va: float) -> dict[str, float]:
    """Per class, the weakest strength at which the plain model loses ≥ ``pick_gap`` on the
    validation split (else the strongest)."""
    train_strength = {}
    for k in cfg.classes:
        chosen = cfg.sweep(k)[-1]
        for row in plain_acc[k]:
            if acc_clean_va - row["val"] >= cfg.pick_gap:
                chosen = row["strength"]
                break
        train_strength[k] = chosen
    return train_strength


def _hwa_run(
    cfg: StudyConfig, data: _Data, plain: nn.Module, key: str, pc: PerturbationClass, s: float
) -> dict[str, list[float]]:
    """The HWA recipe trained under ``pc`` at ``s`` (key ``none``: the control on an ideal chip),
    mean over seeds of its test accuracy on every sweep point of its class (the control: of
    every class) and without perturbation (``clean``)."""
    per_seed: list[dict[str, list[float]]] = []
    for j in range(cfg.hwa_seeds):
        recipe = replace(
            RECIPES[f"{cfg.arch}-hwa"],
            epochs=cfg.hwa_epochs,
            seed=cfg.seed + 10 + j,
            ramp_epochs=max(1, round(cfg.hwa_epochs / 6)),
            noise=HwaConfig(profile="ideal", gdc=False, mode=GradientMode.STE),
        )
        res = train(
            recipe,
            init=plain.state_dict(),
            teacher=plain if recipe.distill > 0 else None,
            progress=cfg.progress,
            desc=f"hwa {key} {pc.fmt(s)}",
            max_steps=cfg.max_steps,
            chip=class_schedule(pc, s),
        )
        for name, p in plain.named_parameters():  # the trainer froze its teacher
            p.requires_grad_(not name.endswith("input_range"))
        accs: dict[str, list[float]] = {}
        for k in cfg.classes:
            if key != "none" and k != key:
                continue
            accs[k] = [
                accuracy_under(res.model, CLASSES[k], s2, data.x_te, data.y_te, cfg.n_chips, cfg.seed + 3)[0]
                for s2 in cfg.sweep(k)
            ]
        accs["clean"] = [accuracy(res.model, data.x_te, data.y_te)]
        per_seed.append(accs)
    return {k: [float(v) for v in np.mean([p[k] for p in per_seed], axis=0)] for k in per_seed[0]}


def _verdict_rows(
    cfg: StudyConfig,
    diag: dict[str, list[dict]],
    plain_acc: dict[str, list[dict]],
    hwa_acc: dict[str, dict],
    train_strength: dict[str, float],
    acc_clean_te: float,
) -> list[dict]:
    """Per class, at its training strength: what the diagnostics say and what training did."""
    rows = []
    for k in cfg.classes:
        pc = CLASSES[k]
        s = train_strength[k]
        i = list(cfg.sweep(k)).index(s)
        d = diag[k][i]
        ok, why = gradient_diagnostics.diagnostic_verdict(
            d["cos_ste"], d["relvar_ste"], d["sens_weights"], d["sens_outputs"], cfg.rules
        )
        a_plain = plain_acc[k][i]["test"]
        a_hwa = hwa_acc[k][k][i]
        frac, outcome = gradient_diagnostics.gap_recovered(acc_clean_te, a_plain, a_hwa, cfg.rules)
        a_ctrl = hwa_acc["none"][k][i] if cfg.control else float("nan")
        frac_ctrl = (
            gradient_diagnostics.gap_recovered(acc_clean_te, a_plain, a_ctrl, cfg.rules)[0]
            if cfg.control
            else float("nan")
        )
        trained = outcome == "closes" if outcome != "no gap" else None
        rows.append(
            {
                "class": k,
                "label": pc.label,
                "strength": s,
                "strength_label": pc.fmt(s),
                "cos_ste": d["cos_ste"],
                "relvar_ste": d["relvar_ste"],
                "sens_weights": d["sens_weights"],
                "sens_outputs": d["sens_outputs"],
                "diagnostics_compensable": ok,
                "diagnostics_reasons": why,
                "acc_clean": acc_clean_te,
                "acc_plain": a_plain,
                "acc_hwa": a_hwa,
                "acc_control": a_ctrl,
                "acc_hwa_clean": hwa_acc[k]["clean"][0],
                "gap": acc_clean_te - a_plain,
                "recovered": frac,
                "recovered_control": frac_ctrl,
                "outcome": outcome,
                "agree": None if trained is None else (trained == ok),
            }
        )
    return rows


def run_study(cfg: StudyConfig) -> dict:
    """Run everything; returns the JSON-able results (no files written)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    data = _Data.load(cfg.batch, cfg.seed)
    timings: dict[str, float] = {}

    # 1. the user's model: plain (floating-point) training; and a partly trained one
    t0 = time.perf_counter()
    plain_recipe, plain, early = _train_plain(cfg)
    timings["plain_training_s"] = time.perf_counter() - t0
    acc_clean_te = accuracy(plain, data.x_te, data.y_te)
    acc_clean_va = accuracy(plain, data.x_va, data.y_va)

    # 2. diagnostics over every class and strength
    t0 = time.perf_counter()
    g_early = clean_gradient(early, data.xb, data.yb)
    rv_sgd = {
        "checkpoint": minibatch_relative_variance(early, data.x_tr, data.y_tr, plain_recipe.batch_size, cfg.seed),
        "trained": minibatch_relative_variance(plain, data.x_tr, data.y_tr, plain_recipe.batch_size, cfg.seed),
    }
    diag: dict[str, list[dict]] = {k: [] for k in cfg.classes}
    with tqdm(total=len(cfg.settings()) * cfg.draws, desc="diagnostics", unit="draw", disable=not cfg.progress) as bar:
        for k, s in cfg.settings():
            diag[k].append(_diagnose(cfg, data, early, g_early, k, s, bar))
    timings["diagnostics_s"] = time.perf_counter() - t0

    # 3. the plain model under every setting; pick the training strengths on the validation split
    t0 = time.perf_counter()
    plain_acc = _evaluate_plain(cfg, data, plain, tqdm)
    train_strength = _training_strengths(cfg, plain_acc, acc_clean_va)
    timings["evaluate_plain_s"] = time.perf_counter() - t0

    # 3b. reference: the same diagnostics at the converged model, at the training strengths
    t0 = time.perf_counter()
    g_plain = clean_gradient(plain, data.xb, data.yb)
    diag_trained: dict[str, dict] = {}
    with tqdm(
        total=len(cfg.classes) * cfg.draws, desc="diagnostics (trained)", unit="draw", disable=not cfg.progress
    ) as bar:
        for k in cfg.classes:
            diag_trained[k] = _diagnose(cfg, data, plain, g_plain, k, train_strength[k], bar)
    timings["diagnostics_trained_s"] = time.perf_counter() - t0

    # 4. HWA under each class alone (and the control: the same recipe on an ideal chip)
    t0 = time.perf_counter()
    hwa_acc, hwa_seconds = _hwa_per_class(cfg, data, plain, train_strength)
    timings["hwa_training_s"] = time.perf_counter() - t0

    # 5. verdicts
    rows = _verdict_rows(cfg, diag, plain_acc, hwa_acc, train_strength, acc_clean_te)
    seconds = time.perf_counter() - t_start
    return {
        "arch": cfg.arch,
        "config": _config_json(cfg),
        "seconds": seconds,
        "timings": timings,
        "threads": torch.get_num_threads(),
        "acc_clean_test": acc_clean_te,
        "acc_clean_val": acc_clean_va,
        "acc_checkpoint_train": accuracy(early, data.x_tr, data.y_tr),
        "minibatch_relvar": rv_sgd,
        "layers": [n for n, _ in analog_layers(plain)],
        "sweeps": {k: list(cfg.sweep(k)) for k in cfg.classes},
        "strength_labels": {k: [CLASSES[k].fmt(s) for s in cfg.sweep(k)] for k in cfg.classes},
        "knobs": {k: CLASSES[k].knob for k in cfg.classes},
        "diagnostics": diag,
        "diagnostics_trained": diag_trained,
        "plain_accuracy": plain_acc,
        "train_strength": train_strength,
        "hwa_accuracy": hwa_acc,
        "hwa_seconds": hwa_seconds,
        "table": rows,
    }


def _train_plain(cfg: StudyConfig) -> tuple[Recipe, nn.Module, nn.Module]:
    """The user's model: plain (floating-point) training, and a partly trained copy
    (``cfg.diag_epochs``); returns (recipe, trained model, partly trained model)."""
    plain_recipe = replace(RECIPES[f"{cfg.arch}-plain"], epochs=cfg.plain_epochs, seed=cfg.seed)
    plain = train(plain_recipe, progress=cfg.progress, desc=f"{cfg.arch}-plain", max_steps=cfg.max_steps).model
    early = train(
        replace(plain_recipe, epochs=cfg.diag_epochs),
        progress=cfg.progress,
        desc=f"{cfg.arch}-plain {cfg.diag_epochs} ep",
        max_steps=cfg.max_steps,
    ).model
    return plain_recipe, plain, early


def _hwa_per_class(
    cfg: StudyConfig, data: _Data, plain: nn.Module, train_strength: dict[str, float]
) -> tuple[dict[str, dict], dict[str, float]]:
    """HWA under each class alone (and the control: the same recipe on an ideal chip); returns
    the accuracies and the wall-clock seconds (s) of each run."""
    from tqdm.auto import tqdm

    runs = [(k, CLASSES[k], train_strength[k]) for k in cfg.classes]
    if cfg.control:
        runs.append(("none", CONTROL, 0.0))
    hwa_acc: dict[str, dict] = {}
    hwa_seconds: dict[str, float] = {}
    for key, pc, s in tqdm(runs, desc="HWA per class", disable=not cfg.progress):
        t_run = time.perf_counter()
        hwa_acc[key] = _hwa_run(cfg, data, plain, key, pc, s)
        hwa_seconds[key] = time.perf_counter() - t_run
    return hwa_acc, hwa_seconds


def _config_json(cfg: StudyConfig) -> dict:
    d = asdict(cfg)
    d["classes"] = list(cfg.classes)
    d["strengths"] = {k: list(v) for k, v in cfg.strengths.items()}
    return d


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(a for a in ("mlp", "cnn", "transformer")), help="zoo architecture")
    ap.add_argument(
        "--quick", action="store_true", help=f"coarse, fast smoke run ({QUICK}); too short for meaningful verdicts"
    )
    outputs.add_arguments(ap, DEFAULT_OUT)
    ap.add_argument("--draws", type=int, default=None, help="chip instances K per diagnostic point (default 16)")
    ap.add_argument("--hwa-epochs", type=int, default=None)
    ap.add_argument("--hwa-seeds", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default=",".join(CLASSES), help="comma-separated subset of " + ",".join(CLASSES))
    ap.add_argument(
        "--render",
        action="store_true",
        help="only re-render README.md and diagnose.png from OUT/results.json (no runs)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: small kernels gain nothing from more, and a shared machine makes them spin)",
    )
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
        out = args.out or DEFAULT_OUT
        if out == DEFAULT_OUT and not args.replace:
            raise SystemExit(f"--render rewrites the committed report in {DEFAULT_OUT}: pass --replace (or --out)")
        results = json.loads((out / "results.json").read_text())
        write_report(results, out, results["command"])
        print(f"re-rendered {out}/README.md and diagnose.png from results.json")
        return
    args.out = outputs.output_dir(
        "diagnose", DEFAULT_OUT, args.out, args.replace, ("README.md", "diagnose.png", "results.json")
    )
    results = run_study(cfg)
    results["command"] = "python -m studies.diagnose " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    write_report(results, args.out, results["command"])
    print(f"wrote {args.out}/README.md, diagnose.png, results.json in {results['seconds'] / 60:.1f} min")
    for r in results["table"]:
        print(
            f"{r['label']:>20} @ {r['strength_label']:<14} diagnostics: "
            f"{'compensable' if r['diagnostics_compensable'] else 'fix hardware':<12} training: {r['outcome']:<8} "
            f"agree: {r['agree']}"
        )


if __name__ == "__main__":
    main()
