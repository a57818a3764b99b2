"""The hardening study (issue #18, seed 003: Wang, Borras, Klein & Fröning, "On Hardening DNNs
against Noisy Computations", arXiv:2501.14531): QAT vs noisy training, skip connections, µ.

    python -m studies.hardening_train --seeds 0 1 2             # train every arm (hours; resumable)
    python -m models.report --suite hardening --resume --out runs/hardening-report
    python -m models.report --suite hardening --replace         # regenerate reports/hardening/

It reads every finished training run under ``--runs`` (``model.pt`` and its ONNX file, from
``python -m models.train_fmnist``, any arch and mode) and evaluates each on the Fashion-MNIST
test set twice (:mod:`studies.hardening_eval`): the seed's protocol (activation noise σ on a log
grid × noise seeds → logistic fit → µ, :mod:`studies.noise_midpoint`) and the aged chip
(chipsim runtime, ``--chips`` chips, 1 s … 10 y, GDC on and off). Each run's raw result is kept
in ``runs/hardening-cache/<run folder name>.json`` (or ``--cache``) as soon as it is computed (and in the report's
``hardening.json``); ``--resume`` reuses either when the run folder and the evaluation settings
match, so a later session with more runs or more compute completes the report. The summary,
intervals and verdicts (:mod:`studies.hardening_summary`) and the page (:mod:`studies.hardening_report`)
are derived from the raw results alone; ``hardening.json`` holds both.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import outputs
from studies.common import REPORTS_DIR
from studies.fmnist_eval import CELL_NOISE, CELL_VERSION
from studies.hardening_grid import ARCHS, MODES

OUT_DIR = REPORTS_DIR / "hardening"
RUNS_DIR = outputs.RUNS / "hardening"
#: One raw result per training run, written as soon as it is evaluated (git-ignored).
CACHE_DIR = outputs.RUNS / "hardening-cache"
FILES = ("hardening.md", "hardening.json", "hardening.png")
CHANCE = 0.1


def eval_config(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation settings a cached raw result must match to be reused."""
    return {
        "sigmas": [float(s) for s in np.logspace(np.log10(args.sigma_min), np.log10(args.sigma_max), args.sigmas)],
        "noise_seeds": list(range(args.noise_seeds)),
        "n_images": args.images,
        "chip_images": 0 if args.no_chip else args.chip_images,
        "n_chips": 0 if args.no_chip else args.chips,
        "profile": args.profile,
        "chance": CHANCE,
        # the chip cells are the Fashion-MNIST study's: a new cell meaning (seeding, sampler) is a new result
        "cell_version": CELL_VERSION,
        "mvm_noise": str(CELL_NOISE),
    }


def find_runs(*runs_dirs: Path) -> list[Path]:
    """Finished training runs (a ``model.pt``) anywhere below the ``runs_dirs``, sorted, of the
    study's architectures and arms only (by their ``recipe.json``), so that a folder kept for
    another study (``models/trained/fmnist``: its ViTs, LSTMs and recipe-only controls) can lend
    its ResNet ``plain`` and ``hwa`` runs."""
    found = []
    for p in sorted({p.parent for d in runs_dirs for p in Path(d).rglob("model.pt")}):
        recipe = p / "recipe.json"
        meta = json.loads(recipe.read_text()) if recipe.is_file() else {}
        if not meta or (meta.get("arch") in ARCHS and meta.get("mode") in MODES):
            found.append(p)
    return found


def _onnx(run_dir: Path, model, recipe) -> None:
    """Export the run's ONNX file if it was trained with ``--no-export`` (reads the validation split only)."""
    from models import train_fmnist as T

    if not (run_dir / f"{T.model_name(recipe)}.onnx").is_file():
        T.export(model, recipe, run_dir)


def training_record(run_dir: Path) -> dict[str, Any]:
    """How a run was trained, for the page: architecture arguments, epochs, training images,
    weights, seconds and final validation accuracy (from ``model.pt`` and ``result.json``)."""
    from models import train_fmnist as T

    _, recipe, kwargs = T.load_model(run_dir)
    result = json.loads((Path(run_dir) / "result.json").read_text())
    hist = result.get("history") or [{}]
    return {
        "arch_kwargs": kwargs,
        "epochs": recipe.epochs,
        "steps": hist[-1].get("steps"),
        "n_weights": result.get("n_weights"),
        "train_seconds": result.get("seconds"),
        "val_fp": hist[-1].get("val_fp"),
        "hardening": recipe.hardening.to_json() if recipe.hardening is not None else None,
    }


def evaluate_run(run_dir: Path, cfg: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """The raw result of one training run: clean test accuracy, the σ sweep, the chip table."""
    import torch

    from models import fmnist_data as D
    from models import train_fmnist as T
    from studies.hardening_eval import chip_accuracies, noise_model_fn
    from studies.noise_midpoint import sweep

    torch.set_num_threads(threads)
    model, recipe, _ = T.load_model(run_dir)
    test = D.load_split("test", cfg["n_images"])
    fn = noise_model_fn(model, test.x, test.y)
    with torch.no_grad():
        fp = float((model(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean())
    s = sweep(fn, cfg["sigmas"], cfg["noise_seeds"])
    raw = {
        "arch": recipe.arch,
        "mode": str(recipe.mode),
        "seed": recipe.seed,
        "run": str(run_dir),
        "eval": cfg,
        "fp_accuracy": fp,
        "sweep": s.to_json(),
        "chip": None,
    }
    if cfg["n_chips"] > 0:
        _onnx(run_dir, model, recipe)
        raw["chip"] = chip_accuracies(run_dir, cfg["chip_images"], cfg["n_chips"], cfg["profile"], threads=threads)
    return raw


def _previous(out: Path) -> dict[str, dict[str, Any]]:
    """{run folder: raw result} of the report already in ``out`` (empty if none)."""
    path = out / "hardening.json"
    if not path.is_file():
        return {}
    return {r["run"]: r for r in json.loads(path.read_text())["raw"].values()}


def collect(
    run_dirs: list[Path], out: Path, cfg: dict[str, Any], resume: bool, threads: int, cache: Path | None = None
) -> dict[str, Any]:
    """{run key: raw result} for every run, evaluating those without a matching cached result in
    ``cache`` (default :data:`CACHE_DIR`) or in ``out``'s report."""
    from tqdm.auto import tqdm

    from studies.hardening_summary import run_key

    cache = CACHE_DIR if cache is None else Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    previous = _previous(out) if resume else {}
    raw: dict[str, Any] = {}
    for run_dir in tqdm(run_dirs, desc="hardening runs", unit="run"):
        path = cache / f"{run_dir.name}.json"
        r = json.loads(path.read_text()) if resume and path.is_file() else None
        if r is None or r["run"] != str(run_dir):
            r = previous.get(str(run_dir))
        stale = r is None or r["eval"] != cfg or r["run"] != str(run_dir)
        if stale:
            t0 = time.perf_counter()
            r = evaluate_run(run_dir, cfg, threads)
            r["eval_seconds"] = round(time.perf_counter() - t0, 1)
        if stale or "training" not in r:  # results cached before the record existed gain it once
            r.setdefault("training", training_record(run_dir))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(r) + "\n")
            tmp.replace(path)  # whole or not at all: a killed run leaves no half file
        key = run_key(r["arch"], r["mode"], r["seed"])
        if key in raw:
            raise SystemExit(f"two runs of {key}: {raw[key]['run']} and {r['run']}; keep one under --runs")
        raw[key] = r
    return raw


def write_report(raw: dict[str, Any], config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Summarise ``raw`` and write the JSON, the page and the figure into ``out``; returns the JSON."""
    from studies.hardening_report import markdown, plot
    from studies.hardening_summary import N_BOOT, public, summarise

    config = {"n_boot": N_BOOT, **config}
    doc = {"config": config, "raw": raw, "summary": public(summarise(raw, config["chance"], config["n_boot"]))}
    (out / "hardening.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "hardening.md").write_text(markdown(doc))
    plot(doc, {k: r["sweep"] for k, r in raw.items()}, out / "hardening.png")
    return doc


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m models.report --suite hardening",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        default=[RUNS_DIR],
        help="folders of the training runs (default runs/hardening); runs of other architectures or arms are skipped",
    )
    outputs.add_arguments(ap, OUT_DIR)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="reuse raw results of runs already evaluated (--cache, --out/hardening.json)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder of the per-run raw results (default runs/hardening-cache; a folder in git keeps them "
        "across machines, e.g. models/trained/hardening/eval)",
    )
    ap.add_argument("--sigmas", type=int, default=16, help="σ values of the log grid (default 16)")
    ap.add_argument("--sigma-min", type=float, default=1e-2)
    ap.add_argument("--sigma-max", type=float, default=10.0)
    ap.add_argument("--noise-seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=10_000, help="test images of the noise sweep (default all)")
    ap.add_argument("--chips", type=int, default=10, help="chip instances per model (default 10)")
    ap.add_argument("--chip-images", type=int, default=2_000, help="test images per chip read (default 2000)")
    ap.add_argument("--profile", default="pcm")
    ap.add_argument("--no-chip", action="store_true", help="skip the chip evaluation")
    ap.add_argument("--label", default="", help="a line at the top of the page (e.g. SMOKE RUN)")
    ap.add_argument("--threads", type=int, default=1)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.sigmas < 4 or args.noise_seeds < 1 or args.images < 1:
        raise SystemExit("--sigmas ≥ 4, --noise-seeds ≥ 1 and --images ≥ 1 are needed for a fit")
    runs = find_runs(*args.runs)
    if not runs:
        raise SystemExit(
            f"--runs {' '.join(map(str, args.runs))}: no finished training run (model.pt) of the study's arms there; "
            "see python -m studies.hardening_train"
        )
    if args.resume and args.out is None and not args.replace:
        raise SystemExit("--resume continues a report: name its folder with --out (or --replace for reports/hardening)")
    out = outputs.output_dir("hardening-report", OUT_DIR, args.out, args.replace, () if args.resume else FILES)
    cfg = eval_config(args)
    raw = collect(runs, out, cfg, args.resume, args.threads, args.cache)
    command = "python -m models.report --suite hardening " + shlex.join(argv if argv is not None else sys.argv[1:])
    config = {**cfg, "command": command.strip(), "runs": " ".join(map(str, args.runs)), "label": args.label}
    doc = write_report(raw, config, out)
    print(f"{len(raw)} runs, {len(doc['summary']['arms'])} arms → {out}")


if __name__ == "__main__":
    main()
