"""A/B of the channel padding of tiled Conv layers (graph format 5,
:data:`chipsim.compiler.lowering.CONV_CHANNEL_ALIGN`): the same chip compiled with its tiles'
channel slices padded to a multiple of 4 and without (align 1), on both weight bindings.

    python -m bench.conv_channel_pad [--rounds 5] [--seconds 0.3] [--batches 1 64] [--replace]

resnet18 at 32×32 (bench/architectures.py, random weights; 256 channels × 3×3 in 5 tiles of
51-52 channels, 512 in 10 of 51), ``pcm`` at 1 d, lean lowering, 1 thread, cached read-out,
fresh per-MVM noise. Both chips come from one seed (the same devices); the variants and the
digital model run interleaved in one process, round by round (the order reversed every other
round); a ratio is taken within a round
(CPU time), the report gives median [min–max] over rounds. ``embedded``: weights as initializers
(what a chip under ``AGEDCHIP_INITIALIZERS_MAX_BYTES`` gets); ``inputs``: weights fed per run (the
default for resnet18, whose 11.7M weights are over it).
"""

from __future__ import annotations

import argparse

import numpy as np

import chipsim.compiler.lowering as lowering
from bench.common import (
    BINDINGS,
    RESULTS,
    ab_cells,
    ab_summary,
    add_ab_arguments,
    fmt_median_range,
    interleaved_cpu_times,
    machine,
    output_dir,
    write,
)
from bench.runtime import AGE_S, _model
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.ort_session import cpu_session
from chipsim.runtime import ChipRuntime
from models import outputs

NAME = "conv_channel_pad"


def _runtimes(model: bytes, x: np.ndarray) -> dict[str, ChipRuntime]:
    """(align, binding) → runtime; the chips of both alignments share seed and devices."""
    profile = get_profile("pcm")
    default = lowering.CONV_CHANNEL_ALIGN
    out = {}
    try:
        for align in (1, default):
            lowering.CONV_CHANNEL_ALIGN = align  # read by the compiler; the chip's plans keep it
            chip = program_onnx(model, profile, seed=0, calibration=x[:64])
            for binding, limit in BINDINGS.items():
                out[f"align{align}-{binding}"] = ChipRuntime(chip, threads=1, initializers_max_bytes=limit)
    finally:
        lowering.CONV_CHANNEL_ALIGN = default
    return out


def measure(
    rts: dict[str, ChipRuntime], model: bytes, x: np.ndarray, batches, rounds: int, seconds: float
) -> list[dict]:
    digital = cpu_session(model, 1)
    name = digital.get_inputs()[0].name
    rows = []
    for b in batches:
        xb = x[:b]
        fns = {k: (lambda rt=rt: rt.run(xb, age_s=AGE_S)) for k, rt in rts.items()}
        fns["digital"] = lambda: digital.run(None, {name: xb})
        times = interleaved_cpu_times(fns, rounds, seconds)
        for binding in BINDINGS:
            unpadded, padded = f"align1-{binding}", f"align{lowering.CONV_CHANNEL_ALIGN}-{binding}"
            rows.append({"batch": b, "binding": binding, **ab_summary(times, unpadded, padded)})
            print(f"batch {b} {binding}: padding speedup {fmt_median_range(rows[-1]['speedup'])}", flush=True)
    return rows


def markdown(rows: list[dict], info: dict, args) -> str:
    lines = [
        "# Tiled Conv channel padding: A/B (graph format 5)",
        "",
        f"`python -m bench.conv_channel_pad --rounds {args.rounds} --seconds {args.seconds} --batches "
        f"{' '.join(map(str, args.batches))}` · {info['date']} · {info['cpus']} CPUs · onnxruntime {info['onnxruntime']} · "
        "resnet18 at 32×32, random weights, `pcm`, 1 d, lean, 1 thread, cached read-out",
        "",
        "Speedup: the unpadded chip's CPU time over the padded one's, per round; speed relative to the "
        "digital model (digital time / chip time), per round; median [min–max] over rounds.",
        "",
        "| batch | binding | padding speedup | chip/digital, unpadded | chip/digital, padded | padded ms/batch | digital ms/batch |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['binding']} | " + ab_cells(r))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ab_arguments(ap)
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    out = output_dir(NAME, args)
    model, x = _model("resnet18")
    rows = measure(_runtimes(model, x), model, x, args.batches, args.rounds, args.seconds)
    info = machine()
    jpath, _ = write(NAME, {"machine": info, "rows": rows}, markdown(rows, info, args), out)
    print(f"results: {jpath.parent}")


if __name__ == "__main__":
    main()
