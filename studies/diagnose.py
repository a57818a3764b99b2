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
import json
import shlex
import sys
import time
from dataclasses import replace

import torch

from models import outputs
from models.hwa import analog_layers
from models.train import accuracy
from studies.diagnose_report import write_report
from studies.diagnose_setting import clean_gradient, minibatch_relative_variance
from studies.diagnose_steps import (
    QUICK,
    StudyConfig,
    StudyData,
    config_json,
    diagnose_row,
    evaluate_plain,
    hwa_per_class,
    train_plain,
    training_strengths,
    verdict_rows,
)
from studies.perturbations import CLASSES

# This module runs the study (run_study) and is its command; one setting's diagnostics are
# studies.diagnose_setting, the study's steps studies.diagnose_steps.
DEFAULT_OUT = outputs.REPO / "reports" / "diagnose"


def run_study(cfg: StudyConfig) -> dict:
    """Run everything; returns the JSON-able results (no files written)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    data = StudyData.load(cfg.batch, cfg.seed)
    timings: dict[str, float] = {}

    # 1. the user's model: plain (floating-point) training; and a partly trained one
    t0 = time.perf_counter()
    plain_recipe, plain, early = train_plain(cfg)
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
            diag[k].append(diagnose_row(cfg, data, early, g_early, k, s, bar))
    timings["diagnostics_s"] = time.perf_counter() - t0

    # 3. the plain model under every setting; pick the training strengths on the validation split
    t0 = time.perf_counter()
    plain_acc = evaluate_plain(cfg, data, plain, tqdm)
    train_strength = training_strengths(cfg, plain_acc, acc_clean_va)
    timings["evaluate_plain_s"] = time.perf_counter() - t0

    # 3b. reference: the same diagnostics at the converged model, at the training strengths
    t0 = time.perf_counter()
    g_plain = clean_gradient(plain, data.xb, data.yb)
    diag_trained: dict[str, dict] = {}
    with tqdm(
        total=len(cfg.classes) * cfg.draws, desc="diagnostics (trained)", unit="draw", disable=not cfg.progress
    ) as bar:
        for k in cfg.classes:
            diag_trained[k] = diagnose_row(cfg, data, plain, g_plain, k, train_strength[k], bar)
    timings["diagnostics_trained_s"] = time.perf_counter() - t0

    # 4. HWA under each class alone (and the control: the same recipe on an ideal chip)
    t0 = time.perf_counter()
    hwa_acc, hwa_seconds = hwa_per_class(cfg, data, plain, train_strength)
    timings["hwa_training_s"] = time.perf_counter() - t0

    # 5. verdicts
    rows = verdict_rows(cfg, diag, plain_acc, hwa_acc, train_strength, acc_clean_te)
    seconds = time.perf_counter() - t_start
    return {
        "arch": cfg.arch,
        "config": config_json(cfg),
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
