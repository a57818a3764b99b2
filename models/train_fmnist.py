"""Train a Fashion-MNIST model plainly, hardware-aware, or with HWA's recipe but no noise.

    python -m models.train_fmnist --arch resnet --mode plain --seed 0 --epochs 30
    python -m models.train_fmnist --arch resnet --mode hwa --teacher runs/fmnist/resnet-fmnist-plain-s0-…
    python -m models.train_fmnist --arch resnet --mode recipe --teacher runs/fmnist/resnet-fmnist-plain-s0-…

Modes (:class:`TrainMode`):

``plain``   from scratch, floating point; the DAC input ranges are calibrated on training data
            at the end (as :mod:`models.train` does for the digits models).
``hwa``     hardware-aware training (Rasch et al., Nat. Commun. 14:5282 (2023)) through
            :mod:`models.hwa`, i.e. chipsim's own device and periphery formulas: start from the
            plain model (``--teacher``), draw a chip instance and an age (1 s … 10 y) per batch,
            ramp the noise up over the first epochs, clip weights per channel after every step,
            learn the DAC ranges, distil from the plain model.
``recipe``  the control that separates HWA's noise from its recipe (issue #12): everything ``hwa``
            does — same epochs, start, channelwise remapping, DAC/ADC quantisation, IR drop,
            clipping, learned ranges, distillation — with the noise strength pinned at 0, so no
            programming or read noise, no drift, no stuck devices.
``qat-constant``, ``qat-dynamic``, ``noisy``, ``noisy-then-qat``
            the hardening study's arms (issue #18, :mod:`models.hardening_arms`): from scratch
            on the plain recipe, with quantisation-aware training and/or activation noise.

``--gradient`` (hwa, recipe; :data:`~models.fmnist_recipe.TRAINING_GRADIENTS`) picks the noisy
forward's gradient: ``ste`` (default, the extended straight-through estimator) or ``through``
(autograd through the noise model); it is recorded in the recipe (``noise.mode``).

Every choice is made on the validation split (:mod:`models.fmnist_data`); this command never
reads the test set. Each epoch appends a line to ``history.jsonl`` (loss, validation accuracy,
seconds) and saves ``checkpoint.pt`` (``--resume`` continues from it). At the end: ``model.pt``
(state dict + recipe), ``result.json`` and ``<name>.onnx`` (BatchNorm folded, ``agedchip.*``
metadata, validation accuracy of the ONNX file under onnxruntime). Output goes to a new folder
under ``runs/fmnist/`` at the repository root (git-ignored) unless ``--out`` names one; an existing
non-empty folder is refused
without ``--overwrite`` or ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from models import fmnist_data as D
from models import fmnist_models as FM
from models.fmnist_recipe import (
    DEFAULTS,
    TRAINING_GRADIENTS,
    FmnistRecipe,
    TrainMode,
    default_recipe,
    model_name,
)
from models.fmnist_training import Run, train
from models.torch_chip import GradientMode

#: Default home of training runs: ``runs/`` at the repository root (git-ignored).
RUNS_DIR = Path(__file__).resolve().parent.parent / "runs" / "fmnist"


def prepare_out(out: Path | None, recipe: FmnistRecipe, overwrite: bool, resume: bool) -> Path:
    """The output folder: ``out`` or a new ``runs/fmnist/<name>-s<seed>-<time>``. Refuses an
    existing non-empty folder unless ``overwrite`` (cleared) or ``resume`` (kept)."""
    if out is None:
        out = RUNS_DIR / f"{model_name(recipe)}-s{recipe.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        if resume:
            return out
        if not overwrite:
            raise SystemExit(f"--out {out} exists and is not empty; pass --overwrite to replace it or --resume")
        for p in out.iterdir():
            if p.is_file():
                p.unlink()
    elif resume:
        raise SystemExit(f"--resume: {out} holds no run to resume")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_model(run_dir: Path) -> tuple[nn.Module, FmnistRecipe, dict]:
    """The trained model, its recipe and its architecture keyword arguments, from a finished
    run (``run_dir/model.pt``)."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: no trained model there (a finished run of python -m models.train_fmnist)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    recipe = FmnistRecipe.from_json(json.loads(saved["recipe"]))
    kwargs = json.loads(saved["arch_kwargs"])
    model = FM.build(recipe.arch, recipe.seed, **kwargs)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), recipe, kwargs


# --------------------------------------------------------------------------- export
def export(model: nn.Module, recipe: FmnistRecipe, out: Path, limit_val: int | None = None) -> dict:
    """Write ``<name>.onnx`` (BatchNorm folded, ``agedchip.*`` metadata) into ``out``; returns
    its name and validation accuracy under onnxruntime. The zoo's eval set and test accuracy
    are the zoo builder's job: this command does not read the test set."""
    import onnx

    from models.export import PREFIX, build_onnx, metadata, onnx_logits, set_metadata

    va = D.load_split("val", limit_val)
    name = model_name(recipe)
    meta = {
        PREFIX + "task": "classification",
        PREFIX + "num_classes": str(D.NUM_CLASSES),
        PREFIX + "dataset": "Fashion-MNIST (Xiao et al. 2017): 70000 grey-scale 28x28 images of 10 garment classes",
        PREFIX + "split": D.split_description(),
        PREFIX + "preprocessing": f"x = pixels/{D.PIXEL_MAX:g} (float32, [0, 1]), shape (N, 1, 28, 28)",
        PREFIX + "recipe": recipe.to_json(),
        PREFIX + "model_name": name,
    }
    model_bytes, _ = build_onnx(FM.export_copy(model), meta, example=torch.zeros(2, *D.INPUT_SHAPE))
    val = float((onnx_logits(model_bytes, va.x).argmax(1) == va.y).mean())
    om = onnx.load_from_string(model_bytes)
    set_metadata(om, {**metadata(om), PREFIX + "val_accuracy": f"{val:.6f}"})
    (out / f"{name}.onnx").write_bytes(om.SerializeToString())
    return {"onnx": f"{name}.onnx", "val_fp_onnx": val}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=sorted(DEFAULTS))
    ap.add_argument("--mode", default=TrainMode.PLAIN, type=TrainMode, choices=list(TrainMode))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="default: the architecture's recipe")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--noise-scale", type=float, default=None, help="HWA: × the chip's noise (default 1.5)")
    ap.add_argument(
        "--gradient",
        type=GradientMode,
        choices=list(TRAINING_GRADIENTS),
        default=None,
        help="hwa/recipe: the noisy forward's gradient (default ste, the extended straight-through estimator)",
    )
    ap.add_argument(
        "--train-sigma", type=float, default=None, help="noisy, noisy-then-qat: activation noise σ (default 0.1)"
    )
    ap.add_argument(
        "--qat-delay",
        type=float,
        default=None,
        help="qat-constant, qat-dynamic: fraction of the steps in floating point before QAT starts (default 0.25)",
    )
    ap.add_argument("--teacher", type=Path, default=None, help="hwa/recipe: folder of the finished plain run")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a new one under runs/fmnist/)")
    ap.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--emu-val",
        type=int,
        default=1000,
        help="hwa/recipe: validation images run on the emulated chip (1 y) each epoch; 0 = off",
    )
    ap.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (timing, tests)")
    ap.add_argument(
        "--arch-kwargs",
        type=json.loads,
        default=None,
        help='JSON keyword arguments of the architecture, e.g. \'{"widths": [4, 8, 8], "blocks": 1}\'',
    )
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _teacher(args: argparse.Namespace, recipe: FmnistRecipe) -> tuple[nn.Module, dict | None]:
    """The finished plain run ``--teacher`` and its architecture keywords, checked against ``recipe``."""
    if args.teacher is None:
        raise SystemExit(f"--mode {recipe.mode} fine-tunes a plain model: pass --teacher RUN_DIR of a plain run")
    teacher, t_recipe, t_kwargs = load_model(args.teacher)
    if t_recipe.arch != recipe.arch or t_recipe.mode is not TrainMode.PLAIN:
        raise SystemExit(
            f"--teacher {args.teacher}: a {t_recipe.arch} {t_recipe.mode} run, expected {recipe.arch} plain"
        )
    if args.arch_kwargs is not None and args.arch_kwargs != t_kwargs:
        raise SystemExit(f"--arch-kwargs {args.arch_kwargs} differ from the teacher's {t_kwargs}")
    return teacher, t_kwargs


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.resume and args.out is None:
        raise SystemExit("--resume needs --out (the run's folder)")
    recipe = default_recipe(args.arch, args.mode)
    overrides = {
        k: v
        for k, v in (("seed", args.seed), ("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size))
        if v is not None
    }
    if args.noise_scale is not None:
        overrides["noise"] = replace(recipe.noise, noise_scale=args.noise_scale)
    if args.gradient is not None:
        if not recipe.mode.chip_in_loop:
            raise SystemExit(
                f"--gradient applies to the chip-in-the-loop modes (hwa, recipe), not --mode {recipe.mode}"
            )
        overrides["noise"] = replace(overrides.get("noise", recipe.noise), mode=args.gradient)
    if args.train_sigma is not None:
        overrides["hardening"] = replace(recipe.hardening, train_sigma=args.train_sigma)
    if args.qat_delay is not None:
        base = overrides.get("hardening", recipe.hardening)
        overrides["hardening"] = replace(base, qat_delay_fraction=args.qat_delay)
    recipe = replace(recipe, **overrides)
    teacher = None
    if recipe.mode.chip_in_loop:
        teacher, args.arch_kwargs = _teacher(args, recipe)
    try:
        D.load_split("val", 1)
    except D.FashionMnistMissing as err:
        raise SystemExit(str(err)) from None
    out = prepare_out(args.out, recipe, args.overwrite, args.resume)
    (out / "recipe.json").write_text(json.dumps(recipe.to_json(), indent=1) + "\n")
    run = Run(out)
    t0 = time.perf_counter()
    model = train(
        recipe,
        run,
        teacher=teacher,
        arch_kwargs=args.arch_kwargs,
        limit_train=args.limit_train,
        limit_val=args.limit_val,
        emu_val=args.emu_val,
        max_steps=args.max_steps,
        resume=args.resume,
        progress=not args.no_progress,
    )
    result = {
        "model": model_name(recipe),
        "out": str(out),
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": args.threads,
        "n_weights": FM.n_weights(model),
        "history": run.history,
    }
    if not args.no_export:
        result.update(export(model, recipe, out, args.limit_val))
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
