"""Put finished Fashion-MNIST training runs into the committed zoo folder ``models/zoo/fmnist/``.

    python -m models.fmnist_zoo /work/train/resnet-plain-s0              # into runs/fmnist_zoo/<time>/
    python -m models.fmnist_zoo /work/train/resnet-plain-s0 --replace    # the committed zoo

Each run folder of :mod:`models.train_fmnist` holds ``<name>.onnx`` and ``result.json``. The zoo
gets the ONNX file unchanged, ``<name>.eval.npz`` (the first ``--n-eval`` test images, labelled, so
``POST /chips/{id}/evaluate`` works on a chip programmed from it) and an ``index.json`` entry in
the digits zoo's format (:mod:`models.build_zoo`), so the service serves the folder as it is:
``AGEDCHIP_ZOO_DIR=models/zoo/fmnist``. The entry records the floating-point accuracy of the ONNX
file under onnxruntime on the whole 10 000-image test set (``fp_accuracy``, reported, never used
for a choice) and on the eval subset, next to the validation accuracy training chose on.

This folder is a sub-folder of the digits zoo on purpose: the service lists only the ``*.onnx``
files directly in its zoo folder, so the digits zoo, its report and the CI-sized tests that walk
it are unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from models import fmnist_data as D
from models import outputs
from models.export import onnx_logits

ZOO_DIR = Path(__file__).resolve().parent / "zoo" / "fmnist"
N_EVAL = 1000


def zoo_entry(run_dir: Path, out: Path, n_eval: int) -> dict:
    """Copy one run's model into ``out`` with its eval subset; return its ``index.json`` entry."""
    result = json.loads((run_dir / "result.json").read_text())
    name, onnx_file = result["model"], run_dir / result["onnx"]
    model_bytes = onnx_file.read_bytes()
    test = D.load_split("test")
    pred = onnx_logits(model_bytes, test.x).argmax(1)
    recipe = json.loads((run_dir / "recipe.json").read_text())
    shutil.copyfile(onnx_file, out / f"{name}.onnx")
    np.savez_compressed(out / f"{name}.eval.npz", x=test.x[:n_eval].astype(np.float32), y=test.y[:n_eval])
    history = result.get("history") or []
    return {
        "name": name,
        "file": f"{name}.onnx",
        "eval_set": f"{name}.eval.npz",
        "description": f"{recipe['arch']} on Fashion-MNIST; {recipe['mode']} training, seed {recipe['seed']}, "
        f"{recipe['epochs']} epochs (python -m models.train_fmnist)",
        "arch": recipe["arch"],
        "mode": recipe["mode"],
        "seed": recipe["seed"],
        "hwa": recipe["mode"] == "hwa",
        "fp_accuracy": round(float((pred == test.y).mean()), 6),
        "eval_accuracy": round(float((pred[:n_eval] == test.y[:n_eval]).mean()), 6),
        "val_accuracy": round(float(result["val_fp_onnx"]), 6),
        "n_eval": n_eval,
        "n_test": len(test),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "bytes": len(model_bytes),
        "n_weights": result["n_weights"],
        # every epoch's wall time, also those before a --resume (result.json's "seconds" counts
        # only the last process); on a shared host this includes the waits for a core
        "train_seconds": round(sum(h["seconds"] for h in history), 1) if history else result["seconds"],
        "train_steps": history[-1]["steps"] if history else None,
        "train_threads": result.get("threads"),
    }


def merged_index(out: Path, entries: list[dict]) -> dict:
    """The folder's index with ``entries`` replacing those of the same name (others kept)."""
    path = out / "index.json"
    old = json.loads(path.read_text())["models"] if path.is_file() else []
    by_name = {e["name"]: e for e in old} | {e["name"]: e for e in entries}
    return {
        "default": sorted(by_name)[0],
        "generated_by": "python -m models.fmnist_zoo",
        "dataset": D.split_description(),
        "models": [by_name[n] for n in sorted(by_name)],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished run folders of models.train_fmnist")
    ap.add_argument("--n-eval", type=int, default=N_EVAL, help="test images shipped as the eval set")
    outputs.add_arguments(ap, ZOO_DIR)
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "result.json").is_file()]
    if missing:
        ap.error(f"runs: no result.json (training not finished?) in {missing}")
    if not 1 <= args.n_eval <= 10_000:
        ap.error(f"--n-eval: expected 1 … 10000 test images, got {args.n_eval}")
    out = outputs.output_dir("fmnist_zoo", ZOO_DIR, args.out, args.replace, ["index.json"])
    out.mkdir(parents=True, exist_ok=True)
    entries = [zoo_entry(r, out, args.n_eval) for r in args.runs]
    (out / "index.json").write_text(json.dumps(merged_index(out, entries), indent=1) + "\n")
    for e in entries:
        print(f"{e['name']}: FP test accuracy {e['fp_accuracy']:.4f} (validation {e['val_accuracy']:.4f}) → {out}")


if __name__ == "__main__":
    main()
