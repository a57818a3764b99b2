"""A/B of embedding a large chip's remaining Conv weights per read-out (``ChipRuntime(embed_convs=)``):
resnet18 on its default binding (``inputs``: 11.7M weights are over ``AGEDCHIP_INITIALIZERS_MAX_BYTES``)
with the weights of the Conv tiles the session graph leaves as Convs (more than 4 output pixels:
its stem, layer1 and layer2) embedded in a session per read-out, against every weight fed.

    python -m bench.embed_convs [--rounds 5] [--seconds 0.3] [--batches 1 64] [--ages 5] [--replace]

resnet18 at 32×32 (bench/architectures.py, random weights), ``pcm``, lean lowering, 1 thread.
Speed: cached read-out at 1 d, fresh per-MVM noise; both runtimes share one chip and run with the
digital model interleaved in one process, round by round (the order reversed every other round);
a ratio is taken within a round (CPU time), the report gives median [min–max] over rounds.
A new age: wall time of the first and of the second batch-1 request at ``--ages`` ages never read
before (the first pays the read-out, and for the embedded variant its session), alternating the
variants, and the bytes the read-out cache charges for the entry.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import (
    RESULTS,
    ab_cells,
    ab_summary,
    add_ab_arguments,
    fmt_median_range,
    interleaved_cpu_times,
    machine,
    median_range,
    output_dir,
    write,
)
from bench.runtime import AGE_S, _model
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.ort_session import cpu_session
from chipsim.runtime import ChipRuntime
from models import outputs

NAME = "embed_convs"
VARIANTS = {"fed": False, "embedded": True}


def measure_speed(rts: dict[str, ChipRuntime], model: bytes, x: np.ndarray, batches, rounds, seconds) -> list[dict]:
    digital = cpu_session(model, 1)
    name = digital.get_inputs()[0].name
    rows = []
    for rt in rts.values():  # the read-out at 1 d and its session, outside the timing
        rt.run(x[:1], age_s=AGE_S)
        rt.run(x[:1], age_s=AGE_S)
    for b in batches:
        xb = x[:b]
        fns = {k: (lambda rt=rt: rt.run(xb, age_s=AGE_S)) for k, rt in rts.items()}
        fns["digital"] = lambda: digital.run(None, {name: xb})
        rows.append({"batch": b, **ab_summary(interleaved_cpu_times(fns, rounds, seconds), "fed", "embedded")})
        print(f"batch {b}: speedup {fmt_median_range(rows[-1]['speedup'])}", flush=True)
    return rows


def measure_new_age(rts: dict[str, ChipRuntime], x: np.ndarray, ages: int) -> dict:
    """Per variant: wall seconds of the first and of the second batch-1 request at a new age, and
    the entry's cache charge."""
    wall: dict[str, dict[str, list[float]]] = {k: {"first": [], "second": []} for k in rts}
    charged: dict[str, int] = {}
    for rt in rts.values():  # once per runtime, not per age: the sessions of the fed weights
        rt.run(x[:1], age_s=AGE_S / 2)
    for i in range(ages):
        age = AGE_S * (2.0 + i)  # ages neither variant has read
        for k in list(rts) if i % 2 == 0 else list(rts)[::-1]:
            for which in ("first", "second"):
                t = time.perf_counter()
                rts[k].run(x[:1], age_s=age)
                wall[k][which].append(time.perf_counter() - t)
            charged[k] = rts[k]._entry(age, 0).nbytes
    return {k: {**{w: median_range(v) for w, v in d.items()}, "entry_bytes": charged[k]} for k, d in wall.items()}


def markdown(rows: list[dict], new_age: dict, info: dict, args) -> str:
    lines = [
        "# Embedding a large chip's Conv weights per read-out: A/B",
        "",
        f"`python -m bench.embed_convs --rounds {args.rounds} --seconds {args.seconds} --batches "
        f"{' '.join(map(str, args.batches))} --ages {args.ages}` · {info['date']} · {info['cpus']} CPUs · "
        f"onnxruntime {info['onnxruntime']} · resnet18 at 32×32, random weights, `pcm`, lean, 1 thread",
        "",
        "Speedup: CPU time with every weight fed over that with the remaining Conv tiles' weights embedded, "
        "per round (cached read-out at 1 d); speed relative to the digital model (digital time / chip time), "
        "per round; median [min–max] over rounds.",
        "",
        "| batch | speedup | chip/digital, all fed | chip/digital, Convs embedded | embedded ms/batch | digital ms/batch |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | " + ab_cells(r))
    lines += [
        "",
        f"A new age (the first and second batch-1 requests at {args.ages} ages never read, alternating; the "
        "first pays the read-out and, embedded, its session): wall seconds, median [min–max], and the bytes "
        "the read-out cache charges for the entry.",
        "",
        "| variant | first request at a new age (s) | second request (s) | cache charge (MB) |",
        "|---|---:|---:|---:|",
    ]
    for k, v in new_age.items():
        first, second = fmt_median_range(v["first"]), fmt_median_range(v["second"])
        lines.append(f"| {k} | {first} | {second} | {v['entry_bytes'] / 1e6:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ab_arguments(ap)
    ap.add_argument("--ages", type=int, default=5, help="new ages timed per variant")
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    out = output_dir(NAME, args)
    model, x = _model("resnet18")
    chip = program_onnx(model, get_profile("pcm"), seed=0, calibration=x[:64])
    rts = {k: ChipRuntime(chip, threads=1, embed_convs=v) for k, v in VARIANTS.items()}
    assert rts["fed"].binding == rts["embedded"].binding == "inputs", "resnet18 is over the initializers limit"
    new_age = measure_new_age(rts, x, args.ages)
    rows = measure_speed(rts, model, x, args.batches, args.rounds, args.seconds)
    info = machine()
    data = {"machine": info, "rows": rows, "new_age": new_age}
    jpath, _ = write(NAME, data, markdown(rows, new_age, info, args), out)
    print(f"results: {jpath.parent}")


if __name__ == "__main__":
    main()
