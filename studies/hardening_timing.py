"""Seconds per training step of each hardening arm on the ResNet, interleaved in one process.

    nice -n 10 python -m studies.hardening_timing --rounds 5 --steps 3

Each arm gets a model set up as :mod:`models.train_fmnist` sets it up (QAT calibrated, noise
attached, HWA with its plain teacher, distillation and clipping), then the arms take turns:
``--rounds`` rounds of ``--steps`` optimiser steps each (batch 128, real training images, one
thread), so a change in the machine's load hits every arm alike. Prints the median and range of
seconds per step per arm and the median ratio to ``plain`` within a round. One-time costs (the
constant scales' calibration) are timed separately. ``noisy-then-qat`` is ``noisy`` for its first
half and ``qat-constant`` for its second.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np


def _setups(arch: str, x_tr, batch: int):
    """{arm: (model, recipe, teacher, ctx, arm extras)} ready for their first step."""
    from models import fmnist_models as FM
    from models import fmnist_training as T
    from models.fmnist_recipe import TrainMode, default_recipe

    teacher = FM.build(arch, 0).eval()
    out, calib = {}, {}
    for mode in ("plain", "qat-constant", "qat-dynamic", "noisy", "hwa"):
        recipe = replace(default_recipe(arch, TrainMode(mode)), batch_size=batch)
        model = FM.build(arch, 0)
        ctx = T._start_from_teacher(model, teacher, recipe, x_tr) if recipe.mode.chip_in_loop else None
        t0 = time.perf_counter()
        arm = T._hardening_arm(model, recipe, x_tr)
        if arm is not None:
            arm.before_step(0, 10**6)  # constant scales calibrate here
        calib[mode] = time.perf_counter() - t0
        out[mode] = (model, recipe, teacher if ctx else None, ctx, arm, T._optimizer(model, recipe))
    return out, calib


def _step(setup, x, y) -> None:
    from models import fmnist_training as T

    model, recipe, teacher, ctx, arm, opt = setup
    model.train()
    if ctx is not None:
        T.H.attach(model, ctx)
        ctx.new_batch(1.0)
    if arm is not None:
        arm.before_step(1, 10**6)
    loss = T._batch_loss(model, teacher, recipe, ctx, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if ctx is not None:
        T._project_onto_chip(model, recipe, [])
        T.H.attach(model, None)


def main(argv: list[str] | None = None) -> None:
    import torch

    from models import fmnist_data as D

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tr = D.load_split("train", 2048)
    x_tr, y_tr = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    setups, calib = _setups(args.arch, x_tr, args.batch)
    times: dict[str, list[float]] = {m: [] for m in setups}
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.rounds):
        for mode, s in setups.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                idx = torch.randint(0, len(x_tr), (args.batch,), generator=gen)
                _step(s, x_tr[idx], y_tr[idx])
            times[mode].append((time.perf_counter() - t0) / args.steps)
    plain = np.asarray(times["plain"])
    steps_per_epoch = math.ceil((D.N_TRAIN_FILE - D.N_VAL) / args.batch)
    print(f"{args.arch}, batch {args.batch}, 1 thread, {args.rounds} rounds × {args.steps} steps")
    print(
        "| arm | s/step median (range) | × plain (median, range) | h per run (30 epochs; hwa 10) | one-time setup (s) |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode, t in times.items():
        t = np.asarray(t)
        r = t / plain
        hours = np.median(t) * steps_per_epoch * 30 / 3600
        if mode == "hwa":
            hours /= 3  # HWA fine-tunes for a third of the epochs
        print(
            f"| {mode} | {np.median(t):.2f} ({t.min():.2f}–{t.max():.2f}) | {np.median(r):.2f} "
            f"({r.min():.2f}–{r.max():.2f}) | {hours:.1f} | {calib[mode]:.1f} |"
        )


if __name__ == "__main__":
    main()
