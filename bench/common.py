"""Helpers shared by the benchmarks: machine description, result writing, CPU-time A/B rounds.

A benchmark writes ``<name>.json`` and ``<name>.md`` into a new folder ``runs/<name>/<time>/`` unless
run with ``--replace`` (the committed ``bench/results/``) or ``--out`` (:mod:`models.outputs`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models import outputs

RESULTS = Path(__file__).resolve().parent / "results"
#: The A/B benchmarks' two weight bindings: ``initializers_max_bytes`` of a runtime that embeds its
#: weights whatever their size, and of one that feeds them per run (a chip over the threshold).
BINDINGS = {"embedded": 10**12, "inputs": 0}


def machine() -> dict:
    import numpy as np
    import onnxruntime as ort

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "command": " ".join(["python", "-m", *sys.argv[:1]]) if sys.argv else "",
    }


def result_files(name: str) -> tuple[str, str]:
    return f"{name}.json", f"{name}.md"


def output_dir(name: str, args) -> Path:
    """The folder of this run (``args`` parsed with :func:`models.outputs.add_arguments`)."""
    return outputs.output_dir(name, RESULTS, args.out, args.replace, result_files(name))


def write(name: str, data: dict, markdown: str, out: Path) -> tuple[Path, Path]:
    jpath, mpath = (out / f for f in result_files(name))
    jpath.write_text(json.dumps(data, indent=2) + "\n")
    mpath.write_text(markdown)
    return jpath, mpath


def proc_status_bytes(key: str, pid: int | str = "self") -> int:
    """A size field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def cpu_seconds_per_call(fn: Callable[[], object], seconds: float) -> float:
    """CPU seconds per call of ``fn`` over at least ``seconds`` of CPU time and two calls, after
    one warm-up call."""
    fn()
    t0, n = time.process_time(), 0
    while n < 2 or time.process_time() - t0 < seconds:
        fn()
        n += 1
    return (time.process_time() - t0) / n


def median_range(values: list[float]) -> dict:
    """Median, min and max of per-round values (the A/B benchmarks' summary)."""
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def fmt_median_range(s: dict) -> str:
    """``median [min–max]`` of :func:`median_range`, three decimals."""
    return f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"


def interleaved_cpu_times(fns: dict[str, Callable[[], object]], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Per variant, :func:`cpu_seconds_per_call` in each round; the variants run one after another
    within a round, the order reversed every other round so that none always runs first."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            times[k].append(cpu_seconds_per_call(fns[k], seconds))
    return times


def ab_summary(times: dict[str, list[float]], before: str, after: str, digital: str = "digital") -> dict:
    """A/B of variants ``before`` and ``after`` from :func:`interleaved_cpu_times`: the speed-up
    (before's time over after's) and each one's speed relative to ``digital``, per round, as
    :func:`median_range`; after's and digital's median milliseconds per call."""
    rel = {k: [d / t for d, t in zip(times[digital], times[k])] for k in (before, after)}
    return {
        "speedup": median_range([b / a for b, a in zip(times[before], times[after])]),
        "vs_digital_before": median_range(rel[before]),
        "vs_digital_after": median_range(rel[after]),
        "after_ms": 1e3 * float(np.median(times[after])),
        "digital_ms": 1e3 * float(np.median(times[digital])),
    }


def ab_cells(r: dict) -> str:
    """The Markdown cells of an :func:`ab_summary` row: speed-up, both speeds relative to
    digital, after's and digital's ms per call."""
    return (
        f"{fmt_median_range(r['speedup'])} | {fmt_median_range(r['vs_digital_before'])} | "
        f"{fmt_median_range(r['vs_digital_after'])} | {r['after_ms']:.1f} | {r['digital_ms']:.2f} |"
    )


def add_ab_arguments(ap) -> None:
    """``--rounds``, ``--seconds`` and ``--batches`` of the A/B benchmarks."""
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="CPU seconds per variant and round (≥ 2 calls)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
