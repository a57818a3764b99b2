"""Least-squares study of on-chip recalibration: analog SGD vs residual learning on pulsed devices.

Regenerates ``reports/recalibration/least_squares.md`` and ``least_squares.png``::

    python -m studies.recalibration_least_squares [--seed 0] [--steps 20000] [--out DIR | --replace]

Problem: ``Y = X·W*ᵀ + noise`` with fixed seed, ``W*`` inside the device range; minibatch SGD on
``loss = ||W·x − y||² / 2`` (per-sample mean). The label noise makes minibatch gradients noisy at
the optimum, which is exactly what lets the asymmetric drift ``E|Δ|·G(w)`` of a pulsed device bias
analog SGD (Wu et al. 2025, arXiv:2502.06309). Distances are measured to the exact least-squares
optimum ``W_opt`` of the sampled data (``numpy.linalg.lstsq``), so zero is reachable.

Devices: soft bounds (Gokmen & Haensch 2020) with ``tau_max = tau_min = 1/a``; ``a`` is the
asymmetry (``G(w) = a·w``), ``a = 0`` is the ideal symmetric linear device. All algorithms are in
``chipsim.analog_training``; this command only runs the study's runs
(:mod:`studies.recalibration_least_squares_runs`) and writes the figure and report
(:mod:`studies.recalibration_least_squares_report`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from models import outputs
from studies.recalibration_least_squares_report import markdown, plot
from studies.recalibration_least_squares_runs import RECORD_EVERY, make_problem, run_one, run_specs

DEFAULT_OUT = outputs.REPO / "reports" / "recalibration"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20000)
    outputs.add_arguments(parser, DEFAULT_OUT)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.steps < 4 * RECORD_EVERY:
        parser.error(f"--steps must be at least {4 * RECORD_EVERY}")
    command = " ".join(["python -m studies.recalibration_least_squares", *map(shlex.quote, argv)])

    t0 = time.perf_counter()
    problem = make_problem(args.seed)
    specs = run_specs()
    results = [
        run_one(spec, problem, args.steps, args.seed, i)
        for i, spec in enumerate(tqdm(specs, desc="recalibration runs"))
    ]
    seconds = time.perf_counter() - t0

    args.out = outputs.output_dir(
        "recalibration_least_squares", DEFAULT_OUT, args.out, args.replace, ("least_squares.md", "least_squares.png")
    )
    plot(results, args.out / "least_squares.png")
    md = markdown(results, args, command, seconds, float(np.linalg.norm(problem.w_opt)))
    (args.out / "least_squares.md").write_text(md, encoding="utf-8")
    print(f"wrote {args.out / 'least_squares.md'} and {args.out / 'least_squares.png'} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
