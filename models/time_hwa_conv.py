"""Seconds per HWA training step of the Fashion-MNIST ResNet: convolutions through the chip as
convolutions (today's path) vs on unfolded patches (the previous path), interleaved in one process.

    nice -n 10 python -m models.time_hwa_conv --repeats 5

One thread, batch 128, the HWA recipe's chip (pcm, noise ×1.5, faults ×10, full strength), extended
STE. Each repeat times one step of each path, alternating which goes first, so that load swings
on a shared machine hit both alike; prints median and range per path and of the per-repeat ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from models import hwa as H
from models.fmnist_models import build
from models.fmnist_recipe import TrainMode, default_recipe


def _use_unfolded(model: torch.nn.Module, unfolded: bool) -> None:
    for _, m in H.analog_layers(model):
        if isinstance(m, H.AnalogConv2d):
            if unfolded:  # the base class's path: analog_matmul on F.unfold's rows
                object.__setattr__(m, "_through_chip", H.AnalogLayer._through_chip.__get__(m))
            else:
                m.__dict__.pop("_through_chip", None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=gen)  # timing only: the ops do not depend on the values
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    model = build("resnet", 0)
    H.calibrate_input_ranges(model, x)
    ctx = H.HwaContext(default_recipe("resnet", TrainMode.HWA).noise, torch.Generator().manual_seed(1))
    H.attach(model, ctx)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(unfolded: bool) -> float:
        _use_unfolded(model, unfolded)
        t0 = time.perf_counter()
        ctx.new_batch(1.0)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeats):
        for unfolded in (False, True) if i % 2 == 0 else (True, False):
            times[unfolded].append(step(unfolded))
    ratios = [u / c for u, c in zip(times[True], times[False])]

    def fmt(v: list[float]) -> str:
        return f"median {statistics.median(v):.3f} (range {min(v):.3f}–{max(v):.3f})"

    print(f"convolutions: s/step {fmt(times[False])}")
    print(f"unfolded:     s/step {fmt(times[True])}")
    print(f"speed-up unfolded/convolutions: {fmt(ratios)} over {args.repeats} interleaved pairs")


if __name__ == "__main__":
    main()
