"""How long a Fashion-MNIST training epoch takes here: each architecture × mode for a few steps.

    nice -n 10 python -m models.time_fmnist              # resnet, vit, lstm × plain, hwa; 30 steps
    nice -n 10 python -m models.time_fmnist --archs resnet --modes plain hwa recipe --steps 50

Each run is its own process (``python -m models.train_fmnist``, one thread, full training split,
batch 128) stopped after ``--steps`` optimiser steps; the plain run of an architecture is the
teacher of its hwa/recipe runs. An epoch is 430 steps (55 000 images / 128) plus one validation
pass (5 000 images in floating point; hwa/recipe also 1 000 on the emulated chip), which is
timed separately at the end of the cut-short epoch. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from models.fmnist_data import N_TRAIN_FILE, N_VAL
from models.fmnist_recipe import DEFAULTS, TrainMode


def time_run(arch: str, mode: TrainMode, steps: int, out: Path, teacher: Path | None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "models.train_fmnist",
        "--arch",
        arch,
        "--mode",
        str(mode),
        "--max-steps",
        str(steps),
        "--out",
        str(out),
        "--no-export",
        "--no-progress",
        "--threads",
        "1",
    ]
    if teacher is not None:
        cmd += ["--teacher", str(teacher)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rec = json.loads((out / "result.json").read_text())["history"][0]
    steps_per_epoch = math.ceil((N_TRAIN_FILE - N_VAL) / DEFAULTS[arch].batch_size)
    val_s = rec["seconds"] - rec["train_seconds"]
    return {
        "arch": arch,
        "mode": str(mode),
        "steps": rec["steps"],
        "s_per_step": rec["seconds_per_step"],
        "val_s": round(val_s, 1),
        "epoch_min": round((rec["seconds_per_step"] * steps_per_epoch + val_s) / 60, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["resnet", "vit", "lstm"], choices=sorted(DEFAULTS))
    ap.add_argument(
        "--modes", nargs="+", default=[TrainMode.PLAIN, TrainMode.HWA], type=TrainMode, choices=list(TrainMode)
    )
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            plain = Path(tmp) / f"{arch}-plain"
            for mode in [TrainMode.PLAIN, *[m for m in args.modes if m is not TrainMode.PLAIN]]:
                out = Path(tmp) / f"{arch}-{mode}"
                row = time_run(arch, mode, args.steps, out, plain if mode.chip_in_loop else None)
                if mode in args.modes:
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"load average (1, 5, 15 min) after the runs: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| arch | mode | s/step (batch 128) | validation pass (s) | min/epoch |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | {r['mode']} | {r['s_per_step']:.3f} | {r['val_s']:.0f} | {r['epoch_min']:.1f} |")


if __name__ == "__main__":
    main()
