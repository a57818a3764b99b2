"""Regenerate the whole model zoo: train every recipe, export ONNX + eval set, write index.json.

    python -m models.build_zoo                 # all models into a new folder runs/build_zoo/<time>/
    python -m models.build_zoo --only cnn-plain cnn-hwa --out /tmp/zoo
    python -m models.build_zoo --replace       # regenerate the committed zoo, models/zoo/

Without ``--replace`` the committed zoo is never touched (:mod:`models.outputs`).

Plain models are trained first; each HWA model starts from (and distils from) its plain
model, as in :func:`models.train.train_zoo_model`. Training is seeded, single-threaded by
default, and takes about 6 minutes on one CPU core for the whole zoo.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from models import outputs
from models.export import write_zoo_entry
from models.train import RECIPES, TrainResult, plain_name, train
from models.zoo_models import n_weights

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
#: Build order: a plain model before the HWA model that starts from it.
ZOO = ["mlp-plain", "mlp-hwa", "cnn-plain", "cnn-hwa", "transformer-plain", "transformer-hwa"]
#: The service's embedded default model.
DEFAULT_MODEL = "cnn-hwa"

DESCRIPTIONS = {
    "mlp": "MLP 64-256-128-10 (ReLU) on digits",
    "cnn": "CNN conv16-conv32-pool-conv64-pool-fc10 (3x3, ReLU) on digits",
    "transformer": "transformer over image rows (8 tokens, dim 64, 2 blocks, 4 heads) on digits",
}


def describe(name: str) -> str:
    recipe = RECIPES[name]
    how = (
        "hardware-aware training on the emulated pcm chip (extended STE, noise x"
        f"{recipe.noise.noise_scale:g}, faults x{recipe.noise.fault_scale:g}, distilled from {plain_name(name)})"
        if recipe.hwa
        else "plain floating-point training"
    )
    return f"{DESCRIPTIONS[recipe.arch]}; {how}"


def build(names: list[str], out_dir: Path, progress: bool = True) -> list[dict]:
    """Train and export ``names`` (plain teachers of HWA models are trained as needed)."""
    trained: dict[str, TrainResult] = {}
    entries = []
    for name in names:
        recipe = RECIPES[name]
        if recipe.hwa and recipe.init_from_plain:
            pname = plain_name(name)
            if pname not in trained:
                trained[pname] = train(RECIPES[pname], progress=progress, desc=pname)
            teacher = trained[pname].model
            res = train(
                recipe,
                init=teacher.state_dict(),
                teacher=teacher if recipe.distill > 0 else None,
                progress=progress,
                desc=name,
            )
        else:
            res = trained.get(name) or train(recipe, progress=progress, desc=name)
        trained[name] = res
        entry = write_zoo_entry(res.model, name, recipe, out_dir, describe(name))
        entry.update(n_weights=n_weights(res.model), train_seconds=round(res.seconds, 1), train_steps=res.steps)
        entries.append(entry)
        print(
            f"{name}: fp_accuracy={entry['fp_accuracy']:.4f} ({entry['bytes'] / 1024:.0f} KiB, "
            f"{res.seconds:.0f} s, {res.steps} steps)",
            flush=True,
        )
    return entries


def write_index(entries: list[dict], out_dir: Path) -> None:
    """Merge ``entries`` into ``out_dir/index.json`` (keeps models not rebuilt), in ZOO order."""
    path = out_dir / "index.json"
    old = json.loads(path.read_text())["models"] if path.exists() else []
    by_name = {e["name"]: e for e in old}
    by_name.update({e["name"]: e for e in entries})
    order = {n: i for i, n in enumerate(ZOO)}
    models = sorted(by_name.values(), key=lambda e: order.get(e["name"], len(order)))
    index = {
        "default": DEFAULT_MODEL,
        "generated_by": "python -m models.build_zoo",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "models": models,
    }
    path.write_text(json.dumps(index, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, choices=ZOO, help="rebuild only these models")
    outputs.add_arguments(ap, ZOO_DIR)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or ZOO
    files = [f"{n}{ext}" for n in names for ext in (".onnx", ".eval.npz")] + ["index.json"]
    out = outputs.output_dir("build_zoo", ZOO_DIR, args.out, args.replace, files)
    t0 = time.perf_counter()
    entries = build(names, out, progress=not args.no_progress)
    write_index(entries, out)
    print(f"zoo written to {out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
