"""Does the per-MVM noise sampler change what a chip computes? ``fresh`` (numpy's exact ziggurat)
vs ``fresh-q16`` (the default: 2^16 equiprobable bins of N(0, 1), chipsim.mvm_noise) on the zoo.

    python -m bench.sampler_accuracy [--chips 20] [--ages 1d 1y] [--replace]

For every digits zoo model, ``--chips`` chip instances on ``pcm`` (seeds 0…), each read at each
age with GDC on, its eval set run once with each sampler (seeded per chip; the read-out is the
same, only the per-MVM noise differs). Paired per chip: the difference in top-1 accuracy and the
ratio of the logits' RMS error against the floating-point model, with a 95 % t interval over
chips. The two samplers draw different noise, so the chip-to-chip spread is the yardstick: a
sampler that mattered would show as an interval that excludes 0 (accuracy) or 1 (RMS ratio).
Results: bench/results/sampler_accuracy.{md,json} with ``--replace``, else runs/sampler_accuracy/<time>/.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnxruntime as ort
from scipy import stats

from bench.common import RESULTS, machine, output_dir, write
from chipsim import get_profile
from chipsim.ages import STANDARD_AGES_S
from chipsim.compiler import program_onnx
from chipsim.modes import MvmNoiseSource
from chipsim.runtime import ChipRuntime
from models import outputs
from studies.common import read_zoo

SAMPLERS = (MvmNoiseSource.FRESH, MvmNoiseSource.FRESH_Q16)


def _interval(values: list[float]) -> dict:
    """Mean and 95 % t interval over chips."""
    v = np.asarray(values, np.float64)
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "lo": float(v.mean() - half), "hi": float(v.mean() + half)}


def measure(model, chips: int, ages: list[str]) -> list[dict]:
    fp = ort.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])
    ref = fp.run(None, {fp.get_inputs()[0].name: model.x})[0]
    rows = []
    for age in ages:
        d_acc, rms_ratio, acc = [], [], {s: [] for s in SAMPLERS}
        for chip_seed in range(chips):
            chip = program_onnx(model.onnx, get_profile("pcm"), seed=chip_seed)
            got = {}
            for s in SAMPLERS:
                logits = ChipRuntime(chip, threads=1, noise=s).run(
                    model.x, STANDARD_AGES_S[age], gdc=True, seed=chip_seed
                )[0]
                a = float((logits.argmax(1) == model.y).mean())
                acc[s].append(a)
                got[s] = (a, float(np.sqrt(np.mean((logits - ref) ** 2))))
            d_acc.append(100 * (got[SAMPLERS[1]][0] - got[SAMPLERS[0]][0]))
            rms_ratio.append(got[SAMPLERS[1]][1] / got[SAMPLERS[0]][1])
        rows.append(
            {
                "model": model.name,
                "age": age,
                "chips": chips,
                "images": int(len(model.y)),
                "accuracy_fresh": _interval([100 * a for a in acc[SAMPLERS[0]]]),
                "accuracy_q16": _interval([100 * a for a in acc[SAMPLERS[1]]]),
                "accuracy_diff_pp": _interval(d_acc),
                "rms_error_ratio": _interval(rms_ratio),
            }
        )
        print(rows[-1]["model"], age, rows[-1]["accuracy_diff_pp"], rows[-1]["rms_error_ratio"], flush=True)
    return rows


def _cell(v: dict, digits: int = 2) -> str:
    return f"{v['mean']:.{digits}f} [{v['lo']:.{digits}f}, {v['hi']:.{digits}f}]"


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "# Per-MVM noise sampler: `fresh-q16` vs the exact `fresh` on the zoo\n",
        f"`{info['command']}` · {info['date']} · profile `pcm`, GDC on, seeded requests; each chip's eval "
        "set run once per sampler on the same read-out. Intervals: 95 % t over chips, paired per chip. "
        "RMS error: of the chip's logits against the floating-point model's.\n",
        "| model | age | chips × images | accuracy fresh (%) | accuracy q16 (%) | q16 − fresh (pp) | "
        "RMS error q16 ÷ fresh | interval covers no effect |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        d, q = r["accuracy_diff_pp"], r["rms_error_ratio"]
        ok = d["lo"] <= 0 <= d["hi"] and q["lo"] <= 1 <= q["hi"]
        lines.append(
            f"| {r['model']} | {r['age']} | {r['chips']} × {r['images']} | {_cell(r['accuracy_fresh'])} | "
            f"{_cell(r['accuracy_q16'])} | {_cell(d)} | {_cell(q, 4)} | {'yes' if ok else 'no'} |"
        )
    n = len(rows)
    missed = sum(not (r["accuracy_diff_pp"]["lo"] <= 0 <= r["accuracy_diff_pp"]["hi"]) for r in rows) + sum(
        not (r["rms_error_ratio"]["lo"] <= 1 <= r["rms_error_ratio"]["hi"]) for r in rows
    )
    lines += [
        "",
        f"{missed} of the {2 * n} intervals exclude 'no effect'; at 95 % each, about {0.05 * 2 * n:.1f} "
        "would by chance alone when the samplers are equivalent.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=20)
    ap.add_argument("--ages", nargs="+", default=["1d", "1y"], choices=list(STANDARD_AGES_S))
    ap.add_argument("--models", nargs="*", default=None, help="zoo model names (default: all)")
    outputs.add_arguments(ap, RESULTS)
    args = ap.parse_args(argv)
    rows = []
    for model in read_zoo(names=args.models):
        rows += measure(model, args.chips, args.ages)
    info = machine()
    info["command"] = "python -m bench.sampler_accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    for p in write(
        "sampler_accuracy", {"machine": info, "rows": rows}, markdown(rows, info), output_dir("sampler_accuracy", args)
    ):
        print(p)


if __name__ == "__main__":
    main()
