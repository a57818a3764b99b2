"""Keep finished Fashion-MNIST training runs in the repository, so that the studies outlive the machine.

    python -m models.fmnist_runs /work/train/resnet-fmnist-hwa-s1 ...             # into runs/fmnist_runs/<time>/
    python -m models.fmnist_runs /work/train/resnet-fmnist-hwa-s1 ... --replace   # models/trained/fmnist/

The zoo (:mod:`models.fmnist_zoo`) commits seed 0 of each model; the accuracy and µ studies
(:mod:`studies.fmnist_study`) use every training seed, and a run's folder under the git-ignored
``runs/`` is gone on a fresh machine. This copies what the studies read from each run folder of
:mod:`models.train_fmnist` into ``models/trained/fmnist/<run folder name>/``: the ONNX file (the
chip cells are keyed by its SHA-256, so it is copied byte for byte), ``model.pt`` (the µ sweeps
and fine-tunes load it), ``recipe.json``, ``result.json`` and ``history.jsonl``. The resumable
``checkpoint.pt`` (optimizer state, twice the size) stays behind. The folder is outside
``models/zoo/``, so the service image does not carry it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from models import outputs

KEPT_DIR = Path(__file__).resolve().parent / "trained" / "fmnist"
#: A run's files worth keeping beside its ONNX file (``result.json`` names that).
FILES = ("model.pt", "recipe.json", "result.json", "history.jsonl")


def keep(run_dir: Path, out: Path) -> Path:
    """Copy one finished run into ``out/<its folder name>/``; the folder written. ``SystemExit``
    names what is missing from an unfinished run, or the files of another run kept under that
    name (the cells of the studies are keyed by the ONNX file: remove the old folder on purpose)."""
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        raise SystemExit(f"{run_dir}: no result.json, so not a finished models.train_fmnist run")
    onnx_name = json.loads(result_file.read_text())["onnx"]
    names = [onnx_name, *FILES]
    missing = [n for n in names if not (run_dir / n).is_file()]
    if missing:
        raise SystemExit(f"{run_dir}: missing {', '.join(missing)}")
    dest = out / run_dir.name
    if dest.exists():
        differs = [n for n in names if not _same(dest / n, run_dir / n)]
        if differs:
            raise SystemExit(f"{dest} already holds another run ({', '.join(differs)} differ); remove it first")
        return dest
    # copied whole into a temporary folder, then renamed: an interrupted copy leaves no half run
    tmp = out / f".{run_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n in names:
        shutil.copyfile(run_dir / n, tmp / n)
    tmp.rename(dest)
    return dest


def _same(a: Path, b: Path) -> bool:
    return a.is_file() and a.read_bytes() == b.read_bytes()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m models.fmnist_runs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders of models.train_fmnist")
    outputs.add_arguments(ap, KEPT_DIR)
    args = ap.parse_args(argv)
    out = outputs.output_dir("fmnist_runs", KEPT_DIR, args.out, args.replace)
    for r in args.runs:
        print(f"kept {r} in {keep(r, out)}")


if __name__ == "__main__":
    main()
